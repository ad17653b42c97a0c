"""sampler: evo and pruner: parent, on an in-memory study (no model: plans are priced, not scored)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from searchskip.flops import Budget, Workload
from searchskip.search.budget_fit import BudgetFit
from searchskip.search.objective import ObjectiveContext, plan_cost
from searchskip.search.pruners import ParentPruner
from searchskip.search.samplers.evo import EvoSampler, parent_trial
from searchskip.search.space import Space
from searchskip.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
ARCH = tiny_model("llava-llama", num_layers=8).config
WORKLOAD = Workload(prompt_tokens=30, generated_tokens=2, images=1, image_tokens=16)


@pytest.fixture(scope="module")
def fit() -> BudgetFit:
    space = Space.load(REPO / "spaces/per-layer.yaml")
    return BudgetFit(ObjectiveContext(space=space, num_layers=8, arch=ARCH, workload=WORKLOAD,
                                      budget=Budget(ratio=0.6)))


def _complete(study, fit, params: dict, value: float, steps: dict | None = None, **attrs):
    plan, used = fit.plan_of({**{n: "keep" for n in fit.choices()}, **params})
    dists = {n: d for n, d in fit.ctx.space.distributions(8).items() if n in used}
    study.add_trial(create_trial(params=used, distributions=dists, value=value, intermediate_values=steps or {},
                                 user_attrs={"plan_key": plan.key(), **attrs}))


def test_the_parent_is_the_best_complete_trial_not_a_duplicate_and_ties_go_to_lower_kl(fit):
    study = optuna.create_study(direction="maximize")
    _complete(study, fit, {"layer_03.op": "skip_block"}, 0.90)
    _complete(study, fit, {"layer_04.op": "skip_block"}, 0.95, kl=0.3)
    _complete(study, fit, {"layer_05.op": "skip_block"}, 0.95, kl=0.1)
    _complete(study, fit, {"layer_06.op": "skip_block"}, 0.99, dedup_of=0)
    assert parent_trial(study).number == 2


def test_children_are_fitted_mutations_of_the_parent_and_reproducible(fit):
    def propose(seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=EvoSampler(fit, seed=seed))
        parent = fit.fit({n: "keep" for n in fit.choices()})
        _complete(study, fit, parent.params, 0.9)
        out = []
        for _ in range(6):
            trial = study.ask()
            plan = fit.ctx.space.suggest(trial, 8)
            assert plan_cost(fit.ctx, plan)[2], plan.describe()  # at the budget, never over it
            assert study._storage.get_trial(trial._trial_id).user_attrs["evo_parent"] == 0
            out.append(dict(trial.params))
            study.tell(trial, state=TrialState.PRUNED)
        return out

    first = propose(0)
    assert first == propose(0)  # seeded by search.seed and the trial's number
    assert first != propose(1)
    parent = fit.fit({n: "keep" for n in fit.choices()}).params
    assert all(child != parent for child in first)  # a child the study already holds is redrawn


def _study_with_parent(values: dict[int, float]):
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=0.97,
                                 intermediate_values=values))
    return study


def test_parent_pruner_stops_a_child_clearly_below_its_parent_on_the_same_questions():
    study = _study_with_parent({64: 0.97, 192: 0.97})
    pruner = ParentPruner()
    child = study.ask({"x": FloatDistribution(0, 1)})
    child.report(0.80, 64)
    assert pruner.prune(study, study._storage.get_trial(child._trial_id))
    close = study.ask({"x": FloatDistribution(0, 1)})
    close.report(0.95, 64)  # within two standard errors of 0.97 on 64 questions
    assert not pruner.prune(study, study._storage.get_trial(close._trial_id))
    unknown_step = study.ask({"x": FloatDistribution(0, 1)})
    unknown_step.report(0.1, 100)  # the parent has no value at this step: no comparison
    assert not pruner.prune(study, study._storage.get_trial(unknown_step._trial_id))


def test_parent_pruner_without_a_parent_lets_every_trial_go_on():
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    trial.report(0.0, 64)
    assert not ParentPruner().prune(study, study._storage.get_trial(trial._trial_id))


def test_auto_is_evo_for_one_fitted_objective_else_tpe():
    from searchskip.config.job import BudgetSpec, SearchSpec
    from searchskip.search.pruners import resolved_pruner
    from searchskip.search.samplers import names, resolved_sampler

    base = SearchSpec(space="spaces/per-layer.yaml", budget=BudgetSpec(flops_ratio=0.5))
    assert base.sampler == "auto" and "auto" in names()
    assert resolved_sampler(base) == "evo" and resolved_pruner(base) == "parent"
    assert resolved_sampler(dataclasses.replace(base, objectives=("accuracy", "flops"))) == "tpe"
    unfitted = dataclasses.replace(base, fit_budget=False)
    assert resolved_sampler(unfitted) == "tpe" and resolved_pruner(unfitted) == "median"
    assert resolved_sampler(dataclasses.replace(base, sampler="random")) == "random"
