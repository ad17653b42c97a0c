"""One-shot baselines: ShortGPT's Block Influence, the BI plan under a budget, the paper's interval plans."""

from __future__ import annotations

import math

import pytest
import torch

from searchskip.flops import Budget, Workload, count_flops
from searchskip.plan import LayerOp, Plan
from searchskip.search.baselines import (
    best_fitting,
    block_influence,
    block_influence_plan,
    default_start_layers,
    greedy_sublayer_removal,
    paper_interval_plans,
)
from searchskip.testing import tiny_inputs, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _masked_mean_cos(h_in: torch.Tensor, h_out: torch.Tensor, mask: torch.Tensor | None) -> float:
    """1 - mean cos over the tokens of ``mask`` (all tokens when None), computed by hand."""
    a, b = h_in.double(), h_out.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    picked = cos.reshape(-1) if mask is None else cos[mask.bool()]
    return 1.0 - float(picked.mean())


# --------------------------------------------------------------------------------------
# block_influence
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "llava-llama", "opt"])
def test_bi_of_a_middle_layer_is_one_minus_the_mean_cosine_of_its_hidden_states(family):
    model = tiny_model(family, num_layers=4)
    x = tiny_inputs(model, batch=3)
    assert (x["attention_mask"] == 0).any()  # the check below really has padding to ignore
    bi = block_influence(model, [x])
    assert len(bi) == 4
    with torch.no_grad():
        hs = model(**x, output_hidden_states=True).hidden_states
    for k in (1, 2):  # hidden_states[k] / [k + 1] are layer k's input / output for every k < last
        expected = _masked_mean_cos(hs[k], hs[k + 1], x["attention_mask"])
        assert bi[k] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # padding matters to the number: the mean over every token is another one (or NaN, where
        # the fully masked pad rows' states are NaN)
        assert not math.isclose(_masked_mean_cos(hs[k], hs[k + 1], None), bi[k], rel_tol=1e-5, abs_tol=1e-6)


def test_bi_of_the_last_layer_uses_its_output_not_the_final_norm():
    model = tiny_model("llama", num_layers=3)
    x = tiny_inputs(model, batch=2)
    with torch.no_grad():  # a per-channel norm weight (the default all-ones RMSNorm would keep every cosine)
        model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, model.model.norm.weight.numel()))
    seen = {}
    handle = model.model.norm.register_forward_hook(lambda m, args, out: seen.update(pre=args[0], post=out))
    try:
        with torch.no_grad():
            hs = model(**x, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    bi = block_influence(model, [x])
    assert bi[2] == pytest.approx(_masked_mean_cos(hs[2], seen["pre"], x["attention_mask"]), rel=1e-5, abs=1e-6)
    assert abs(bi[2] - _masked_mean_cos(hs[2], seen["post"], x["attention_mask"])) > 1e-4


@pytest.mark.parametrize("family", ["llama", "llava-qwen2"])
def test_padding_token_ids_do_not_change_bi(family):
    model = tiny_model(family, num_layers=3)
    x = tiny_inputs(model, batch=3)
    pads = x["attention_mask"] == 0
    assert pads.any()
    bi = block_influence(model, [x])
    other = dict(x, input_ids=x["input_ids"].clone())
    other["input_ids"][pads] = 7  # a real token id at every padded position
    assert not torch.equal(other["input_ids"], x["input_ids"])
    again = block_influence(model, [other])
    assert again == pytest.approx(bi, rel=1e-5, abs=1e-6)
    # ... whereas unmasking those positions does change it
    unmasked = dict(other, attention_mask=torch.ones_like(x["attention_mask"]))
    assert block_influence(model, [unmasked]) != pytest.approx(bi, rel=1e-5, abs=1e-6)


def test_bi_is_a_mean_over_tokens_of_all_batches_however_they_are_batched():
    model = tiny_model("llama", num_layers=3)
    x = tiny_inputs(model, batch=4, seed=1)  # the last row is padded, so rows have unequal token counts
    whole = block_influence(model, [x])
    split = block_influence(model, [{k: v[:3] for k, v in x.items()}, {k: v[3:] for k, v in x.items()}])
    assert split == pytest.approx(whole, rel=1e-5, abs=1e-6)
    # and not the mean of per-batch means (which weighs the short padded row more)
    per_batch = [block_influence(model, [{k: v[:3] for k, v in x.items()}]),
                 block_influence(model, [{k: v[3:] for k, v in x.items()}])]
    mean_of_means = [(a + b) / 2 for a, b in zip(*per_batch)]
    assert mean_of_means != pytest.approx(whole, rel=1e-5, abs=1e-6)


def test_bi_runs_in_eval_mode_and_restores_the_mode():
    model = tiny_model("opt", num_layers=3)  # dropout 0.1: training mode would make BI random
    x = tiny_inputs(model)
    reference = block_influence(model, [x])
    model.train()
    assert block_influence(model, [x]) == pytest.approx(reference, rel=1e-6, abs=1e-7)
    assert model.training
    assert not any(layer._forward_hooks for layer in model.model.decoder.layers)  # hooks removed


def test_bi_without_any_token_raises():
    model = tiny_model("llama", num_layers=2)
    x = tiny_inputs(model)
    with pytest.raises(ValueError, match="no non-padding token"):
        block_influence(model, [dict(x, attention_mask=torch.zeros_like(x["attention_mask"]))])
    with pytest.raises(ValueError, match="no non-padding token"):
        block_influence(model, [])


# --------------------------------------------------------------------------------------
# block_influence_plan
# --------------------------------------------------------------------------------------

ARCH = tiny_model("llava-llama", num_layers=8).config
WORKLOAD = Workload(prompt_tokens=12, generated_tokens=3)
BASE = count_flops(ARCH, None, WORKLOAD)


def _ratio(plan: Plan) -> float:
    return count_flops(ARCH, plan, WORKLOAD).ratio(BASE)


def _skipped(plan: Plan) -> list[int]:
    return [i for i, _ in plan.layers]


BI = [0.05, 0.30, 0.10, 0.02, 0.20, 0.08, 0.15, 0.25]  # layer 0 is the least influential on purpose
ORDER_NOT_0 = [3, 5, 2, 6, 4, 7, 1]


@pytest.mark.parametrize("ratio", [0.95, 0.85, 0.75, 0.6, 0.5])
def test_bi_plan_fits_the_budget_and_is_minimal(ratio):
    budget = Budget(ratio=ratio)
    plan = block_influence_plan(BI, ARCH, WORKLOAD, budget)
    assert plan is not None and not plan.is_empty
    k = len(plan.layers)
    assert sorted(_skipped(plan)) == sorted(ORDER_NOT_0[:k])  # the k least influential, layer 0 aside
    assert all(op == LayerOp("skip_block") for _, op in plan.layers)
    assert budget.allows(count_flops(ARCH, plan, WORKLOAD), BASE)
    assert _ratio(plan) <= ratio
    fewer = Plan(layers={i: "skip_block" for i in ORDER_NOT_0[:k - 1]})
    assert not budget.allows(count_flops(ARCH, fewer, WORKLOAD), BASE)


def test_bi_plan_keep_first():
    budget = Budget(ratio=0.75)
    kept = block_influence_plan(BI, ARCH, WORKLOAD, budget)
    assert kept is not None and 0 not in _skipped(kept)
    free = block_influence_plan(BI, ARCH, WORKLOAD, budget, keep_first=False)
    # with every layer allowed, the order is plain increasing BI: layer 3 (0.02), then layer 0 (0.05), ...
    assert free is not None and 0 in _skipped(free)
    assert sorted(_skipped(free)) == sorted([3, 0, 5, 2, 6, 4, 7, 1][:len(free.layers)])
    assert len(free.layers) == len(kept.layers)  # equal layers, equal FLOPs: same count either way


def test_bi_plan_none_when_impossible_and_empty_when_the_model_fits():
    impossible = Budget(ratio=0.05)  # the vision tower, embeddings and lm_head alone cost more
    assert block_influence_plan(BI, ARCH, WORKLOAD, impossible) is None
    everything_but_0 = Plan(layers={i: "skip_block" for i in range(1, 8)})
    just_past = Budget(ratio=_ratio(everything_but_0) * (1 - 1e-4))
    assert block_influence_plan(BI, ARCH, WORKLOAD, just_past) is None
    assert block_influence_plan(BI, ARCH, WORKLOAD, just_past, keep_first=False) is not None
    exact = Budget(ratio=_ratio(everything_but_0))
    assert block_influence_plan(BI, ARCH, WORKLOAD, exact) == everything_but_0
    assert block_influence_plan(BI, ARCH, WORKLOAD, Budget(ratio=1.0)) == Plan()
    absolute = Budget(gflops=count_flops(ARCH, None, WORKLOAD).total() / 1e9 * 2)
    assert block_influence_plan(BI, ARCH, WORKLOAD, absolute) == Plan()


def test_bi_plan_sublayer_ops_and_bad_arguments():
    budget = Budget(ratio=0.85)
    attn = block_influence_plan(BI, ARCH, WORKLOAD, budget, op="skip_ffn")
    assert attn is not None and {op.op for _, op in attn.layers} == {"skip_ffn"}
    assert budget.allows(count_flops(ARCH, attn, WORKLOAD), BASE)
    # one sublayer removes less than a block, so at least as many layers are needed
    assert len(attn.layers) >= len(block_influence_plan(BI, ARCH, WORKLOAD, budget).layers)
    with pytest.raises(ValueError, match="8 decoder layers"):
        block_influence_plan(BI[:7], ARCH, WORKLOAD, budget)
    with pytest.raises(ValueError, match="finite"):
        block_influence_plan(BI[:7] + [math.nan], ARCH, WORKLOAD, budget)
    with pytest.raises(ValueError, match="op must be"):
        block_influence_plan(BI, ARCH, WORKLOAD, budget, op="parallel_blocks")


# --------------------------------------------------------------------------------------
# The paper's interval plans
# --------------------------------------------------------------------------------------


def test_paper_interval_plans_match_from_pattern_without_empty_or_duplicate_plans():
    n = 8
    assert default_start_layers(n) == (0, 2, 4, 6)
    plans = paper_interval_plans(n)
    assert plans and all(not p.is_empty for p in plans)
    assert len(set(plans)) == len(plans)
    expected = []
    for mode in ("skip_block", "skip_attn", "skip_ffn"):
        for interval in (2, 3, 4):
            for start in (0, 2, 4, 6):
                layers = {i: mode for i in range(start + 1, n) if i % interval == 0}  # by hand
                plan = Plan.from_pattern(interval, start, n, mode, "all", n)
                assert plan == Plan(layers=layers)
                if layers and plan not in expected:
                    expected.append(plan)
    assert plans == expected
    # the definition of the paper's plans: e.g. skip_block every 2 layers after layer 0
    assert Plan(layers={2: "skip_block", 4: "skip_block", 6: "skip_block"}) in plans
    assert Plan(layers={6: "skip_ffn"}) in plans and Plan(layers={7: "skip_ffn"}) not in plans


def test_paper_interval_plans_dedupe_skip_empty_and_take_scope():
    plans = paper_interval_plans(8, modes=("skip_attn",), intervals=(2, 4), start_layers=(0, 1, 6))
    # (2, 0) and (2, 1) are both {2, 4, 6}; (4, 0) == (4, 1) == {4}; (*, 6) is empty
    assert [_skipped(p) for p in plans] == [[2, 4, 6], [4]]
    scoped = paper_interval_plans(8, modes=("skip_ffn",), intervals=(3,), scope="generated")
    assert scoped and all(p.scope == "generated" for p in scoped)
    assert paper_interval_plans(8, modes=("skip_block",), intervals=(2,), start_layers=(0,), end_layer=5) == [
        Plan(layers={2: "skip_block", 4: "skip_block"})]


def test_best_fitting_keeps_the_plans_that_fit_most_expensive_first():
    plans = paper_interval_plans(8)
    budget = Budget(ratio=0.8)
    kept = best_fitting(plans, ARCH, WORKLOAD, budget)
    assert kept and len(kept) < len(plans)
    for plan in plans:
        assert (plan in kept) == budget.allows(count_flops(ARCH, plan, WORKLOAD), BASE)
    costs = [_ratio(p) for p in kept]
    assert costs == sorted(costs, reverse=True)
    assert best_fitting(plans + plans[:3], ARCH, WORKLOAD, budget) == kept


# --------------------------------------------------------------------------------------
# The embedded tiny LLaVA on validation samples
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_batches():
    from searchskip.config.job import DataSpec, ModelSpec
    from searchskip.data.splits import load_split
    from searchskip.models import load_model
    from searchskip.ops.calibration import calibration_batches

    loaded = load_model(ModelSpec())
    rows = load_split(DataSpec(), "validation", check_disjoint=False)
    return loaded, rows, calibration_batches(loaded, rows, samples=16, seed=0, batch_size=16)


def test_bi_on_the_embedded_model(embedded_batches):
    loaded, rows, batches = embedded_batches
    assert sum(int(b["input_ids"].shape[0]) for b in batches) == 16
    bi = block_influence(loaded.model, batches)
    assert len(bi) == 8
    assert all(math.isfinite(v) and 0.0 <= v <= 2.0 for v in bi)
    # measured (seed 0): ~[0.406, 0.029, 0.036, 0.013, 0.012, 0.009, 0.008, 0.042] -- layer 0 by far the highest
    # token-weighted mean over all batches: the batch size does not change it
    from searchskip.ops.calibration import calibration_batches

    small = calibration_batches(loaded, rows, samples=16, seed=0, batch_size=5)
    assert len(small) == 4
    assert block_influence(loaded.model, small) == pytest.approx(bi, rel=1e-4, abs=1e-5)
    plan = block_influence_plan(bi, loaded.model.config, Workload(prompt_tokens=20, generated_tokens=2),
                                Budget(ratio=0.8))
    assert plan is not None and 0 not in _skipped(plan)


# --------------------------------------------------------------------------------------
# greedy_sublayer_removal (FinerCut-style)
# --------------------------------------------------------------------------------------


def _removed(plan: Plan) -> set[tuple[int, str]]:
    parts = {"skip_attn": ("attn",), "skip_ffn": ("ffn",), "skip_block": ("attn", "ffn")}
    return {(i, part) for i, op in plan.layers for part in parts[op.op]}


HARM = {(i, part): 10 * (8 - i) + (5 if part == "attn" else 0) for i in range(8) for part in ("attn", "ffn")}
"""A made-up harm per sublayer (no ties): later layers and FFNs hurt less -- except layer 5's FFN, the worst."""
HARM[(5, "ffn")] = 100


@pytest.mark.parametrize("ratio", [0.8, 0.5, 0.35])
def test_greedy_removes_the_least_harmful_sublayer_each_step_until_the_budget_fits(ratio):
    calls = []

    def score(plan: Plan) -> float:
        calls.append(plan)
        return -sum(HARM[r] for r in _removed(plan))

    budget = Budget(ratio=ratio)
    steps = greedy_sublayer_removal(score, ARCH, WORKLOAD, budget)
    assert steps and _ratio(steps[-1].plan) <= ratio < _ratio(steps[-2].plan if len(steps) > 1 else Plan())
    removed: set[tuple[int, str]] = set()
    for k, step in enumerate(steps):
        left = [s for s in HARM if s not in removed]
        assert step.removed == min(left, key=HARM.get)  # the least harmful one left
        removed.add(step.removed)
        assert _removed(step.plan) == removed and step.score == -sum(HARM[r] for r in removed)
        assert step.flops_ratio == pytest.approx(_ratio(step.plan))
        assert step.evaluations == sum(16 - j for j in range(k + 1))  # every remaining sublayer tried once
    assert len(calls) == steps[-1].evaluations
    assert (5, "ffn") not in removed or ratio == 0.35
    both = [i for i, op in steps[-1].plan.layers if op.op == "skip_block"]
    assert all((i, "attn") in removed and (i, "ffn") in removed for i in both)


def test_greedy_respects_layers_and_scope_and_stops_when_nothing_is_left():
    steps = greedy_sublayer_removal(lambda plan: 0.0, ARCH, WORKLOAD, Budget(ratio=0.01), layers=[2, 3],
                                    scope="generated")
    assert len(steps) == 4 and _ratio(steps[-1].plan) > 0.01  # all four sublayers gone, still too big
    assert {i for i, _ in steps[-1].plan.layers} == {2, 3} and steps[-1].plan.scope == "generated"
    assert greedy_sublayer_removal(lambda plan: 0.0, ARCH, WORKLOAD, Budget(ratio=1.0)) == []
