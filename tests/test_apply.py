"""apply(model, plan): validation, refusal of a second plan, exact restore, cache slots, scopes."""

from __future__ import annotations

import time

import pytest
import torch

import searchskip.apply as apply_module
from searchskip.apply import applied_plan, apply, assign_cache_slots, plan_context, restore
from searchskip.arch import get_adapter
from searchskip.arch.cache_api import CACHE_KWARG, output_cache
from searchskip.errors import ConfigError
from searchskip.ops import prune
from searchskip.plan import SCOPE_GENERATED, SCOPE_NON_VISUAL, SCOPE_PROMPT, DropSpec, LayerOp, Plan, PruneSpec
from searchskip.testing import EOS_ID, FAMILIES, IMAGE_TOKEN_ID, MULTIMODAL_FAMILIES, append_tokens, tiny_inputs, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


GEN = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID, EOS_ID])
SKIP_GENERATED_ATTN = Plan(layers={1: LayerOp("skip_attn", SCOPE_GENERATED)})


def _logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw).logits


def _recompute(model, inputs, sequences):
    """Logits of a no-cache recompute of ``sequences`` (prompt = ``inputs``), under plan_context."""
    n = inputs["input_ids"].shape[1]
    full = append_tokens(inputs, sequences[:, n:])
    with plan_context(model, prompt_length=n):
        return _logits(model, full, use_cache=False)[:, n - 1:-1]


def _generate_and_check(model, inputs, **kw):
    """Greedy cached generation; assert it equals a no-cache recompute; return the tokens."""
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True, **kw)
    torch.testing.assert_close(torch.stack(out.logits, 1), _recompute(model, inputs, out.sequences),
                               rtol=1e-5, atol=1e-5)
    return out.sequences[:, n:]


# --------------------------------------------------------------------------- validation and lifecycle


def test_second_apply_is_refused():
    model = tiny_model("llama")
    applied = apply(model, SKIP_GENERATED_ATTN)
    with pytest.raises(RuntimeError, match="already has a plan applied.*restore"):
        apply(model, Plan(layers={0: "skip_block"}))
    assert applied.active and applied_plan(model) is applied
    applied.restore()
    apply(model, Plan(layers={0: "skip_block"})).restore()  # fine once restored


def test_invalid_plan_names_the_layer_count():
    model = tiny_model("llama", num_layers=4)
    with pytest.raises(ConfigError, match=r"4 decoder layers.*layer=7"):
        apply(model, Plan(layers={7: "skip_block"}))
    with pytest.raises(ConfigError, match="4 decoder layers"):
        apply(model, Plan(drop=DropSpec(2, 6)))
    assert applied_plan(model) is None  # nothing was changed
    with pytest.raises(TypeError, match="Plan"):
        apply(model, {"layers": {0: "skip_block"}})


def test_restore_is_idempotent_and_exact():
    model = tiny_model("llava-qwen2")
    inputs = tiny_inputs(model)
    adapter = get_adapter(model)
    before = _logits(model, inputs)
    slots = [adapter.attention(layer).layer_idx for layer in adapter.layers(model)]
    applied = apply(model, Plan(layers={0: "skip_attn", 2: "parallel_blocks"}))
    assert [adapter.attention(layer).layer_idx for layer in adapter.layers(model)] != slots
    assert not torch.equal(_logits(model, inputs), before)
    applied.restore()
    applied.restore()
    assert not restore(model)  # nothing left to restore
    assert not applied.active and applied_plan(model) is None
    assert [adapter.attention(layer).layer_idx for layer in adapter.layers(model)] == slots
    assert all("forward" not in layer.__dict__ for layer in adapter.layers(model))
    assert "generate" not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert torch.equal(_logits(model, inputs), before)


def test_module_level_restore():
    model = tiny_model("opt")
    apply(model, Plan(layers={1: "skip_ffn"}))
    assert restore(model)
    assert applied_plan(model) is None


def test_context_manager_restores_even_on_error():
    model = tiny_model("mistral")
    inputs = tiny_inputs(model)
    before = _logits(model, inputs)
    with apply(model, Plan(layers={0: "skip_block"})) as applied:
        assert applied_plan(model) is applied
        assert not torch.equal(_logits(model, inputs), before)
    assert applied_plan(model) is None
    with pytest.raises(KeyError):
        with apply(model, Plan(layers={0: "skip_block"})):
            raise KeyError("boom")
    assert applied_plan(model) is None
    assert torch.equal(_logits(model, inputs), before)


def test_switching_plans_copies_no_weights_and_is_cheap():
    model = tiny_model("llama", num_layers=32)
    params = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    plans = [Plan.from_pattern(2, 0, 32, "skip_block", num_layers=32),
             Plan.from_pattern(2, 0, 32, "parallel_blocks", num_layers=32, scope=SCOPE_GENERATED),
             Plan(layers={i: LayerOp("skip_attn", SCOPE_GENERATED) for i in range(32)})]
    start = time.perf_counter()
    for _ in range(5):
        for plan in plans:
            apply(model, plan).restore()
    per_switch = (time.perf_counter() - start) / 15
    assert per_switch < 0.05, per_switch  # O(layers) bookkeeping only (about 1 ms here)
    with apply(model, plans[0]):
        assert {name: (p, p.data_ptr()) for name, p in model.named_parameters()} == params


# --------------------------------------------------------------------------- hooks and hidden states


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_hooks_and_hidden_states_survive(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    layers = get_adapter(model).layers(model)
    seen = []
    handles = [layer.register_forward_hook(lambda mod, args, out, i=i: seen.append(i))
               for i, layer in enumerate(layers)]
    try:
        with apply(model, Plan(layers={0: "skip_block", 1: "parallel_blocks", 3: LayerOp("skip_ffn", SCOPE_PROMPT)})):
            out = model(**inputs, output_hidden_states=True)
            assert seen == [0, 1, 2, 3]  # every layer still runs through its module (hooks fire)
            assert len(out.hidden_states) == len(layers) + 1
            assert torch.equal(out.hidden_states[1], out.hidden_states[0])  # layer 0 skipped: identity
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- token scopes


@pytest.mark.parametrize("family", FAMILIES)
def test_skip_attn_generated_leaves_prefill_bit_identical(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    with torch.no_grad():
        dense = model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True)
    prefill = _logits(model, inputs)
    with apply(model, Plan(layers={i: LayerOp("skip_attn", SCOPE_GENERATED) for i in (0, 2)})):
        assert torch.equal(_logits(model, inputs), prefill)
        with torch.no_grad():
            planned = model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(planned.logits[0], dense.logits[0])  # the first token comes from the prefill
    assert not torch.allclose(planned.logits[-1], dense.logits[-1])  # decoding did skip attention


@pytest.mark.parametrize("family", ["llama", "opt", "llava-mistral"])
@pytest.mark.parametrize("scope", [SCOPE_GENERATED, SCOPE_NON_VISUAL, "all"])
def test_no_attention_runs_for_every_position(family, scope):
    """Every attention skipped (for generated tokens / non-visual tokens / entirely): no cache
    slot covers all positions, yet cached generation still matches the recompute."""
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    n = inputs["input_ids"].shape[1]
    plan = Plan(layers={i: LayerOp("skip_attn", scope) for i in range(4)})
    with apply(model, plan) as applied:
        assert "all" not in applied.attention_use.values()
        _generate_and_check(model, inputs)
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
        image = (inputs["input_ids"] == IMAGE_TOKEN_ID).any(0).nonzero()
        image_end = int(image.max()) + 1 if image.numel() else 0  # K/V stop after the last image token
        expected = {SCOPE_GENERATED: n, SCOPE_NON_VISUAL: image_end, "all": 0}[scope]
        assert out.past_key_values.get_seq_length() == expected  # slot 0 stops short of the positions


def test_manual_decode_loop_keeps_positions():
    """Without generate: prefill, then one token at a time with the returned cache."""
    model = tiny_model("llava-llama")
    inputs = tiny_inputs(model)
    plan = Plan(layers={1: LayerOp("skip_block", SCOPE_GENERATED), 2: LayerOp("skip_ffn", SCOPE_NON_VISUAL)})
    with apply(model, plan), torch.no_grad():
        expected = _generate_and_check(model, inputs)
        mask, tokens = inputs["attention_mask"], []
        out = model(**inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)  # as generate
        for _ in range(expected.shape[1]):
            logits = out.logits[:, -1].clone()
            logits[:, [IMAGE_TOKEN_ID, EOS_ID]] = float("-inf")
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            positions = (mask.cumsum(-1) - 1)[:, -1:]
            out = model(input_ids=nxt, attention_mask=mask, position_ids=positions, use_cache=True,
                        **{CACHE_KWARG: output_cache(out)})  # the installed transformers' name for the cache
    assert torch.equal(torch.cat(tokens, 1), expected)


@pytest.mark.parametrize("family", ["llama", "llava-opt"])
def test_generate_without_cache_keeps_scopes(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    plan = Plan(layers={0: LayerOp("skip_attn", SCOPE_PROMPT), 2: LayerOp("skip_block", SCOPE_GENERATED)})
    with apply(model, plan), torch.no_grad():
        cached = model.generate(**inputs, **GEN)
        uncached = model.generate(**inputs, **GEN, use_cache=False)
    assert torch.equal(cached, uncached)


def test_scoped_op_outside_the_model_call_needs_a_context():
    model = tiny_model("llama")
    inputs = tiny_inputs(model, left_pad=False)
    with apply(model, Plan(layers={1: LayerOp("skip_attn", SCOPE_GENERATED)})), torch.no_grad():
        with pytest.raises(RuntimeError, match="plan_context"):
            model.model(input_ids=inputs["input_ids"], use_cache=False)
        with plan_context(model, prompt_length=inputs["input_ids"].shape[1] - 2):
            inner = model.model(input_ids=inputs["input_ids"], use_cache=False).last_hidden_state
        with plan_context(model, prompt_length=inputs["input_ids"].shape[1] - 2):
            outer = model(input_ids=inputs["input_ids"], use_cache=False, output_hidden_states=True)
    assert torch.equal(inner, outer.hidden_states[-1])


@pytest.mark.parametrize("scope", [SCOPE_NON_VISUAL, "visual"])
def test_image_scopes_need_image_positions(scope):
    model = tiny_model("llava-llama")
    inputs = tiny_inputs(model)
    ids = inputs["input_ids"]
    with apply(model, Plan(layers={1: LayerOp("skip_ffn", scope)})), torch.no_grad():
        reference = model(**inputs).logits
        embeds = model.get_input_embeddings()(torch.where(ids == IMAGE_TOKEN_ID, 0, ids))
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
        features = torch.cat(list(features.pooler_output if hasattr(features, "pooler_output") else features))
        embeds = embeds.masked_scatter((ids == IMAGE_TOKEN_ID).unsqueeze(-1).expand_as(embeds), features)
        with pytest.raises(RuntimeError, match="image"):
            model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
        with plan_context(model, image_mask=ids == IMAGE_TOKEN_ID):
            declared = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(declared, reference, rtol=1e-5, atol=1e-5)


def test_plan_context_checks_and_noop_without_plan():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="prompt_length"):
        with plan_context(model, prompt_length=-1):
            pass
    with plan_context(model, prompt_length=3):
        _logits(model, tiny_inputs(model))


# --------------------------------------------------------------------------- cache slots


def test_assign_cache_slots():
    full = ["full_attention"] * 4
    assert assign_cache_slots(["all"] * 4, full) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert assign_cache_slots(["none", "all", "all", "all"], full) == {1: 0, 2: 1, 3: 2}
    # layer 0 only covers the prompt: slot 0 goes to the first attention covering every position
    assert assign_cache_slots(["prompt", "all", "none", "all"], full) == {1: 0, 0: 1, 3: 2}
    assert assign_cache_slots(["prompt", "prompt"], full[:2]) == {0: 0, 1: 1}
    mixed = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    assert assign_cache_slots(["none", "all", "prompt", "all"], mixed) == {1: 0, 3: 2, 2: 3}
    with pytest.raises(ValueError):
        assign_cache_slots(["all"], full)


def test_cache_slots_keep_each_layer_type():
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    types = model.config.layer_types
    assert types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    inputs = tiny_inputs(model)
    plans = [Plan(layers={0: "skip_attn", 2: LayerOp("skip_attn", SCOPE_GENERATED)}),
             Plan(layers={1: "parallel_blocks"}),  # a pair across the full / sliding boundary
             Plan(layers={2: "skip_block", 0: LayerOp("skip_block", SCOPE_GENERATED)})]
    for plan in plans:
        with apply(model, plan) as applied:
            for layer, slot in applied.cache_slots.items():
                assert types[slot] == types[layer]
            _generate_and_check(model, inputs)


def test_layer_zero_skip_with_left_padding():
    """The measured pitfall: skipping layer 0's attention left slot 0 empty and broke cached generation."""
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    with apply(model, Plan(layers={0: "skip_attn"})) as applied:
        assert 0 not in applied.cache_slots and applied.cache_slots[1] == 0
        _generate_and_check(model, inputs)


# --------------------------------------------------------------------------- pruning


def test_prune_is_delegated_and_undone(monkeypatch):
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    before = _logits(model, inputs)
    calls = []
    real = prune.apply_pruning

    def spy(model_, adapter, spec, calibration=None, **kw):
        calls.append((spec, calibration))
        return real(model_, adapter, spec, calibration, **kw)

    monkeypatch.setattr(prune, "apply_pruning", spy)
    calibration = [dict(inputs)]
    plan = Plan(layers={1: "skip_attn"}, prune=PruneSpec(method="magnitude", sparsity=0.5))
    with apply(model, plan, calibration=calibration) as applied:
        assert applied.prune_result is not None
        assert not torch.equal(_logits(model, inputs), before)
    assert calls and calls[0][0] == plan.prune and calls[0][1] == calibration
    assert torch.equal(_logits(model, inputs), before)


def test_prune_failure_leaves_model_untouched():
    model = tiny_model("llama")
    before = _logits(model, tiny_inputs(model))
    plan = Plan(prune=PruneSpec(method="wanda", sparsity=0.5))  # wanda without calibration
    with pytest.raises(ConfigError):
        apply(model, plan)
    assert applied_plan(model) is None
    assert torch.equal(_logits(model, tiny_inputs(model)), before)


@pytest.mark.parametrize("family", MULTIMODAL_FAMILIES)
def test_drop_and_scopes_together(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    plan = Plan(layers={0: LayerOp("skip_attn", SCOPE_NON_VISUAL), 3: LayerOp("skip_block", SCOPE_GENERATED)},
                drop=DropSpec(1, 3))
    with apply(model, plan) as applied:
        assert set(applied.forwards) == {0, 1, 2, 3}
        _generate_and_check(model, inputs)


def test_module_has_one_entry_point():
    assert apply_module.__all__ == sorted(apply_module.__all__)
    assert "apply" in apply_module.__all__
