"""Architecture adapters: lookup, locations, and exact sublayer decomposition for every family."""

from __future__ import annotations

import copy

import pytest
import torch

from searchskip.arch import REGISTRY, AdapterRegistry, LlamaAdapter, get_adapter, register, supported_families
from searchskip.arch.cache_api import CACHE_KWARG
from searchskip.arch.fused import RowSlice, source_of
from searchskip.errors import ModelError
from searchskip.testing import (ANYRES_FAMILIES, FAMILIES, LLAVA_FAMILIES, QWEN_VL_FAMILIES, TILED_FAMILIES, tiny_inputs,
                                tiny_model)



pytestmark = pytest.mark.usefixtures("one_thread")


EXPECTED = {
    # family: (adapter name, decoder stack class, decoder layer class)
    "llama": ("llama", "LlamaModel", "LlamaDecoderLayer"),
    "mistral": ("llama", "MistralModel", "MistralDecoderLayer"),
    "qwen2": ("llama", "Qwen2Model", "Qwen2DecoderLayer"),
    "qwen3": ("llama", "Qwen3Model", "Qwen3DecoderLayer"),
    "gemma2": ("gemma", "Gemma2Model", "Gemma2DecoderLayer"),
    "gemma3": ("gemma", "Gemma3TextModel", "Gemma3DecoderLayer"),
    "phi3": ("phi3", "Phi3Model", "Phi3DecoderLayer"),
    "opt": ("opt", "OPTDecoder", "OPTDecoderLayer"),
    "llava-llama": ("llava-llama", "LlamaModel", "LlamaDecoderLayer"),
    "llava-mistral": ("llava-llama", "MistralModel", "MistralDecoderLayer"),
    "llava-qwen2": ("llava-llama", "Qwen2Model", "Qwen2DecoderLayer"),
    "llava-qwen3": ("llava-llama", "Qwen3Model", "Qwen3DecoderLayer"),
    "llava-opt": ("llava-opt", "OPTDecoder", "OPTDecoderLayer"),
    "qwen2-vl": ("qwen2-vl", "Qwen2VLTextModel", "Qwen2VLDecoderLayer"),
    "qwen2.5-vl": ("qwen2.5-vl", "Qwen2_5_VLTextModel", "Qwen2_5_VLDecoderLayer"),
    "qwen3-vl": ("qwen3-vl", "Qwen3VLTextModel", "Qwen3VLTextDecoderLayer"),
    "llava-next": ("llava-next-llama", "LlamaModel", "LlamaDecoderLayer"),
    "llava-onevision": ("llava-onevision-llama", "Qwen2Model", "Qwen2DecoderLayer"),
    "internvl": ("internvl-llama", "Qwen2Model", "Qwen2DecoderLayer"),
    "gemma3-vl": ("gemma3-vl", "Gemma3TextModel", "Gemma3DecoderLayer"),
}
TEXT_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma3-vl": "gemma3_text", "llava-next": "llama", "llava-onevision": "qwen2", "internvl": "qwen2", "qwen2-vl": "qwen2_vl_text", "qwen2.5-vl": "qwen2_5_vl_text", "qwen3-vl": "qwen3_vl_text"}


def test_expected_table_covers_every_family():
    assert set(EXPECTED) == set(FAMILIES)


# --------------------------------------------------------------------------- lookup & locations
@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_found_and_locations(family):
    model = tiny_model(family, num_layers=3)
    adapter = get_adapter(model)
    name, stack_cls, layer_cls = EXPECTED[family]
    assert adapter.name == name
    stack = adapter.language_model(model)
    assert type(stack).__name__ == stack_cls
    layers = adapter.layers(model)
    assert isinstance(layers, torch.nn.ModuleList)
    assert layers is stack.layers
    assert [type(layer).__name__ for layer in layers] == [layer_cls] * 3
    assert adapter.num_layers(model) == 3 == adapter.text_config(model).num_hidden_layers
    # the stack is really the one the model runs: its layers are model submodules
    model_modules = {id(m) for m in model.modules()}
    assert all(id(layer) in model_modules for layer in layers)
    assert adapter.text_config(model).model_type == TEXT_MODEL_TYPES.get(family, family.split("-")[-1])
    for i, layer in enumerate(layers):
        assert adapter.attention(layer).layer_idx == i
        assert isinstance(adapter.attn_norm(layer), torch.nn.Module)
        assert adapter.attn_norm(layer) is not adapter.mlp_norm(layer)

    if family in LLAVA_FAMILIES + ANYRES_FAMILIES + TILED_FAMILIES + ("gemma3-vl",):
        assert adapter.vision_tower(model) is model.model.vision_tower
        assert adapter.projector(model) is model.model.multi_modal_projector
        assert adapter.image_token_id(model) == model.config.image_token_id == 99
        assert adapter.language_model(model) is not model.model.vision_tower
    elif family in QWEN_VL_FAMILIES:
        assert adapter.vision_tower(model) is model.model.visual
        projector = adapter.projector(model)
        if family == "qwen3-vl":  # the merger and the DeepStack mergers, after whose features layer 0 ... adds
            assert list(projector) == [model.model.visual.merger, *model.model.visual.deepstack_merger_list]
            assert adapter.injected_layers(model) == frozenset({0})
        else:
            assert projector is model.model.visual.merger
            assert adapter.injected_layers(model) == frozenset()
        assert adapter.image_token_id(model) == model.config.image_token_id == 99
    else:
        assert adapter.vision_tower(model) is None
        assert adapter.projector(model) is None
        assert adapter.image_token_id(model) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_count_follows_config(family):
    for n in (2, 5):
        model = tiny_model(family, num_layers=n)
        assert get_adapter(model).num_layers(model) == n


# --------------------------------------------------------------------------- linears
@pytest.mark.parametrize("family", FAMILIES)
def test_linear_shapes_are_consistent(family):
    model = tiny_model(family, num_layers=2)
    adapter = get_adapter(model)
    cfg = adapter.text_config(model)
    hidden = cfg.hidden_size
    ffn = getattr(cfg, "intermediate_size", None) or cfg.ffn_dim
    for layer in adapter.layers(model):
        mlp = adapter.mlp_linears(layer)
        assert set(mlp) == set(adapter.mlp_in_keys) | {adapter.mlp_out_key}
        assert adapter.mlp_out_key not in adapter.mlp_in_keys
        for key in adapter.mlp_in_keys:  # Phi-3: rows of its fused gate_up_proj
            assert isinstance(mlp[key], (torch.nn.Linear, RowSlice))
            assert (mlp[key].in_features, mlp[key].out_features) == (hidden, ffn)
        out = mlp[adapter.mlp_out_key]
        assert (out.in_features, out.out_features) == (ffn, hidden)
        assert adapter.ffn_channels(layer) == ffn
        heads, kv_heads, head_dim = adapter.attn_geometry(layer)
        assert heads == cfg.num_attention_heads
        assert kv_heads == (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        attn = adapter.attn_linears(layer)
        assert set(attn) == {"q", "k", "v", "o"} == set(adapter.attn_in_keys) | {adapter.attn_out_key}
        assert attn["q"].out_features == heads * head_dim
        assert attn["k"].out_features == attn["v"].out_features == kv_heads * head_dim
        assert attn["o"].in_features == heads * head_dim
        assert attn["q"].in_features == attn["o"].out_features == hidden
        assert all(source_of(lin) in set(layer.modules()) for lin in (*attn.values(), *mlp.values()))
    if family.endswith(("mistral", "qwen2")):
        assert kv_heads < heads  # GQA is exercised


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_mlp_linears_are_the_ones_the_ffn_runs(family):
    model = tiny_model(family, num_layers=1)
    adapter = get_adapter(model)
    layer = adapter.layers(model)[0]
    out = adapter.mlp_linears(layer)[adapter.mlp_out_key]
    with torch.no_grad():
        out.weight.zero_()
        if out.bias is not None:
            out.bias.zero_()
    h = torch.randn(2, 3, out.out_features)
    assert torch.equal(adapter.mlp_delta(layer, h), torch.zeros_like(h))


# --------------------------------------------------------------------------- decomposition
def _record_layer_calls(model, adapter):
    """Hooks that record, for every decoder-layer call, (layer, input, kwargs, output).

    The cache in kwargs is deep-copied *before* the layer runs, so recomputing from it
    writes the same K/V into the same state the real forward saw."""
    calls, handles = [], []
    for layer in adapter.layers(model):

        def pre(mod, args, kwargs):
            kw = dict(kwargs)
            if kw.get(CACHE_KWARG) is not None:
                kw[CACHE_KWARG] = copy.deepcopy(kw[CACHE_KWARG])
            calls.append([mod, args[0].detach().clone(), kw, None])

        def post(mod, args, kwargs, output):
            assert calls[-1][0] is mod
            calls[-1][3] = output.detach().clone()

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    return calls, handles


def _check_decomposition(adapter, calls):
    assert calls
    for layer, h, kw, expected in calls:
        assert isinstance(expected, torch.Tensor)  # 5.x layers return a tensor
        attn = adapter.attn_delta(layer, h, **kw)
        mid = h + attn
        mlp = adapter.mlp_delta(layer, mid)
        got = mid + mlp
        assert torch.equal(got, expected), (type(layer).__name__, (got - expected).abs().max().item())
        # not vacuous: both sublayers change the stream noticeably
        assert attn.abs().max() > 1e-3 * h.abs().max()
        assert mlp.abs().max() > 1e-3 * h.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_decomposition_matches_layer_forward_without_cache(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    calls, handles = _record_layer_calls(model, adapter)
    try:
        model(**tiny_inputs(model, left_pad=False), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == adapter.num_layers(model)
    assert all(kw.get(CACHE_KWARG) is None for _, _, kw, _ in calls)
    _check_decomposition(adapter, calls)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_decomposition_matches_layer_forward_in_cached_generation(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    calls, handles = _record_layer_calls(model, adapter)
    try:
        model.generate(**tiny_inputs(model), max_new_tokens=3, do_sample=False, min_new_tokens=3)
    finally:
        for handle in handles:
            handle.remove()
    n = adapter.num_layers(model)
    assert len(calls) == 3 * n  # prefill + 2 cached decoding steps
    assert all(kw.get(CACHE_KWARG) is not None for _, _, kw, _ in calls)
    assert calls[-1][1].shape[1] == 1  # a decoding step sees one new position
    assert calls[0][2]["attention_mask"] is not None  # the left-padded row needs a mask
    _check_decomposition(adapter, calls)


@pytest.mark.parametrize("family", ["llama", "mistral", "opt", "llava-qwen2"])
@torch.no_grad()
def test_decomposition_with_eager_attention(family):
    # eager attention takes a different code path (explicit mask add, softmax) from SDPA
    if family.startswith("llava-"):
        model = tiny_model(family, llava_config={"attn_implementation": "eager"})
    else:
        model = tiny_model(family, attn_implementation="eager")
    assert adapter_text_impl(model) == "eager"
    adapter = get_adapter(model)
    calls, handles = _record_layer_calls(model, adapter)
    try:
        model.generate(**tiny_inputs(model), max_new_tokens=2, do_sample=False, min_new_tokens=2)
    finally:
        for handle in handles:
            handle.remove()
    _check_decomposition(adapter, calls)


def adapter_text_impl(model):
    return get_adapter(model).text_config(model)._attn_implementation


@torch.no_grad()
def test_decomposition_with_qwen2_hybrid_sliding_layers():
    # layers 0-1 full attention, 2-3 sliding window 4: the model passes per-layer masks
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    adapter = get_adapter(model)
    calls, handles = _record_layer_calls(model, adapter)
    try:
        model.generate(**tiny_inputs(model), max_new_tokens=2, do_sample=False, min_new_tokens=2)
    finally:
        for handle in handles:
            handle.remove()
    masks = [kw["attention_mask"] for _, _, kw, _ in calls[:4]]
    assert not torch.equal(masks[0], masks[3])
    _check_decomposition(adapter, calls)


@pytest.mark.parametrize("family", ["opt", "llava-opt"])
@torch.no_grad()
def test_opt_decomposition_follows_dropout_in_training_mode(family):
    model = tiny_model(family, num_layers=2)
    adapter = get_adapter(model)
    calls, handles = _record_layer_calls(model, adapter)
    try:
        model(**tiny_inputs(model), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    layer, h, kw, eval_out = calls[0]
    layer.train()
    torch.manual_seed(123)
    train_out = layer(h, **kw)
    torch.manual_seed(123)
    mid = h + adapter.attn_delta(layer, h, **kw)
    got = mid + adapter.mlp_delta(layer, mid)
    assert not torch.equal(train_out, eval_out)  # dropout (p=0.1) is really active
    assert torch.equal(got, train_out)
    layer.eval()
    assert torch.equal(adapter.mlp_delta(layer, h), adapter.mlp_delta(layer, h))  # identity in eval


# --------------------------------------------------------------------------- refusals
def test_unsupported_model_names_class_and_supported_families():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(ModelError) as err:
        get_adapter(model)
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg
    for needle in ("LlavaForConditionalGeneration", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                   "OPTForCausalLM"):
        assert needle in msg
    assert all(line in msg for line in supported_families())


def test_bare_decoder_without_lm_head_is_not_matched():
    model = tiny_model("llama", num_layers=1)
    with pytest.raises(ModelError, match="LlamaModel"):
        get_adapter(model.model)


def test_llava_over_unsupported_decoder_is_refused():
    from transformers import CLIPVisionConfig, GPT2Config, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=16, patch_size=8),
        text_config=GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                               bos_token_id=0, eos_token_id=0, tie_word_embeddings=False),
        image_token_id=49,
        tie_word_embeddings=False,
    )
    with pytest.raises(ModelError) as err:
        get_adapter(LlavaForConditionalGeneration(config))
    msg = str(err.value)
    assert "LlavaForConditionalGeneration" in msg and "GPT2Model" in msg and "gpt2" in msg
    assert "llama" in msg and "opt" in msg


@pytest.mark.parametrize("family", ["opt", "llava-opt"])
def test_opt_post_norm_is_refused(family):
    model = tiny_model(family, num_layers=1, do_layer_norm_before=False)
    with pytest.raises(ModelError, match="do_layer_norm_before=False.*post-norm"):
        get_adapter(model)
    # pre-norm of the same family is accepted, and the per-layer guard also refuses post-norm
    pre = tiny_model(family, num_layers=1)
    adapter = get_adapter(pre)
    layer = adapter.layers(model)[0]
    assert layer.do_layer_norm_before is False
    with pytest.raises(ModelError, match="post-norm"):
        adapter.mlp_delta(layer, torch.zeros(1, 2, 32))


def test_registry_refuses_duplicates():
    before = REGISTRY.names()
    with pytest.raises(ValueError, match="already registered"):
        register(LlamaAdapter())
    assert REGISTRY.names() == before

    registry = AdapterRegistry()
    registry.register(LlamaAdapter())
    with pytest.raises(ValueError, match="'llama' is already registered"):
        registry.register(LlamaAdapter())
    assert len(registry) == 1

    class Nameless(LlamaAdapter):
        name = ""

    with pytest.raises(ValueError, match="no name"):
        registry.register(Nameless())


def test_registry_lists_each_family_once():
    assert REGISTRY.names() == ["llava", "llava-next", "llava-onevision", "internvl", "gemma3-vl", "qwen2.5-vl",
                                "qwen2-vl", "qwen3-vl", "llama", "gemma", "phi3", "opt"]
    assert len(supported_families()) == 12


def test_a_wrapper_answers_every_per_layer_question_by_its_decoder():
    """A vision-language wrapper binds a decoder adapter; every question ArchAdapter asks of a
    decoder layer must be answered by that decoder, not by ArchAdapter's defaults (a hook left
    out would silently drop, say, Gemma's sandwich norm inside Gemma 3)."""
    import inspect

    from searchskip.arch.base import ArchAdapter
    from searchskip.arch.wrapper import WrapperAdapter

    model_level = {"matches", "resolve", "validate_text_config", "validate_layer", "language_model", "decoder_stack",
                   "layers", "text_config", "num_layers", "vision_tower", "projector", "image_token_id",
                   "injected_layers"}
    per_layer = [name for name, value in vars(ArchAdapter).items()
                 if not name.startswith("_") and name not in model_level
                 and (inspect.isfunction(value) or isinstance(value, property))]
    assert {"attn_softcap", "attn_output_norm", "query_norm", "attn_delta"} <= set(per_layer)
    missing = [name for name in per_layer if name not in vars(WrapperAdapter)]
    assert not missing, f"WrapperAdapter does not delegate {missing} to its decoder"
