"""compress(): the exported model computes what the planned model computes, on every family."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from searchskip.apply import apply
from searchskip.arch import get_adapter
from searchskip.export.model import compress, removed_layers, runtime_plan
from searchskip.plan import Plan
from searchskip.errors import ModelError
from searchskip.testing import EOS_ID, FAMILIES, IMAGE_TOKEN_ID, tiny_inputs, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

GEN = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID, EOS_ID], output_scores=True,
           return_dict_in_generate=True)

PLANS = {
    "blocks": {"version": 1, "layers": {1: "skip_block"}, "drop": {"start": 2, "end": 3}},
    "runtime": {"version": 1, "layers": {0: "skip_block", 1: "parallel_attn_ffn",
                                         2: {"op": "skip_attn", "scope": "generated"}}},
    "ffn_channels": {"version": 1, "layers": {3: "skip_block"},
                     "prune": {"method": "magnitude", "structure": "ffn_channels", "sparsity": 0.5,
                               "targets": ["ffn"]}},
    "ffn_channels_per_layer": {"version": 1, "prune": {"method": "magnitude", "structure": "ffn_channels",
                                                       "sparsity": {0: 0.5, 2: 0.25}, "targets": ["ffn"]}},
    "unstructured": {"version": 1, "layers": {1: "skip_ffn"},
                     "prune": {"method": "magnitude", "sparsity": 0.3}},
    "tokens": {"version": 1, "layers": {0: "skip_block"}, "drop": {"start": 1, "end": 2},
               "visual_tokens": {"after_layer": 3, "keep": 0.25}, "early_exit": {"layer": 2}},
    "visual_scope": {"version": 1, "scope": "visual", "layers": {0: "skip_block", 1: "skip_ffn",
                                                               2: {"op": "skip_block", "scope": "all"}},
                     "visual_tokens": {"after_layer": 3, "keep": 0.5, "rank": "uniform"}},
}


def _generate(model, inputs):
    with torch.no_grad():
        out = model.generate(**inputs, **GEN)
    return out.sequences, torch.stack(out.scores, 1)


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_model_generates_like_the_planned_model(family, name):
    plan = Plan.from_dict(PLANS[name])
    model = tiny_model(family, num_layers=4)
    exported = copy.deepcopy(model)
    inputs = tiny_inputs(model)
    with apply(model, plan):
        want_seq, want_scores = _generate(model, inputs)

    adapter = get_adapter(exported)
    pinned = adapter.injected_layers(exported)  # Qwen3-VL's DeepStack layers stay, skipped at runtime
    result = compress(SimpleNamespace(model=exported), plan)
    assert result.kept_layers == [i for i in range(4) if i not in removed_layers(plan, 4, pinned)]
    assert adapter.num_layers(exported) == len(result.kept_layers)
    assert adapter.text_config(exported).num_hidden_layers == len(result.kept_layers)
    assert [adapter.attention(layer).layer_idx for layer in adapter.layers(exported)] == list(range(len(result.kept_layers)))
    if result.runtime_plan is not None:
        apply(exported, result.runtime_plan)
    got_seq, got_scores = _generate(exported, inputs)
    assert torch.equal(got_seq, want_seq)
    torch.testing.assert_close(got_scores, want_scores, rtol=1e-4, atol=1e-4)


def test_what_stays_a_runtime_plan_is_renumbered():
    plan = Plan.from_dict({"version": 1, "scope": "generated",
                           "layers": {1: {"op": "skip_block", "scope": "all"}, 2: "skip_block", 4: "skip_ffn",
                                      5: {"op": "parallel_blocks", "scope": "all"}},
                           "drop": {"start": 7, "end": 8}})
    assert removed_layers(plan, 8) == [1, 7]
    residual, kept = runtime_plan(plan, 8)
    assert kept == [0, 2, 3, 4, 5, 6]
    assert residual == Plan.from_dict({"version": 1, "scope": "generated",
                                       "layers": {1: "skip_block", 3: "skip_ffn",
                                                  4: {"op": "parallel_blocks", "scope": "all"}}})
    assert runtime_plan(Plan.from_dict({"version": 1, "layers": {3: "skip_block"}}), 8)[0] is None


def test_token_ops_are_renumbered_or_left_out():
    """after_layer counts the kept layers before it; the exit layer is the last kept one at or
    before it; keys whose governed layers are all removed are left out."""
    plan = Plan.from_dict({"version": 1, "layers": {1: "skip_block"}, "drop": {"start": 5, "end": 8},
                           "visual_tokens": {"after_layer": 3, "keep": 0.5, "rank": "uniform"},
                           "early_exit": {"layer": 1}})
    residual, kept = runtime_plan(plan, 8)
    assert kept == [0, 2, 3, 4]
    assert residual == Plan.from_dict({"version": 1, "visual_tokens": {"after_layer": 2, "keep": 0.5, "rank": "uniform"},
                                       "early_exit": {"layer": 0}})
    gone = Plan.from_dict({"version": 1, "drop": {"start": 4, "end": 8}, "visual_tokens": {"after_layer": 4, "keep": 0.5},
                           "early_exit": {"layer": 4}})
    assert runtime_plan(gone, 8) == (None, [0, 1, 2, 3])
    with pytest.raises(ModelError, match="early_exit.layer=1"):
        runtime_plan(Plan.from_dict({"version": 1, "drop": {"start": 0, "end": 2}, "early_exit": {"layer": 1}}), 8)


def test_uniform_ffn_channel_pruning_shrinks_the_config():
    plan = Plan.from_dict(PLANS["ffn_channels"])
    model = tiny_model("llava-llama", num_layers=4)
    config = get_adapter(model).text_config(model)
    before = config.intermediate_size
    result = compress(SimpleNamespace(model=model), plan)
    assert result.ffn_size == config.intermediate_size == before // 2
    per_layer = tiny_model("llava-llama", num_layers=4)
    result = compress(SimpleNamespace(model=per_layer), Plan.from_dict(PLANS["ffn_channels_per_layer"]))
    assert result.ffn_size is None  # layers 1 and 3 keep every channel: the others are padded back
    full = before
    assert result.ffn_widths == [full - round(0.5 * full), full, full - round(0.25 * full), full]
    layers = get_adapter(per_layer).layers(per_layer)
    for layer, width in zip(layers, result.ffn_widths):  # padding: zero channels after the layer's own
        mlp = layer.mlp
        assert mlp.gate_proj.weight.shape[0] == full
        assert not mlp.gate_proj.weight[width:].any() and not mlp.up_proj.weight[width:].any()
        assert not mlp.down_proj.weight[:, width:].any()
        assert mlp.down_proj.weight[:, :width].any()
    assert compress(SimpleNamespace(model=tiny_model("llava-llama", num_layers=4)),
                    Plan.from_dict(PLANS["ffn_channels"])).ffn_widths is None  # even widths: nothing to record


@pytest.mark.parametrize("widths", [[8, 8], [8, 8, 8, 0], [8, 8, 8, 65], [8, 8, 8, 8.0], "8", {"0": 8}])
def test_the_vllm_plugin_refuses_ffn_widths_that_do_not_fit_the_model(tmp_path, widths):
    import json

    from searchskip.vllm_plugin.plan import read_plan

    (tmp_path / "searchskip_export.json").write_text(json.dumps({"ffn_widths": widths}))
    with pytest.raises(ValueError, match=r"searchskip_export.json: ffn_widths: must list 4 channel counts .* to the config's 64"):
        read_plan(tmp_path, 4, 64)


def test_the_vllm_plugin_reads_ffn_widths_with_the_plan(tmp_path):
    import json

    from searchskip.vllm_plugin.plan import read_plan

    (tmp_path / "searchskip_export.json").write_text(json.dumps(
        {"ffn_widths": [8, 64, 32, 1], "runtime_plan": {"version": 1, "layers": {"1": "skip_attn"}}}))
    plan = read_plan(tmp_path, 4, 64)
    assert plan.ffn_widths == (8, 64, 32, 1) and plan.ops == ("keep", "skip_attn", "keep", "keep")
    assert read_plan(tmp_path / "elsewhere", 4, 64).ffn_widths is None


def test_compress_refuses_a_model_carrying_a_plan():
    model = tiny_model("llava-llama", num_layers=4)
    apply(model, Plan.from_dict(PLANS["blocks"]))
    with pytest.raises(RuntimeError, match="restore it first"):
        compress(SimpleNamespace(model=model), Plan.from_dict(PLANS["blocks"]))
