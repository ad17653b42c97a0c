"""Weight pruning (searchskip.ops.prune) and calibration batches (searchskip.ops.calibration)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from searchskip.arch import get_adapter
from searchskip.arch.fused import source_of
from searchskip.errors import ConfigError, DataError, SearchSkipError
from searchskip.ops.prune import (
    apply_pruning,
    input_norms,
    magnitude_scores,
    n_m_mask,
    unstructured_mask,
    wanda_scores,
)
from searchskip.plan import CalibrationSpec, PruneSpec
from searchskip.testing import FAMILIES, tiny_inputs, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


CAL = CalibrationSpec(samples=4, seed=0)


def magnitude(**kw) -> PruneSpec:
    return PruneSpec(method="magnitude", **kw)


def wanda(**kw) -> PruneSpec:
    return PruneSpec(method="wanda", calibration=CAL, **kw)


def setup(family: str, **overrides):
    model = tiny_model(family, **overrides)
    return model, get_adapter(model), tiny_inputs(model)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def targets_of(adapter, layer, targets=("attn", "ffn")) -> dict[str, nn.Linear]:
    out = {}
    if "attn" in targets:
        out.update(adapter.attn_linears(layer))
    if "ffn" in targets:
        out.update(adapter.mlp_linears(layer))
    return out


def snapshot(adapter, model) -> list[dict[str, torch.Tensor]]:
    """A copy of every decoder linear weight (all targets), per layer."""
    return [{k: lin.weight.detach().clone() for k, lin in targets_of(adapter, layer).items()}
            for layer in adapter.layers(model)]


def my_norms(model, adapter, inputs, keys=None) -> dict[tuple[int, str], torch.Tensor]:
    """Input L2 norms per channel of each target linear over non-pad tokens, by the test's own hooks."""
    store: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(adapter.layers(model)):
        for key, lin in targets_of(adapter, layer).items():
            if keys is not None and key not in keys:
                continue
            handles.append(lin.register_forward_pre_hook(
                lambda m, args, k=(i, key): store.setdefault(k, []).append(args[0].detach().clone())))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    keep = inputs["attention_mask"].reshape(-1).bool()
    return {k: v[0].reshape(-1, v[0].shape[-1])[keep].pow(2).sum(0).sqrt() for k, v in store.items()}


# --------------------------------------------------------------------------------------
# Hand-made cases on the score / mask functions
# --------------------------------------------------------------------------------------


def test_magnitude_keeps_the_largest_weights_of_the_matrix():
    w = torch.tensor([[0.1, -0.2, 0.3, 0.4],
                      [5.0, -6.0, 7.0, 8.0]])
    mask = unstructured_mask(magnitude_scores(w), 0.5, per_row=False)
    # per-matrix comparison: the whole small row goes, the big row stays
    assert mask.tolist() == [[True, True, True, True], [False, False, False, False]]
    mask = unstructured_mask(magnitude_scores(w), 0.25, per_row=False)
    assert mask.tolist() == [[True, True, False, False], [False, False, False, False]]
    # a negative weight is judged by its magnitude
    w2 = torch.tensor([[-9.0, 1.0, 2.0, 3.0]])
    assert unstructured_mask(magnitude_scores(w2), 0.25, per_row=False).tolist() == [[False, True, False, False]]


class Toy(nn.Module):
    """A 'model' taking ``x`` and an ``attention_mask``, with one linear to hook."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(weight)

    def forward(self, x, attention_mask=None):
        return self.lin(x)


def test_wanda_ranking_differs_from_magnitude_with_known_activations():
    w = torch.tensor([[3.0, 1.0, 2.0, 0.5],
                      [0.4, 4.0, 0.2, 1.0]])
    # input channel norms: column 0 is tiny, column 1 large -> ||X|| = [0.1, 10, 1, 2]
    x = torch.tensor([[[0.1, 6.0, 0.6, 1.2], [0.0, 8.0, 0.8, 1.6]]])
    model = Toy(w)
    norms = input_norms(model, {"lin": model.lin}, [{"x": x, "attention_mask": torch.ones(1, 2)}])["lin"]
    assert torch.allclose(norms, torch.tensor([0.1, 10.0, 1.0, 2.0]))
    mag = unstructured_mask(magnitude_scores(w), 0.5, per_row=True)
    wan = unstructured_mask(wanda_scores(w, norms), 0.5, per_row=True)
    # magnitude drops the 2 smallest |w| per row; wanda (|w| * [0.1, 10, 1, 2] = [0.3, 10, 2, 1] and
    # [0.04, 40, 0.2, 2]) drops column 0 and the next lowest
    assert mag.tolist() == [[False, True, False, True], [True, False, True, False]]
    assert wan.tolist() == [[True, False, False, True], [True, False, True, False]]
    assert not torch.equal(mag, wan)


def test_padding_positions_do_not_count_in_the_norms_toy():
    w = torch.eye(3)
    model = Toy(w)
    x = torch.tensor([[[100.0, 100.0, 100.0], [1.0, 2.0, 2.0]],
                      [[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]]])
    mask = torch.tensor([[0, 1], [1, 1]])
    norms = input_norms(model, {"lin": model.lin}, [{"x": x, "attention_mask": mask}])["lin"]
    expected = torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 4.0], [0.0, 1.0, 0.0]]).pow(2).sum(0).sqrt()
    assert torch.allclose(norms, expected)
    # several batches accumulate (sum of squares over every non-pad token)
    norms2 = input_norms(model, {"lin": model.lin}, [{"x": x, "attention_mask": mask}] * 2)["lin"]
    assert torch.allclose(norms2, expected * 2 ** 0.5)


def test_two_four_mask_keeps_two_best_of_each_group():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0, 0.5, 9.0, 8.0]])
    assert n_m_mask(scores).tolist() == [[True, False, False, True, True, True, False, False]]


# --------------------------------------------------------------------------------------
# Unstructured and 2:4 on every family
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_unstructured_magnitude_exact_count_and_largest_kept(family):
    model, adapter, x = setup(family)
    before = snapshot(adapter, model)
    assert all((w != 0).all() for layer in before for w in layer.values())
    result = apply_pruning(model, adapter, magnitude(sparsity=0.3), None)
    for i, layer in enumerate(adapter.layers(model)):
        for key, lin in targets_of(adapter, layer).items():
            w, orig = lin.weight, before[i][key]
            zeros = w == 0
            assert int(zeros.sum()) == round(0.3 * w.numel()), (i, key)
            assert result.zeroed_by_linear[i][key] == int(zeros.sum())
            assert torch.equal(w[~zeros], orig[~zeros])  # kept weights untouched
            assert orig[zeros].abs().max() <= orig[~zeros].abs().min()  # per-matrix: smallest |w| went
        assert result.zeroed[i] == sum(result.zeroed_by_linear[i].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_unstructured_wanda_per_row_count_and_ranking(family):
    model, adapter, x = setup(family)
    before = snapshot(adapter, model)
    norms = my_norms(model, adapter, x)
    result = apply_pruning(model, adapter, wanda(sparsity=0.3), [x])
    differs = False
    for i, layer in enumerate(adapter.layers(model)):
        for key, lin in targets_of(adapter, layer).items():
            w, orig = lin.weight, before[i][key]
            zeros = w == 0
            assert (zeros.sum(1) == round(0.3 * w.shape[1])).all(), (i, key)
            score = orig.abs() * norms[(i, key)][None, :]
            for r in range(w.shape[0]):  # per output row: lowest wanda scores went
                assert score[r][zeros[r]].max() <= score[r][~zeros[r]].min() + 1e-6
            differs |= not torch.equal(zeros, unstructured_mask(orig.abs(), 0.3, per_row=True))
        assert result.zeroed[i] == sum(int((lin.weight == 0).sum()) for lin in targets_of(adapter, layer).values())
    assert differs  # the activations changed the choice somewhere


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("family", FAMILIES)
def test_two_four_pattern_in_every_group(family, method):
    model, adapter, x = setup(family)
    before = snapshot(adapter, model)
    norms = my_norms(model, adapter, x) if method == "wanda" else None
    spec = PruneSpec(method=method, structure="2:4", sparsity=0.5, calibration=CAL if method == "wanda" else None)
    result = apply_pruning(model, adapter, spec, [x])
    for i, layer in enumerate(adapter.layers(model)):
        for key, lin in targets_of(adapter, layer).items():
            w = lin.weight
            groups = (w == 0).reshape(w.shape[0], -1, 4)
            assert (groups.sum(-1) == 2).all(), (i, key)
            orig = before[i][key]
            score = orig.abs() if norms is None else orig.abs() * norms[(i, key)][None, :]
            s = score.reshape(w.shape[0], -1, 4)
            pruned_max = torch.where(groups, s, torch.full_like(s, -1.0)).amax(-1)
            kept_min = torch.where(~groups, s, torch.full_like(s, float("inf"))).amin(-1)
            assert (pruned_max <= kept_min + 1e-6).all()
        assert result.zeroed[i] == sum(lin.weight.numel() // 2 for lin in targets_of(adapter, layer).values())


def test_two_four_needs_input_dim_divisible_by_four():
    model, adapter, x = setup("llama", intermediate_size=66)
    ref = logits(model, x)
    with pytest.raises(ConfigError) as err:
        apply_pruning(model, adapter, magnitude(structure="2:4", sparsity=0.5), None)
    msg = str(err.value)
    assert "down" in msg and "66" in msg and "layer 0" in msg and "prune.structure" in msg
    assert torch.equal(logits(model, x), ref)  # nothing was changed


def test_two_four_refuses_other_sparsities():
    model, adapter, _ = setup("llama")
    with pytest.raises(ConfigError, match="prune.sparsity"):
        apply_pruning(model, adapter, magnitude(structure="2:4", sparsity=0.3), None)


@pytest.mark.parametrize("family", ["llama", "llava-opt"])
def test_per_layer_sparsity_map_and_targets(family):
    model, adapter, x = setup(family)
    before = snapshot(adapter, model)
    result = apply_pruning(model, adapter, magnitude(sparsity={0: 0.5, 2: 0.25}, targets=("ffn",)), None)
    assert set(result.zeroed) == {0, 2}
    for i, layer in enumerate(adapter.layers(model)):
        s = {0: 0.5, 2: 0.25}.get(i, 0.0)
        for key, lin in targets_of(adapter, layer).items():
            is_ffn = key in adapter.mlp_linears(layer)
            if s and is_ffn:
                assert int((lin.weight == 0).sum()) == round(s * lin.weight.numel()), (i, key)
            else:
                assert torch.equal(lin.weight, before[i][key]), (i, key)  # other layers, attention untouched


def test_layer_ids_map_plan_indices_to_present_layers():
    model, adapter, _ = setup("llama")
    before = snapshot(adapter, model)
    # as if layer 0 had been dropped: positions 0..3 are plan layers 1..4
    result = apply_pruning(model, adapter, magnitude(sparsity={2: 0.5}), None, layer_ids=[1, 2, 3, 4])
    assert set(result.zeroed) == {2}
    layers = adapter.layers(model)
    assert torch.equal(layers[0].mlp.up_proj.weight, before[0]["up"])
    assert int((layers[1].mlp.up_proj.weight == 0).sum()) == layers[1].mlp.up_proj.weight.numel() // 2
    with pytest.raises(ConfigError, match=r"prune.sparsity.0"):
        apply_pruning(model, adapter, magnitude(sparsity={0: 0.5}), None, layer_ids=[1, 2, 3, 4])


# --------------------------------------------------------------------------------------
# Wanda calibration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("calibration", [None, []])
def test_wanda_without_calibration_is_a_clear_error(calibration):
    model, adapter, x = setup("llava-llama")
    ref = logits(model, x)
    with pytest.raises(ConfigError) as err:
        apply_pruning(model, adapter, wanda(sparsity=0.3), calibration)
    assert isinstance(err.value, SearchSkipError)
    assert "prune.calibration" in str(err.value) and "wanda" in str(err.value)
    assert torch.equal(logits(model, x), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_norms_ignore_padding_positions(family):
    model, adapter, x = setup(family)
    assert (x["attention_mask"] == 0).any()
    other = dict(x, input_ids=torch.where(x["attention_mask"] == 0, torch.full_like(x["input_ids"], 7), x["input_ids"]))
    layers = adapter.layers(model)
    linears = {(i, k): lin for i, layer in enumerate(layers) for k, lin in targets_of(adapter, layer).items()}
    a = input_norms(model, linears, [x])
    b = input_norms(model, linears, [other])
    # sanity: the pad positions' activations do differ, so counting them would change the norms
    seen = []
    h = adapter.mlp_linears(layers[1])[adapter.mlp_out_key].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).clone()))
    with torch.no_grad():
        model(**x)
        model(**other)
    h.remove()
    pad = (x["attention_mask"] == 0).reshape(-1)
    assert not torch.allclose(seen[0][pad], seen[1][pad])
    assert torch.allclose(seen[0][~pad], seen[1][~pad], atol=1e-5)
    for key in linears:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # and the norms are those of the non-pad tokens
    mine = my_norms(model, adapter, x)
    for key in linears:
        assert torch.allclose(a[key], mine[key], atol=1e-5), key


def test_sequential_wanda_measures_each_layer_after_the_previous_is_pruned():
    model, adapter, x = setup("llava-llama")
    seq = copy.deepcopy(model)
    apply_pruning(seq, adapter, wanda(sparsity={0: 0.5, 1: 0.5}), [x], sequential=True)
    # by hand: prune layer 0, then measure and prune layer 1 on that model
    step = copy.deepcopy(model)
    apply_pruning(step, adapter, wanda(sparsity={0: 0.5}), [x])
    apply_pruning(step, adapter, wanda(sparsity={1: 0.5}), [x])
    one_pass = copy.deepcopy(model)
    apply_pruning(one_pass, adapter, wanda(sparsity={0: 0.5, 1: 0.5}), [x])
    for a, b in zip(seq.parameters(), step.parameters()):
        assert torch.equal(a, b)
    # the one-pass variant (layer 1 measured on the dense model) chooses differently
    assert any(not torch.equal(a, b) for a, b in zip(seq.parameters(), one_pass.parameters()))


# --------------------------------------------------------------------------------------
# FFN channels
# --------------------------------------------------------------------------------------


def masked_copy(model, adapter, result):
    """The original model with the removed FFN channels zeroed in down / fc2 (same shapes)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(adapter.layers(masked)):
            if i not in result.kept_channels:
                continue
            down = adapter.mlp_linears(layer)[adapter.mlp_out_key]
            drop = torch.ones(down.in_features, dtype=torch.bool)
            drop[result.kept_channels[i]] = False
            down.weight[:, drop] = 0
    return masked


def forward_flops(model, inputs) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


FFN_OVERRIDES = {"llama": {"mlp_bias": True}, "llava-llama": {"mlp_bias": True}}  # cover biased gate/up/down


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ffn_channels_shrink_and_equal_masking(family, method):
    model, adapter, x = setup(family, **FFN_OVERRIDES.get(family, {}))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # transformers initialises biases to 0; make them matter
        for layer in adapter.layers(model):
            for lin in adapter.mlp_linears(layer).values():
                if lin.bias is not None:
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.5)
    original = copy.deepcopy(model)
    ref_flops = forward_flops(model, x)
    hidden = adapter.mlp_linears(adapter.layers(model)[0])[adapter.mlp_out_key].out_features
    spec = (wanda if method == "wanda" else magnitude)(structure="ffn_channels", sparsity=0.25, targets=("ffn",))
    result = apply_pruning(model, adapter, spec, [x])
    for i, layer in enumerate(adapter.layers(model)):
        mlp = adapter.mlp_linears(layer)
        assert result.channels_removed[i] == 16
        assert adapter.ffn_channels(layer) == 48
        for key in adapter.mlp_in_keys:
            assert mlp[key].weight.shape == (48, hidden)
            assert mlp[key].bias is None or mlp[key].bias.shape == (48,)
        assert mlp[adapter.mlp_out_key].weight.shape == (hidden, 48)
    if family in FFN_OVERRIDES:
        assert adapter.mlp_linears(adapter.layers(model)[0])["up"].bias is not None

    masked = masked_copy(original, adapter, result)
    assert torch.allclose(logits(model, x), logits(masked, x), atol=1e-5)
    assert not torch.allclose(logits(original, x), logits(masked, x), atol=1e-3)  # the channels mattered
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with torch.no_grad():
        assert torch.equal(model.generate(**x, **gen), masked.generate(**x, **gen))

    # dense FLOPs fall by exactly the removed channels' matmuls
    tokens = x["attention_mask"].numel()
    n_mm = len(adapter.mlp_in_keys) + 1
    assert forward_flops(model, x) == ref_flops - 4 * 16 * 2 * tokens * hidden * n_mm


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("family", ["llama", "opt", "llava-qwen2", "llava-opt"])
def test_ffn_channels_remove_the_lowest_scoring(family, method):
    model, adapter, x = setup(family)
    out_key = adapter.mlp_out_key
    norms = my_norms(model, adapter, x, keys={out_key}) if method == "wanda" else None
    expected = {}
    for i, layer in enumerate(adapter.layers(model)):
        mlp = adapter.mlp_linears(layer)
        col = mlp[out_key].weight.norm(dim=0)
        if norms is None:
            rows = torch.cat([mlp[k].weight for k in adapter.mlp_in_keys], dim=1).norm(dim=1)
            score = rows * col
        else:
            score = norms[(i, out_key)] * col
        expected[i] = set(score.argsort()[:16].tolist())
    spec = (wanda if method == "wanda" else magnitude)(structure="ffn_channels", sparsity=0.25, targets=("ffn",))
    result = apply_pruning(model, adapter, spec, [x])
    for i in expected:
        removed = set(range(64)) - set(result.kept_channels[i].tolist())
        assert removed == expected[i], i


def test_ffn_channels_keep_at_least_one_and_refuse_attn():
    model, adapter, x = setup("llama")
    result = apply_pruning(model, adapter, magnitude(structure="ffn_channels", sparsity=0.999, targets=("ffn",)), None)
    assert all(adapter.ffn_channels(layer) == 1 for layer in adapter.layers(model))
    assert torch.isfinite(logits(model, x)).all()
    result.undo()
    assert all(adapter.ffn_channels(layer) == 64 for layer in adapter.layers(model))
    with pytest.raises(ConfigError, match="prune.targets"):
        apply_pruning(model, adapter, magnitude(structure="ffn_channels", sparsity=0.5, targets=("attn", "ffn")), None)


@pytest.mark.parametrize("family", ["llama", "llava-opt"])
def test_unstructured_keeps_dense_flops(family):
    model, adapter, x = setup(family)
    ref = forward_flops(model, x)
    result = apply_pruning(model, adapter, magnitude(sparsity=0.5), None)
    assert forward_flops(model, x) == ref
    assert result.total_zeroed > 0


# --------------------------------------------------------------------------------------
# Undo
# --------------------------------------------------------------------------------------

SPECS = {
    "magnitude-unstructured": lambda: magnitude(sparsity=0.4),
    "wanda-unstructured": lambda: wanda(sparsity={1: 0.4, 3: 0.2}),
    "wanda-2:4": lambda: wanda(structure="2:4", sparsity=0.5),
    "magnitude-ffn_channels": lambda: magnitude(structure="ffn_channels", sparsity=0.5, targets=("ffn",)),
    "wanda-ffn_channels-seq": lambda: wanda(structure="ffn_channels", sparsity=0.5, targets=("ffn",)),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("family", FAMILIES)
def test_undo_restores_bit_identical_logits(family, name):
    model, adapter, x = setup(family)
    ref = logits(model, x)
    modules = [dict(targets_of(adapter, layer)) for layer in adapter.layers(model)]
    result = apply_pruning(model, adapter, SPECS[name](), [x], sequential=name.endswith("-seq"))
    assert not torch.allclose(logits(model, x), ref, atol=1e-4)
    result.undo()
    assert torch.equal(logits(model, x), ref)
    for layer, before in zip(adapter.layers(model), modules):
        now = targets_of(adapter, layer)
        # the original modules are back (a fused linear's slices: the fused module)
        assert all(source_of(now[k]) is source_of(before[k]) for k in before)
    result()  # a second undo does nothing
    assert torch.equal(logits(model, x), ref)


def test_undo_saves_only_changed_weights():
    model, adapter, _ = setup("llama")
    result = apply_pruning(model, adapter, magnitude(sparsity={2: 0.5}, targets=("attn",)), None)
    assert len(result._restore) == 4  # q, k, v, o of layer 2
    result = apply_pruning(model, adapter, magnitude(structure="ffn_channels", sparsity={1: 0.5}, targets=("ffn",)), None)
    assert len(result._restore) == 1 and set(result.kept_channels) == {1}


def test_failure_midway_leaves_the_model_unchanged(monkeypatch):
    import searchskip.ops.prune as prune

    model, adapter, x = setup("llama")
    ref = logits(model, x)
    calls = []
    real = prune.unstructured_mask

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("boom")
        return real(*a, **kw)

    monkeypatch.setattr(prune, "unstructured_mask", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        apply_pruning(model, adapter, magnitude(sparsity=0.5), None)
    assert torch.equal(logits(model, x), ref)


# --------------------------------------------------------------------------------------
# Calibration batches from a VQA dataset (the embedded tiny LLaVA and its processor)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded():
    from searchskip.config.job import ModelSpec
    from searchskip.models import load_model

    return load_model(ModelSpec())


@pytest.fixture(scope="module")
def vqa_rows():
    import datasets
    from PIL import Image

    n = 12
    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                  "question": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "question_id": [str(i) for i in range(n)],
        "image": [Image.new("RGB", (40, 40), (20 * i, 255 - 20 * i, 90)) for i in range(n)],
        # questions of different lengths, so the batches need padding
        "question": ["what color is the shape?" if i % 3 else "is there a big blue circle in this picture?" for i in range(n)],
    }, features=features)


def test_calibration_batches_seeded_left_padded_multimodal(loaded, vqa_rows):
    from searchskip.ops.calibration import calibration_batches, calibration_indices

    batches = calibration_batches(loaded, vqa_rows, samples=5, seed=3, batch_size=2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    for b in batches:
        assert set(b) >= {"input_ids", "attention_mask", "pixel_values"}
        assert all(v.device.type == torch.device(loaded.device).type for v in b.values())
        assert b["pixel_values"].dtype == loaded.model.dtype
        image_id = loaded.model.config.image_token_id
        assert ((b["input_ids"] == image_id).sum(1) > 0).all()
    padded = [b for b in batches if (b["attention_mask"] == 0).any()]
    assert padded
    for b in padded:  # left padding: the last position is always a real token
        assert (b["attention_mask"][:, -1] == 1).all()
    idx = calibration_indices(len(vqa_rows), 5, 3)
    assert idx == calibration_indices(len(vqa_rows), 5, 3) and len(set(idx)) == 5 and idx == sorted(idx)
    assert idx != calibration_indices(len(vqa_rows), 5, 4)
    again = calibration_batches(loaded, vqa_rows, samples=5, seed=3, batch_size=2)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
               for a, b in zip(batches, again))
    # the prompts are the template around the chosen questions
    text = loaded.processor.batch_decode(batches[0]["input_ids"], skip_special_tokens=True)
    tok = loaded.processor.tokenizer
    chosen = [tok.decode(tok(vqa_rows[i]["question"])["input_ids"], skip_special_tokens=True) for i in idx[:2]]
    assert all(q in t for q, t in zip(chosen, text)), (chosen, text)
    with pytest.raises(DataError, match="prune.calibration.samples"):
        calibration_batches(loaded, vqa_rows, samples=13, seed=0)


def test_wanda_on_the_embedded_llava_with_calibration_batches(loaded, vqa_rows):
    from searchskip.ops.calibration import calibration_batches

    model = loaded.model
    adapter = get_adapter(model)
    batches = calibration_batches(loaded, vqa_rows, samples=6, seed=0, batch_size=4)
    probe = batches[0]
    ref = logits(model, probe)
    spec = wanda(sparsity=0.5)
    result = apply_pruning(model, adapter, spec, batches)
    try:
        layer = adapter.layers(model)[0]
        q = adapter.attn_linears(layer)["q"].weight
        assert ((q == 0).sum(1) == q.shape[1] // 2).all()
        assert not torch.allclose(logits(model, probe), ref, atol=1e-4)
    finally:
        result.undo()
    assert torch.equal(logits(model, probe), ref)
