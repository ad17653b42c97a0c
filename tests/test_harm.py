"""The measured harm of single changes (searchskip.search.harm) and the budget fit that ranks by it."""

from __future__ import annotations

import pytest

from searchskip.eval.shift import first_token_kl
from searchskip.flops import Budget, Workload
from searchskip.plan import LayerOp, Plan
from searchskip.search.budget_fit import BudgetFit
from searchskip.search.harm import harm_key, measure_harm, single_change_plans
from searchskip.search.objective import ObjectiveContext
from searchskip.search.space import Space
from searchskip.testing import tiny_inputs, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = {"version": 1, "layers": {"from": 0, "to": -1}, "ops": ["keep", "skip_block", "skip_block@visual"],
         "scope": "all", "visual_tokens": {"keep": [1.0, 0.5], "after_layer": [1, 2], "rank": "uniform"}}


def test_single_changes_leave_out_what_gives_the_reference_plan():
    space = Space.from_dict(SPACE)
    plans = single_change_plans(space, 3)
    assert plans[("layer_01.op", harm_key("skip_block@visual"))] == Plan(layers={1: LayerOp("skip_block", "visual")})
    assert plans[("visual_tokens.keep", harm_key(0.5))].visual_tokens.keep == 0.5
    # after_layer alone (keep 1.0 drops nothing) gives the reference plan: no measurement
    assert not any(name == "visual_tokens.after_layer" for name, _ in plans)
    assert len(plans) == 3 * 2 + 1


def test_measured_harm_is_the_first_token_kl_of_each_single_change():
    model = tiny_model("llava-llama", num_layers=3)
    batches = [tiny_inputs(model, batch=3, seed=0)]
    space = Space.from_dict(SPACE)
    harm = measure_harm(space, 3, model, batches)
    assert set(harm) == set(space.grid(3))
    assert harm["layer_00.op"][harm_key("keep")] == 0.0 and harm["visual_tokens.after_layer"][harm_key(2)] == 0.0
    want = first_token_kl(model, batches, [Plan(layers={2: "skip_block"}), Plan(layers={2: LayerOp("skip_block", "visual")})])
    assert harm["layer_02.op"][harm_key("skip_block")] == pytest.approx(want[0])
    assert harm["layer_02.op"][harm_key("skip_block@visual")] == pytest.approx(want[1])
    assert all(v >= 0 for values in harm.values() for v in values.values())


def _fit(harm) -> BudgetFit:
    space = Space.from_dict({k: v for k, v in SPACE.items() if k != "visual_tokens"})
    ctx = ObjectiveContext(space=space, num_layers=4, arch=tiny_model("llava-llama", num_layers=4).config,
                           workload=Workload(prompt_tokens=12, generated_tokens=2), budget=Budget(ratio=0.85))
    return BudgetFit(ctx, harm=harm)


def test_the_fit_gives_up_the_least_harmful_changes_first():
    """The same all-keep proposal, fitted onto 85% of the FLOPs: with image-token freezes measured as
    nearly harmless it freezes image tokens; with them measured as harmful it skips layers."""
    def harm(visual: float, block: float) -> dict:
        return {f"layer_{i:02d}.op": {harm_key("keep"): 0.0, harm_key("skip_block"): block,
                                      harm_key("skip_block@visual"): visual} for i in range(4)}

    keep = {f"layer_{i:02d}.op": "keep" for i in range(4)}
    frozen = _fit(harm(visual=1e-6, block=1.0)).fit(keep).plan
    assert frozen.layers and all(frozen.op_for(i).scope == "visual" for i, _ in frozen.layers)
    skipped = _fit(harm(visual=1.0, block=1e-6)).fit(keep).plan
    assert skipped.layers and any(skipped.op_for(i).scope == "all" for i, _ in skipped.layers)
    # a value without a measurement takes its parameter's largest measured harm
    partial = _fit({"layer_00.op": {harm_key("skip_block"): 0.5}})
    assert partial._harm["layer_00.op", "skip_block@visual"] == 0.5
