"""BudgetFit: every proposal of every shipped space lands inside the budget, near it, and replays."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from searchskip.errors import ConfigError
from searchskip.flops import Budget, Workload
from searchskip.plan import Plan
from searchskip.search.budget_fit import BudgetFit
from searchskip.search.objective import ObjectiveContext, plan_cost
from searchskip.search.space import Space
from searchskip.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
ARCH = tiny_model("llava-llama", num_layers=8).config
WORKLOAD = Workload(prompt_tokens=30, generated_tokens=2, images=1, image_tokens=16)
SPACES = sorted(p.name for p in (REPO / "spaces").glob("*.yaml"))


def _fit(space_file: str, ratio: float, importance=None) -> BudgetFit:
    space = Space.load(REPO / "spaces" / space_file)
    ctx = ObjectiveContext(space=space, num_layers=8, arch=ARCH, workload=WORKLOAD, budget=Budget(ratio=ratio))
    return BudgetFit(ctx, importance)


def _feasible_fits(space_file: str):
    """``(fit, ratio)`` at the budgets the space can meet (the cheapest plan is checked first)."""
    for ratio in (0.9, 0.6, 0.45):
        fit = _fit(space_file, ratio)
        try:
            fit.check_feasible()
        except ConfigError:
            continue
        yield fit, ratio


def test_every_shipped_space_can_meet_some_budget():
    assert SPACES
    for name in SPACES:
        assert list(_feasible_fits(name)), f"{name}: no budget of 0.9/0.6/0.45 is feasible"


@pytest.mark.parametrize("space_file", SPACES)
def test_random_proposals_fit_the_budget_and_replay_from_their_params(space_file):
    for fit, ratio in _feasible_fits(space_file):
        rng = random.Random(0)
        for _ in range(12):
            proposal = {name: rng.choice(values) for name, values in fit.choices().items()}
            result = fit.fit(proposal)
            _, cost_ratio, fits = plan_cost(fit.ctx, result.plan)
            assert fits, f"{space_file} at {ratio}: {result.plan.describe()} costs {cost_ratio:.4f}"
            # the parameters the trial stores give exactly the plan that was priced
            assert fit.ctx.space.suggest(FixedTrial(result.params), 8) == result.plan
            assert result.cost == pytest.approx(fit.cost({**proposal, **result.params}))


def test_the_unplanned_model_is_cut_and_the_cheapest_plan_is_filled_toward_the_budget():
    fit = _fit("per-layer.yaml", 0.6)
    keep_all = {name: "keep" for name in fit.choices()}
    cut = fit.fit(keep_all)
    assert cut.changes > 0 and fit.fits(cut.cost)
    cheapest = fit.cheapest()
    filled = fit.fit(cheapest)
    assert fit.cost(cheapest) < filled.cost <= fit.limit * (1 + 1e-9)
    # filled to the line: no single change that adds FLOPs and still fits is left undone by more
    # than the smallest layer-op step
    steps = sorted({abs(d) for d in fit._delta.values() if d})
    assert fit.limit - filled.cost < steps[-1]


def test_a_proposal_inside_the_budget_and_at_it_is_left_alone():
    fit = _fit("per-layer.yaml", 0.6)
    at_budget = fit.fit({name: "keep" for name in fit.choices()})
    again = fit.fit(dict(at_budget.params))
    assert again.plan == at_budget.plan and again.changes == 0


def test_cut_follows_importance_least_important_layers_first():
    bi = [0.9, 0.2, 0.8, 0.01, 0.7, 0.02, 0.6, 0.5]
    fit = _fit("per-layer.yaml", 0.75, importance=bi)
    result = fit.fit({name: "keep" for name in fit.choices()})
    touched = {i for i, _ in result.plan.layers}
    assert touched and touched <= {3, 5, 1}, result.plan.describe()


def test_an_impossible_budget_names_the_key_and_the_cheapest_plan():
    fit = _fit("per-layer.yaml", 0.05)
    with pytest.raises(ConfigError) as e:
        fit.check_feasible()
    text = str(e.value)
    assert "search.budget" in text and "cheapest plan costs" in text and "GFLOPs per sample" in text
    cheapest_ratio = plan_cost(fit.ctx, fit.plan_of(fit.cheapest())[0])[1]
    assert f"{cheapest_ratio:.4f} x the unplanned model" in text


def test_the_cheapest_plan_is_no_dearer_than_any_single_change_of_it():
    for name in SPACES:
        fit = _fit(name, 0.5)
        cheapest = fit.cheapest()
        cost = fit.cost(cheapest)
        for param, values in fit.choices().items():
            for value in values:
                try:
                    assert fit.cost({**cheapest, param: value}) >= cost - 1e-6 * cost, (name, param, value)
                except ConfigError:
                    pass


def test_unplanned_plan_is_the_reference_when_keep_comes_first():
    fit = _fit("per-layer.yaml", 0.99)
    assert fit.plan_of({name: "keep" for name in fit.choices()})[0] == Plan()


@pytest.mark.parametrize("space_file", ["prune.yaml", "tokens.yaml"])
def test_fitted_number_values_are_points_of_the_optuna_distributions(space_file):
    """A fitted value the trial's distribution did not contain would be re-drawn by the sampler, unfitted."""
    for fit, _ in _feasible_fits(space_file):
        distributions = fit.ctx.space.distributions(8)
        rng = random.Random(1)
        for _ in range(8):
            result = fit.fit({name: rng.choice(values) for name, values in fit.choices().items()})
            for name, value in result.params.items():
                dist = distributions[name]
                assert dist._contains(dist.to_internal_repr(value)), (name, value, dist)
