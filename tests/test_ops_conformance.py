"""Conformance suite every registered op passes, on tiny models of every family (CPU).

Parametrised from the op registry (like optuna's sampler conformance fixtures): registering
an op adds it here. Each op is checked for every scope it takes, on every family of
``searchskip.testing.FAMILIES`` plus Qwen2 with mixed sliding/full layers:

* the empty plan gives bit-identical logits; apply -> restore gives them back bit-identically;
* references: ``skip_block`` (and ``drop``) equals the model with the layer deleted; every op
  x scope equals a reference built from the original modules that computes each sublayer in
  full and keeps its update only where the op runs it (valid for a no-cache forward);
* cached greedy generation (left-padded batch) gives the tokens and logits of a no-cache
  recompute under ``plan_context``;
* ``FlopCounterMode`` on a forward shows exactly the compute tabled in
  :mod:`searchskip.ops.scope` (skipped matmuls do not run);
* the applied plan survives a YAML round trip; ``output_hidden_states`` gives one state per layer.

A new op needs an entry in ``REFERENCES`` and ``_planned_compute`` below.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from searchskip.apply import apply, plan_context
from searchskip.arch import get_adapter
from searchskip.ops import DROP, REGISTRY
from searchskip.plan import (
    KEEP,
    OPS,
    PARALLEL_ATTN_FFN,
    PARALLEL_BLOCKS,
    SCOPE_ALL,
    SCOPE_GENERATED,
    SCOPE_NON_VISUAL,
    SCOPE_PROMPT,
    SCOPE_VISUAL,
    SCOPES,
    SKIP_ATTN,
    SKIP_BLOCK,
    SKIP_FFN,
    DropSpec,
    LayerOp,
    Plan,
)
from searchskip.testing import EOS_ID, FAMILIES, IMAGE_TOKEN_ID, RESOLUTION_FAMILIES, append_tokens, is_multimodal, row_inputs, tiny_inputs, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = FAMILIES + ("qwen2-sliding",)
"""Model cases: every family, plus Qwen2 whose layers 0-1 are full and 2-3 sliding attention."""


@functools.lru_cache(maxsize=None)
def _model(case: str):
    if case == "qwen2-sliding":
        return tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    return tiny_model(case)


def _variants() -> list[tuple[str, str, bool]]:
    """(op, scope, average) for every registered op and every scope it takes."""
    out = []
    for handler in REGISTRY:
        scopes = SCOPES if handler.scoped else (SCOPE_ALL,)
        for scope in scopes:
            out.append((handler.name, scope, False))
            if handler.name == PARALLEL_BLOCKS:
                out.append((handler.name, scope, True))
    return out


VARIANTS = _variants()
VARIANT_IDS = [f"{op}-{scope}" + ("-avg" if avg else "") for op, scope, avg in VARIANTS]
LAYER = 0  # layer 0 exercises the cache-slot-0 pitfall


def _plan(op: str, scope: str, average: bool, layer: int = LAYER) -> Plan:
    if op == DROP:
        return Plan(drop=DropSpec(layer, layer + 1))
    return Plan(layers={layer: LayerOp(op, scope, average)})


def test_every_plan_op_is_registered():
    assert set(OPS) <= set(REGISTRY.names())
    assert DROP in REGISTRY
    assert len(VARIANTS) >= len(OPS)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(REGISTRY.get(SKIP_BLOCK))


# --------------------------------------------------------------------------- inputs


def _with_generated(model, n_gen: int = 3, left_pad: bool = True) -> tuple[dict, int]:
    """Prompt inputs (left-padded batch by default) with ``n_gen`` extra (generated-like) tokens
    appended, and the prompt length to declare."""
    inp = tiny_inputs(model, left_pad=left_pad)
    return append_tokens(inp, n_gen), inp["input_ids"].shape[1]


def _logits(model, inputs: dict, prompt_length: int | None = None, **kw) -> torch.Tensor:
    """The logits at every real position; zeros at left padding, whose output no attention defines
    (its query sees no key: SDPA gives zeros, eager attention the mean of every value it is given,
    so a plan that gives a padding query fewer keys changes it, and nothing reads it)."""
    with torch.no_grad(), plan_context(model, prompt_length=prompt_length):
        logits = model(**inputs, **kw).logits
    return logits * inputs["attention_mask"][:, -logits.shape[1]:, None].to(logits.dtype)


# --------------------------------------------------------------------------- bit identity


@pytest.mark.parametrize("case", CASES)
def test_empty_plan_is_bit_identical(case):
    model = _model(case)
    inputs, n = _with_generated(model)
    dense = _logits(model, inputs, use_cache=False)
    for plan in (Plan(), Plan(layers={0: KEEP, 2: LayerOp(KEEP, SCOPE_GENERATED)})):
        with apply(model, plan) as applied:
            assert applied.forwards == {}
            assert torch.equal(_logits(model, inputs, n, use_cache=False), dense)


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES)
def test_restore_gives_back_original_logits(case, op, scope, average):
    model = _model(case)
    inputs, n = _with_generated(model)
    before = _logits(model, inputs, use_cache=False)
    applied = apply(model, _plan(op, scope, average))
    _logits(model, inputs, n)
    applied.restore()
    assert torch.equal(_logits(model, inputs, use_cache=False), before)


# --------------------------------------------------------------------------- references


def _scope_masks(inputs: dict, n: int, scope: str) -> torch.Tensor:
    """(batch, positions, 1) bool: positions in ``scope`` (from the definitions, per row)."""
    ids = inputs["input_ids"]
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    if scope == SCOPE_ALL:
        inside = torch.ones_like(ids, dtype=torch.bool)
    elif scope == SCOPE_GENERATED:
        inside = pos >= n
    elif scope == SCOPE_PROMPT:
        inside = pos < n
    elif scope == SCOPE_NON_VISUAL:
        inside = ~((ids == IMAGE_TOKEN_ID) & (pos < n))
    elif scope == SCOPE_VISUAL:
        inside = (ids == IMAGE_TOKEN_ID) & (pos < n)
    else:
        raise AssertionError(scope)
    return inside.unsqueeze(-1)


def _ref_skip(attn: bool, ffn: bool):
    def build(adapter, layers, i, inside, average):
        layer = layers[i]
        run = ~inside

        def forward(h, **kw):
            if attn:
                h = torch.where(run, h + adapter.attn_delta(layer, h, **kw), h)
            else:
                h = h + adapter.attn_delta(layer, h, **kw)
            if ffn:
                return torch.where(run, h + adapter.mlp_delta(layer, h), h)
            return h + adapter.mlp_delta(layer, h)

        return {i: forward}

    return build


def _ref_keep(adapter, layers, i, inside, average):
    return {}


def _ref_parallel_attn_ffn(adapter, layers, i, inside, average):
    layer = layers[i]
    norm1, norm2 = adapter.attn_norm(layer), adapter.mlp_norm(layer)

    def forward(x, **kw):
        a = adapter.attn_delta(layer, x, **kw)  # attention(n1(x))
        parallel = x + a + adapter.mlp_delta(layer, x)  # x + attn(n1(x)) + ffn(n2(x))
        sequential = (x + a) + adapter.mlp_delta(layer, x + a)
        return torch.where(inside, parallel, sequential)

    assert norm1 is not norm2  # each sublayer has its own norm
    return {i: forward}


def _ref_parallel_blocks(adapter, layers, i, inside, average, injected=False):
    """Both layers read x (in scope), each with the keyword arguments the model hands it (its own
    mask and rotary embedding where layer types differ, as Gemma's sliding / full layers do);
    features the model adds after layer i (Qwen3-VL's DeepStack, ``injected``) join the sum."""
    first, second = layers[i], layers[i + 1]
    kept = {}

    def first_forward(x, **kw):
        a = type(first).forward(first, x, **kw)
        kept.update(x=x, a=a, returned=torch.where(inside, x, a))
        return kept["returned"]

    def second_forward(y, **kw):  # one stream: x in the pair, y outside it
        x, a = kept["x"], kept["a"]
        added = y - kept["returned"] if injected else 0
        b = type(second).forward(second, torch.where(inside, x, y), **kw)
        pair = x + ((a - x) + (b - x)) / 2 if average else x + (a - x) + (b - x)
        return torch.where(inside, pair + added, b)

    return {i: first_forward, i + 1: second_forward}


REFERENCES = {
    KEEP: _ref_keep,
    SKIP_BLOCK: _ref_skip(True, True),
    SKIP_ATTN: _ref_skip(True, False),
    SKIP_FFN: _ref_skip(False, True),
    PARALLEL_ATTN_FFN: _ref_parallel_attn_ffn,
    PARALLEL_BLOCKS: _ref_parallel_blocks,
    DROP: _ref_skip(True, True),
}


def test_every_op_has_a_reference():
    assert set(REGISTRY.names()) == set(REFERENCES)


def _reference_logits(model, op, scope, average, inputs, n) -> torch.Tensor:
    ref = copy.deepcopy(model)
    adapter = get_adapter(ref)
    layers = adapter.layers(ref)
    inside = _scope_masks(inputs, n, scope if op != DROP else SCOPE_ALL)
    extra = {"injected": True} if op == PARALLEL_BLOCKS and LAYER in adapter.injected_layers(ref) else {}
    for j, forward in REFERENCES[op](adapter, layers, LAYER, inside, average, **extra).items():
        layers[j].forward = forward
    return _logits(ref, inputs, use_cache=False)


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("left_pad", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, left_pad, op, scope, average):
    """Unpadded inputs make transformers pass no mask (sdpa's is_causal): the scoped attention
    then builds its own causal mask."""
    model = _model(case)
    inputs, n = _with_generated(model, left_pad=left_pad)
    expected = _reference_logits(model, op, scope, average, inputs, n)
    with apply(model, _plan(op, scope, average)):
        got = _logits(model, inputs, n, use_cache=False)
        got_cached = _logits(model, inputs, n, use_cache=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cached, expected, rtol=1e-5, atol=1e-5)


def _deleted_layer_model(model, i: int):
    """The model without layer ``i``; where the model adds features after layer ``i`` by index
    (Qwen3-VL's DeepStack), deleting it would move them, so layer ``i`` passes its input instead."""
    ref = copy.deepcopy(model)
    adapter = get_adapter(ref)
    layers = adapter.layers(ref)
    if i in adapter.injected_layers(ref):
        layers[i].forward = lambda h, *args, **kw: h
        return ref
    del layers[i]
    for j, layer in enumerate(layers):
        adapter.attention(layer).layer_idx = j
    config = adapter.language_model(ref).config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [t for j, t in enumerate(config.layer_types) if j != i]
    return ref


@pytest.mark.parametrize("op", [SKIP_BLOCK, DROP])
@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("case", CASES)
def test_skip_block_equals_deleted_layer(case, layer, op):
    model = _model(case)
    inputs = tiny_inputs(model)
    ref = _deleted_layer_model(model, layer)
    expected = _logits(ref, inputs, use_cache=False)
    if layer in get_adapter(model).injected_layers(model):  # the passing copy has no cache slot of its own to decode with
        with apply(model, _plan(op, SCOPE_ALL, False, layer)):
            torch.testing.assert_close(_logits(model, inputs, use_cache=False), expected, rtol=1e-5, atol=1e-5)
        return
    gen_kw = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID, EOS_ID])
    with torch.no_grad():
        expected_tokens = ref.generate(**inputs, **gen_kw)
    with apply(model, _plan(op, SCOPE_ALL, False, layer)):
        torch.testing.assert_close(_logits(model, inputs), expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            assert torch.equal(model.generate(**inputs, **gen_kw), expected_tokens)


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(("layer", "left_pad"), [(0, True), (2, True), (0, False)],
                         ids=["layer0-padded", "layer2-padded", "layer0-unpadded"])
@pytest.mark.parametrize("case", CASES)
def test_cached_generation_matches_recompute(case, layer, left_pad, op, scope, average):
    _check_cached_matches_recompute(_model(case), _plan(op, scope, average, layer), left_pad)


def _check_cached_matches_recompute(model, plan: Plan, left_pad: bool) -> None:
    """Greedy generation with a KV cache gives the logits and tokens of a no-cache recompute."""
    inputs = tiny_inputs(model, left_pad=left_pad)
    n = inputs["input_ids"].shape[1]
    with apply(model, plan), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=[IMAGE_TOKEN_ID, EOS_ID])
        full = append_tokens(inputs, out.sequences[:, n:])
        recomputed = _logits(model, full, n, use_cache=False)[:, n - 1:-1]
    steps = torch.stack(out.logits, dim=1)
    torch.testing.assert_close(steps, recomputed, rtol=1e-5, atol=1e-5)
    masked = recomputed.clone()
    masked[..., [IMAGE_TOKEN_ID, EOS_ID]] = float("-inf")
    assert torch.equal(masked.argmax(-1), out.sequences[:, n:])


# --------------------------------------------------------------------------- FLOPs


def _linear_flops(linear, rows: int) -> int:
    return 2 * rows * linear.in_features * linear.out_features


def _layer_flops(adapter, layer, batch: int, q: int, kv: int, keys: int, ffn: int) -> int:
    """Matmul FLOPs of one layer: q/o for ``q`` positions, K/V for ``kv``, ``q x keys`` scores, FFN for ``ffn``."""
    lin = adapter.attn_linears(layer)
    heads, _, head_dim = adapter.attn_geometry(layer)
    flops = batch * (_linear_flops(lin["q"], q) + _linear_flops(lin["k"], kv) + _linear_flops(lin["v"], kv)
                     + _linear_flops(lin["o"], q))
    flops += 4 * batch * heads * q * keys * head_dim  # scores and values, full rectangle (torch's formula)
    flops += batch * sum(_linear_flops(m, ffn) for m in adapter.mlp_linears(layer).values())
    return flops


def _planned_compute(op: str, scope: str, t: int, n: int, image_union: int, image_end: int, text_union: int):
    """(q, kv, keys, ffn) positions at the planned layer(s) for a cached forward of ``t``
    positions of which the first ``n`` are the prompt, per the table of searchskip.ops.scope
    (``image_union`` / ``text_union``: positions that are image / not image in some row)."""
    dense = (t, t, t, t)
    if op in (KEEP, PARALLEL_ATTN_FFN, PARALLEL_BLOCKS):
        return dense
    if op == DROP or (op == SKIP_BLOCK and scope == SCOPE_ALL):
        return (0, 0, 0, 0)
    runs = {SCOPE_ALL: 0, SCOPE_GENERATED: n, SCOPE_PROMPT: t - n, SCOPE_NON_VISUAL: image_union,
            SCOPE_VISUAL: text_union}[scope]
    kv = {SCOPE_ALL: 0, SCOPE_GENERATED: n, SCOPE_PROMPT: t, SCOPE_NON_VISUAL: image_end, SCOPE_VISUAL: t}[scope]
    attn = (runs, kv, kv) if op in (SKIP_ATTN, SKIP_BLOCK) else (t, t, t)
    ffn = runs if op in (SKIP_FFN, SKIP_BLOCK) else t
    return (*attn, ffn)


def _count(model, inputs, n) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter, plan_context(model, prompt_length=n):
        model(**inputs, use_cache=True)
    return counter.get_total_flops()


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES)
def test_flops_are_exactly_what_runs(case, op, scope, average):
    model = _model(case)
    adapter = get_adapter(model)
    layer = adapter.layers(model)[LAYER]
    inputs, n = _with_generated(model)
    batch, t = inputs["input_ids"].shape
    image = (inputs["input_ids"] == IMAGE_TOKEN_ID) & (torch.arange(t) < n)
    cols = image.any(0).nonzero().flatten()
    union, end = cols.numel(), (int(cols.max()) + 1 if cols.numel() else 0)
    text_union = int((~image).any(0).sum())

    dense = _count(model, inputs, n)
    with apply(model, _plan(op, scope, average)):
        planned = _count(model, inputs, n)
    compute = _planned_compute(op, scope, t, n, union, end, text_union)
    expected_drop = _layer_flops(adapter, layer, batch, t, t, t, t) - _layer_flops(adapter, layer, batch, *compute)
    assert dense - planned == expected_drop, (compute, dense - planned, expected_drop)
    if op in (SKIP_ATTN, SKIP_FFN, SKIP_BLOCK, DROP) and (scope == SCOPE_ALL or op == DROP):
        assert expected_drop > 0


def test_sdpa_is_counted_on_cpu():
    """torch 2.13 has no FLOP formula for the CPU flash-attention kernel; searchskip.ops adds it."""
    q = torch.randn(1, 2, 5, 8)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * 2 * 5 * 5 * 8


# --------------------------------------------------------------------------- serialization, hidden states


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
def test_applied_plan_survives_yaml(op, scope, average):
    """The plan reloaded from its YAML is applied exactly as the plan itself: the same forwards,
    cache slots and logits (the YAML round trip itself: tests/test_plan.py)."""
    model = _model("llama")
    plan = _plan(op, scope, average)
    inputs, n = _with_generated(model)
    with apply(model, plan) as applied:
        want = _logits(model, inputs, n)
        layers, slots, uses = set(applied.forwards), dict(applied.cache_slots), dict(applied.attention_use)
    reloaded = Plan.from_yaml_text(plan.to_yaml())
    with apply(model, reloaded) as applied:
        got = _logits(model, inputs, n)
        assert set(applied.forwards) == layers
        assert applied.cache_slots == slots and applied.attention_use == uses
    assert torch.equal(got, want)


@pytest.mark.parametrize(("op", "scope", "average"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", CASES)
def test_hidden_states_one_per_layer(case, op, scope, average):
    model = _model(case)
    inputs, n = _with_generated(model)
    num_layers = get_adapter(model).num_layers(model)
    with apply(model, _plan(op, scope, average)), torch.no_grad(), plan_context(model, prompt_length=n):
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == num_layers + 1


# =========================================================================== token ops
#
# visual_tokens / early_exit are plan-level keys (searchskip.ops.tokens), not per-layer ops of
# the registry; the same properties are checked for them on every case, plus LLaVA with
# mixed sliding/full layers (the only case where image tokens meet a sliding window).

from searchskip.errors import ModelError  # noqa: E402
from searchskip.plan import EarlyExitSpec, PruneSpec, VisualTokensSpec  # noqa: E402

TOKEN_CASES = CASES + ("llava-qwen2-sliding",)
TOKEN_PLANS: dict[str, Plan] = {
    "visual-attention-1-half": Plan(visual_tokens=VisualTokensSpec(1, 0.5)),
    "visual-attention-2-quarter": Plan(visual_tokens=VisualTokensSpec(2, 0.25, "attention")),
    "visual-uniform-0-half": Plan(visual_tokens=VisualTokensSpec(0, 0.5, "uniform")),  # every layer reduced
    "visual-uniform-1-none": Plan(visual_tokens=VisualTokensSpec(1, 0.0, "uniform")),
    "visual-uniform-3-half": Plan(visual_tokens=VisualTokensSpec(3, 0.5, "uniform")),
    "exit-0": Plan(early_exit=EarlyExitSpec(0)),
    "exit-2": Plan(early_exit=EarlyExitSpec(2)),
    "visual+exit": Plan(visual_tokens=VisualTokensSpec(2, 0.5), early_exit=EarlyExitSpec(1)),
    "visual+ops": Plan(layers={0: LayerOp(SKIP_ATTN, SCOPE_GENERATED), 1: LayerOp(SKIP_FFN, SCOPE_PROMPT),
                               2: LayerOp(SKIP_BLOCK, SCOPE_NON_VISUAL), 3: LayerOp(SKIP_ATTN, SCOPE_PROMPT)},
                       visual_tokens=VisualTokensSpec(2, 0.5)),
    "visual+pair+drop": Plan(layers={2: LayerOp(PARALLEL_BLOCKS, average=True)}, drop=DropSpec(0, 1),
                             visual_tokens=VisualTokensSpec(2, 0.25, "uniform"), early_exit=EarlyExitSpec(1)),
    "exit+parallel": Plan(layers={3: PARALLEL_ATTN_FFN, 1: LayerOp(SKIP_ATTN, SCOPE_GENERATED)},
                          early_exit=EarlyExitSpec(1)),
    # scope visual: alone (rows with images at different positions answer as alone), with token
    # dropping (rank by a layer that skips only the image FFN), early exit, drop and pruning
    "visual-scope": Plan(layers={0: LayerOp(SKIP_BLOCK, SCOPE_VISUAL), 2: LayerOp(SKIP_ATTN, SCOPE_VISUAL),
                                 3: LayerOp(PARALLEL_ATTN_FFN, SCOPE_VISUAL)}),
    "visual-scope+tokens": Plan(layers={0: LayerOp(SKIP_BLOCK, SCOPE_VISUAL), 1: LayerOp(SKIP_FFN, SCOPE_VISUAL),
                                        2: LayerOp(SKIP_ATTN, SCOPE_VISUAL), 3: LayerOp(SKIP_BLOCK, SCOPE_VISUAL)},
                                visual_tokens=VisualTokensSpec(2, 0.5)),
    "visual-scope+exit": Plan(layers={1: LayerOp(SKIP_ATTN, SCOPE_VISUAL), 2: LayerOp(SKIP_BLOCK, SCOPE_VISUAL),
                                      3: LayerOp(SKIP_FFN, SCOPE_VISUAL)}, early_exit=EarlyExitSpec(1)),
    "visual-scope+drop+prune": Plan(layers={0: LayerOp(PARALLEL_BLOCKS, SCOPE_VISUAL), 3: LayerOp(SKIP_BLOCK, SCOPE_VISUAL)},
                                    drop=DropSpec(2, 3), visual_tokens=VisualTokensSpec(3, 0.25, "uniform"),
                                    early_exit=EarlyExitSpec(1),
                                    prune=PruneSpec(method="magnitude", structure="unstructured", sparsity=0.3)),
}


@functools.lru_cache(maxsize=None)
def _token_model(case: str):
    if case == "llava-qwen2-sliding":
        return tiny_model("llava-qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    return _model(case)


def _generate(model, inputs: dict, steps: int = 3):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              output_logits=True, return_dict_in_generate=True,
                              suppress_tokens=[IMAGE_TOKEN_ID, EOS_ID])


@pytest.mark.parametrize("name", list(TOKEN_PLANS))
@pytest.mark.parametrize("case", TOKEN_CASES)
def test_token_plan_restore_is_bit_identical(case, name):
    model = _token_model(case)
    inputs, n = _with_generated(model)
    dense = _logits(model, inputs, use_cache=False)
    with apply(model, TOKEN_PLANS[name]):
        _logits(model, inputs, n, use_cache=False)
    assert torch.equal(_logits(model, inputs, use_cache=False), dense)


@pytest.mark.parametrize("left_pad", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("name", list(TOKEN_PLANS))
@pytest.mark.parametrize("case", TOKEN_CASES)
def test_token_plan_cached_generation_matches_recompute(case, name, left_pad):
    _check_cached_matches_recompute(_token_model(case), TOKEN_PLANS[name], left_pad)


@pytest.mark.parametrize("name", list(TOKEN_PLANS))
@pytest.mark.parametrize("case", TOKEN_CASES)
def test_token_plan_rows_answer_as_alone(case, name):
    """Batching with left padding does not change answers: each row generates alone what it
    generates in the padded batch."""
    model = _token_model(case)
    inputs = tiny_inputs(model, batch=3)
    with apply(model, TOKEN_PLANS[name]):
        batch = _generate(model, inputs)
        for b in range(3):
            alone = _generate(model, row_inputs(inputs, b))
            assert torch.equal(alone.sequences[0, -3:], batch.sequences[b, -3:])
            torch.testing.assert_close(torch.stack(alone.logits, 1)[0], torch.stack(batch.logits, 1)[b],
                                       rtol=1e-5, atol=1e-5)


MIXED_SIZE_PLANS = {name: plan for name, plan in TOKEN_PLANS.items() if plan.visual_tokens is None}
MIXED_SIZE_PLANS["scopes"] = Plan(layers={0: LayerOp(SKIP_ATTN, SCOPE_NON_VISUAL), 1: LayerOp(SKIP_BLOCK, SCOPE_VISUAL),
                                          2: LayerOp(SKIP_FFN, SCOPE_PROMPT), 3: LayerOp(PARALLEL_ATTN_FFN, SCOPE_VISUAL)})


MIXED_SIDES = {"llava-next": [32, 64, 32], "llava-onevision": [32, 64, 32], "internvl": [16, 32, 16]}
"""Image sides per row (default: Qwen-VL's 16, 32, 24 pixels: 4, 16 and 9 image tokens; LLaVA-NeXT: 36, 88, 36;
LLaVA-OneVision: 36, 46 (tiles shrunk), 36; InternVL: 1, 5 and 1 tiles, 16, 80 and 16 tokens)."""


@pytest.mark.parametrize("name", list(MIXED_SIZE_PLANS))
@pytest.mark.parametrize("case", RESOLUTION_FAMILIES)
def test_rows_with_different_image_sizes_answer_as_alone(case, name):
    """Images at their own resolution: rows whose images give different numbers of image tokens
    (so their image positions, and Qwen-VL's M-RoPE positions, differ) generate in one padded
    batch what they generate alone."""
    model = _token_model(case)
    inputs = tiny_inputs(model, batch=3, image_sides=MIXED_SIDES.get(case, [16, 32, 24]))
    with apply(model, MIXED_SIZE_PLANS[name]):
        batch = _generate(model, inputs)
        for b in range(3):
            alone = _generate(model, row_inputs(inputs, b))
            assert torch.equal(alone.sequences[0, -3:], batch.sequences[b, -3:])
            torch.testing.assert_close(torch.stack(alone.logits, 1)[0], torch.stack(batch.logits, 1)[b],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", RESOLUTION_FAMILIES)
def test_visual_tokens_refuse_a_batch_of_different_image_sizes(case):
    model = _token_model(case)
    inputs = tiny_inputs(model, batch=2, image_sides=MIXED_SIDES.get(case, [16, 32, 24])[:2])
    with apply(model, Plan(visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))):
        with pytest.raises(RuntimeError, match="same number of image tokens in every row"):
            _generate(model, inputs)


@pytest.mark.parametrize("after_layer", [1, 3])
@pytest.mark.parametrize("case", TOKEN_CASES)
def test_keeping_every_image_token_is_the_dense_model(case, after_layer):
    """keep rounding to every token: the reduced layers run with masks built by searchskip from
    absolute positions, and give the dense logits bit for bit at every real position."""
    model = _token_model(case)
    inputs, n = _with_generated(model)
    real = inputs["attention_mask"].bool()
    dense = _logits(model, inputs, use_cache=False)
    with apply(model, Plan(visual_tokens=VisualTokensSpec(after_layer, 0.99, "uniform"))):
        planned = _logits(model, inputs, n, use_cache=False)
    assert torch.equal(planned[real], dense[real])


def _masked_reference(model, inputs: dict, after_layer: int, dropped: torch.Tensor) -> torch.Tensor:
    """The dense model, where layers >= after_layer may not attend to the ``dropped`` positions
    (batch x positions bool): its logits at every kept position equal the reduced model's."""
    layers = get_adapter(model).layers(model)
    t = inputs["input_ids"].shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    base = causal[None, None] & inputs["attention_mask"].bool()[:, None, None, :]

    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        mask = base if mask is None else mask
        mask = mask & ~dropped[:, None, None, :]
        mask = mask | ~mask.any(-1, keepdim=True)
        return args, dict(kwargs, attention_mask=mask)

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers[after_layer:]]
    try:
        return _logits(model, inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def _attention_scores(model, inputs: dict, layer: int, n: int) -> torch.Tensor:
    """Layer ``layer``'s attention probabilities (mean over heads) of position n-1, from eager attention."""
    config = get_adapter(model).text_config(model)
    old = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        config._attn_implementation = old
    return out.attentions[layer][:, :, n - 1, :n].mean(1)


@pytest.mark.parametrize("rank", ["uniform", "attention"])
@pytest.mark.parametrize("case", [c for c in TOKEN_CASES if is_multimodal(c.removesuffix("-sliding"))])
def test_visual_tokens_equal_a_masked_dense_model(case, rank):
    """An independent reference: the dense model with the dropped image positions masked out of
    the attention of layers >= k gives the reduced model's logits at every kept real position;
    the kept tokens are chosen from eager attention weights (attention) or evenly (uniform)."""
    model = _token_model(case)
    inputs = tiny_inputs(model)
    n = inputs["input_ids"].shape[1]
    after, keep = 2, 0.25
    image = inputs["input_ids"] == IMAGE_TOKEN_ID
    total = int(image[0].sum())
    k = round(keep * total)
    positions = image.nonzero()[:, 1].view(image.shape[0], total)
    if rank == "uniform":
        chosen = positions[:, [int((i + 0.5) * total / k) for i in range(k)]]
    else:
        scores = _attention_scores(model, inputs, after - 1, n).gather(1, positions)
        chosen = positions.gather(1, scores.argsort(dim=1, descending=True, stable=True)[:, :k])
    dropped = image.clone()
    dropped.scatter_(1, chosen, False)
    want = _masked_reference(model, inputs, after, dropped)
    with apply(model, Plan(visual_tokens=VisualTokensSpec(after, keep, rank))):
        got = _logits(model, inputs, n, use_cache=False)
    kept = inputs["attention_mask"].bool() & ~dropped
    torch.testing.assert_close(got[kept], want[kept], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[kept], _logits(model, inputs, use_cache=False)[kept], atol=1e-3)


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_early_exit_is_generated_skips_after_the_exit(case):
    """early_exit e == skip_block with scope generated on every layer after e."""
    model = _token_model(case)
    inputs = tiny_inputs(model)
    skips = Plan(layers={i: LayerOp(SKIP_BLOCK, SCOPE_GENERATED) for i in (2, 3)})
    with apply(model, Plan(early_exit=EarlyExitSpec(1))):
        exited = _generate(model, inputs)
    with apply(model, skips):
        skipped = _generate(model, inputs)
    assert torch.equal(exited.sequences, skipped.sequences)
    torch.testing.assert_close(torch.stack(exited.logits, 1), torch.stack(skipped.logits, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(TOKEN_PLANS))
@pytest.mark.parametrize("case", TOKEN_CASES)
def test_token_plan_hidden_states_one_per_layer(case, name):
    model = _token_model(case)
    inputs, n = _with_generated(model)
    with apply(model, TOKEN_PLANS[name]), torch.no_grad(), plan_context(model, prompt_length=n):
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == get_adapter(model).num_layers(model) + 1
    assert all(h.shape == out.hidden_states[0].shape for h in out.hidden_states)


@pytest.mark.parametrize("name", list(TOKEN_PLANS))
def test_token_plan_survives_yaml(name):
    model = _token_model("llava-llama")
    plan = TOKEN_PLANS[name]
    inputs, n = _with_generated(model)
    with apply(model, plan) as applied:
        want = _logits(model, inputs, n)
        slots, uses = dict(applied.cache_slots), dict(applied.attention_use)
    reloaded = Plan.from_yaml_text(plan.to_yaml())
    assert reloaded == plan
    with apply(model, reloaded) as applied:
        assert applied.cache_slots == slots and applied.attention_use == uses
        assert torch.equal(_logits(model, inputs, n), want)


def test_reduced_slots_never_take_slot_zero():
    """Layer 0 skips its attention for generated tokens: the first complete attention (layer 1)
    takes slot 0; the reduced layers 2.. are 'subset' and come after it."""
    model = _token_model("llava-llama")
    plan = Plan(layers={0: LayerOp(SKIP_ATTN, SCOPE_GENERATED)}, visual_tokens=VisualTokensSpec(2, 0.5))
    with apply(model, plan) as applied:
        assert applied.attention_use == {0: "prompt", 1: "all", 2: "subset", 3: "subset"}
        assert applied.cache_slots[1] == 0
    with apply(model, Plan(early_exit=EarlyExitSpec(1))) as applied:
        assert applied.attention_use == {0: "all", 1: "all", 2: "prompt", 3: "prompt"}


def test_visual_tokens_refuse_rows_with_different_image_counts():
    """Row 1 holds no image tokens (declared through plan_context: the call has embeddings only)."""
    model = _token_model("llava-llama")
    inputs = tiny_inputs(model)
    image = inputs["input_ids"] == IMAGE_TOKEN_ID
    image[1] = False
    embeds = model.get_input_embeddings()(inputs["input_ids"].clamp(max=IMAGE_TOKEN_ID - 1))
    with apply(model, Plan(visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))), torch.no_grad():
        with plan_context(model, prompt_length=embeds.shape[1], image_mask=image):
            with pytest.raises(RuntimeError, match="same number of image tokens in every row"):
                model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


def test_token_plans_refuse_attention_without_4d_masks():
    model = tiny_model("llama")
    get_adapter(model).text_config(model)._attn_implementation = "flash_attention_2"
    with pytest.raises(ModelError, match="attn_implementation='sdpa'"):
        apply(model, Plan(early_exit=EarlyExitSpec(1)))
    assert not hasattr(model, "_searchskip_applied")


def test_visual_tokens_need_the_whole_prompt_in_one_call():
    """A prompt declared longer than the first call (a chunked prefill) is refused, not mis-ranked."""
    model = _token_model("llava-llama")
    inputs = tiny_inputs(model, batch=1)
    n = inputs["input_ids"].shape[1]
    with apply(model, Plan(visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))), torch.no_grad():
        with plan_context(model, prompt_length=n), pytest.raises(RuntimeError, match="whole prompt"):
            model(input_ids=inputs["input_ids"][:, : n - 3], pixel_values=inputs["pixel_values"],
                  attention_mask=inputs["attention_mask"][:, : n - 3], use_cache=True)
