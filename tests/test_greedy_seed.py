"""search.seed_greedy: greedy removal's plan at the budget seeds the study; its evaluations count and resume."""

from __future__ import annotations

import pytest

from searchskip.plan import Plan
from searchskip.search.baselines import greedy_sublayer_removal
from searchskip.search.evaluations import describe_counts, runs_model, trial_counts
from searchskip.search.greedy_seed import greedy_evaluations
from test_study import FakeEvaluator, demo, make_job, run  # noqa: F401  (demo: the module's fixture)

BUDGET = 0.8


def _greedy_job(tmp_path, trials: int, **search):
    return make_job(tmp_path, budget={"flops_ratio": BUDGET}, trials=trials, seed_plans=False, seed_greedy=True,
                    **search)


def _expected_plan(study, demo) -> tuple[Plan, int]:
    """The plan and evaluation count of the benchmark's greedy removal with the same scores."""
    from searchskip.flops import Budget, Workload

    loaded, _ = demo
    scores = FakeEvaluator()
    workload = Workload.from_dict(study.user_attrs["workload"])
    steps = greedy_sublayer_removal(lambda p: scores(p, None).accuracy, loaded.model.config, workload,
                                    Budget(ratio=BUDGET))
    return steps[-1].plan, len(set(scores.keys))


class Reporting(FakeEvaluator):
    """Reports running accuracies at 16 and 24 questions, as the model evaluator does."""

    def __call__(self, plan, report):
        score = super().__call__(plan, report)
        if report is not None:
            for step in (16, 24):
                report(score.accuracy, step)
        return score


def test_the_greedy_plan_is_a_seed_and_its_evaluations_count(tmp_path, demo):
    ev = Reporting()
    result = run(_greedy_job(tmp_path, trials=60, sampler="evo"), demo, ev)
    study = result.study
    greedy = greedy_evaluations(study.user_attrs)
    assert greedy > 0
    counts = trial_counts(study)
    assert counts["greedy"] == greedy and counts["counted"] == greedy + sum(map(runs_model, study.trials))
    assert counts["counted"] >= 60 and ev.calls == counts["counted"]  # one model run per evaluation counted
    assert f"{greedy} by the greedy seed" in describe_counts(counts)
    plan, scored = _expected_plan(study, demo)
    assert scored == greedy  # the same greedy path, each plan scored once
    seed = next(t for t in study.trials if t.user_attrs.get("seed") == "greedy")
    assert seed.number == 0 and seed.user_attrs["plan_key"] == plan.key() and seed.user_attrs["flops_ratio"] <= BUDGET
    assert all(t.user_attrs["flops_ratio"] <= BUDGET + 1e-9 for t in study.trials if runs_model(t))
    best = max((t for t in study.trials if t.values), key=lambda t: t.values[0])
    assert best.values[0] >= seed.values[0] and seed.user_attrs["from_greedy"] and not runs_model(seed)
    # the greedy's running accuracies: the parent pruner compares evo's children with them
    assert seed.intermediate_values == {16: seed.values[0], 24: seed.values[0]}


def test_an_interrupted_greedy_seed_resumes_without_scoring_a_plan_twice(tmp_path, demo):
    class Interrupting(FakeEvaluator):
        def __call__(self, plan, report):
            if self.calls == 7:
                raise KeyboardInterrupt
            return super().__call__(plan, report)

    job = _greedy_job(tmp_path, trials=3)  # fewer than the 7 evaluations made before the kill: it resumes all the same
    first = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        run(job, demo, first)
    again = FakeEvaluator()
    study = run(job, demo, again).study
    plan, scored = _expected_plan(study, demo)
    assert greedy_evaluations(study.user_attrs) == scored  # the same path as one uninterrupted run
    resumed = again.keys[:scored - 7]
    assert len(set(resumed)) == len(resumed) and not set(resumed) & set(first.keys)  # nothing scored twice
    assert next(t for t in study.trials if t.user_attrs.get("seed") == "greedy").user_attrs["plan_key"] == plan.key()
