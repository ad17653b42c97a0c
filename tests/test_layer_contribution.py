"""ShortV's Layer Contribution (LC) and the plan that freezes the image tokens of the least
contributing layers (searchskip.search.baselines.layer_contribution)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from searchskip.apply import applied_plan
from searchskip.arch import get_adapter
from searchskip.flops import Budget, Workload, count_flops
from searchskip.plan import SCOPE_VISUAL, LayerOp, Plan
from searchskip.search.baselines import (
    BASELINES,
    LC_OPS,
    labelled_layer_contribution_plans,
    layer_contribution,
    layer_contribution_plan,
)
from searchskip.testing import IMAGE_TOKEN_ID, tiny_inputs, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _frozen_by_hand(model, inputs: dict, layer: int) -> torch.Tensor:
    """The model's last-position logits with layer ``layer`` leaving the image positions' hidden
    states unchanged (computed in full, update kept only for the other positions)."""
    ref = copy.deepcopy(model)
    layers = get_adapter(ref).layers(ref)
    image = (inputs["input_ids"] == IMAGE_TOKEN_ID).unsqueeze(-1)
    original = layers[layer].forward

    def forward(h, *args, **kwargs):
        out = original(h, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return torch.where(image, h, out)

    layers[layer].forward = forward
    with torch.no_grad():
        return ref(**inputs, use_cache=False).logits[:, -1].double()


@pytest.mark.parametrize("family", ["llava-llama", "llava-qwen2"])
def test_lc_is_the_kl_of_the_answer_distribution_with_one_layer_frozen(family):
    model = tiny_model(family, num_layers=4)
    inputs = tiny_inputs(model, batch=3)
    lc = layer_contribution(model, [inputs])
    with torch.no_grad():
        dense = model(**inputs, use_cache=False).logits[:, -1].double()
    p = torch.log_softmax(dense, -1)
    for i in range(4):
        q = torch.log_softmax(_frozen_by_hand(model, inputs, i), -1)
        want = float((p.exp() * (p - q)).sum(-1).mean())
        assert lc[i] == pytest.approx(want, rel=1e-3, abs=1e-6), i
    assert all(v >= -1e-7 for v in lc) and max(lc) > 0


def test_lc_weighs_every_sample_the_same_and_leaves_the_model_as_it_was():
    model = tiny_model("llava-llama", num_layers=3)
    a, b = tiny_inputs(model, batch=2, seed=0), tiny_inputs(model, batch=1, seed=1)
    with torch.no_grad():
        before = model(**a, use_cache=False).logits
    model.train()
    together = layer_contribution(model, [a, b])
    alone = [layer_contribution(model, [a]), layer_contribution(model, [b])]
    assert together == pytest.approx([(2 * x + y) / 3 for x, y in zip(*alone)], rel=1e-6, abs=1e-9)
    assert model.training and applied_plan(model) is None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**a, use_cache=False).logits, before)


def test_lc_of_a_text_only_model_is_zero():
    """No image tokens: freezing them changes nothing."""
    model = tiny_model("llama", num_layers=3)
    assert layer_contribution(model, [tiny_inputs(model)]) == [0.0, 0.0, 0.0]


def test_lc_refuses_right_padding_and_no_sample():
    model = tiny_model("llava-llama", num_layers=2)
    x = tiny_inputs(model, batch=2)
    right = dict(x, attention_mask=torch.flip(x["attention_mask"], dims=[1]))
    with pytest.raises(ValueError, match="padded on the right"):
        layer_contribution(model, [right])
    with pytest.raises(ValueError, match="no sample"):
        layer_contribution(model, [])


ARCH = tiny_model("llava-llama", num_layers=8).config
WORKLOAD = Workload(prompt_tokens=12, generated_tokens=3)
BASE = count_flops(ARCH, None, WORKLOAD)
LC = [0.30, 0.05, 0.10, 0.02, 0.20, 0.08, 0.15, 0.25]
ORDER = [3, 1, 5, 2, 6, 4, 7, 0]


def _fits(budget: Budget, plan: Plan) -> bool:
    return budget.allows(count_flops(ARCH, plan, WORKLOAD), BASE)


@pytest.mark.parametrize("op", LC_OPS)
@pytest.mark.parametrize("ratio", [0.9, 0.8, 0.7])
def test_lc_plan_freezes_the_least_contributing_layers_until_the_budget_fits(op, ratio):
    budget = Budget(ratio=ratio)
    plan = layer_contribution_plan(LC, ARCH, WORKLOAD, budget, op=op)
    if plan is None:  # even every layer's image tokens frozen misses it
        every = Plan(layers={i: LayerOp(op, SCOPE_VISUAL) for i in range(8)})
        assert not _fits(budget, every)
        return
    k = len(plan.layers)
    assert sorted(i for i, _ in plan.layers) == sorted(ORDER[:k])
    assert {plan.op_for(i) for i, _ in plan.layers} == {LayerOp(op, SCOPE_VISUAL)}
    assert _fits(budget, plan)
    assert not _fits(budget, Plan(layers={i: LayerOp(op, SCOPE_VISUAL) for i in ORDER[:k - 1]}))


def test_lc_plans_labelled_empty_none_and_bad_arguments():
    assert layer_contribution_plan(LC, ARCH, WORKLOAD, Budget(ratio=1.0)) == Plan(scope=SCOPE_VISUAL)
    assert layer_contribution_plan(LC, ARCH, WORKLOAD, Budget(ratio=0.05)) is None
    labelled = labelled_layer_contribution_plans(LC, ARCH, WORKLOAD, Budget(ratio=0.9))
    assert labelled and all(label.startswith("layer_contribution:") for label, _ in labelled)
    with pytest.raises(ValueError, match="op must be"):
        layer_contribution_plan(LC, ARCH, WORKLOAD, Budget(ratio=0.9), op="parallel_attn_ffn")
    with pytest.raises(ValueError, match="8 decoder layers"):
        layer_contribution_plan(LC[:7], ARCH, WORKLOAD, Budget(ratio=0.9))
    with pytest.raises(ValueError, match="finite"):
        layer_contribution_plan(LC[:7] + [math.nan], ARCH, WORKLOAD, Budget(ratio=0.9))
    assert "layer_contribution" in BASELINES
