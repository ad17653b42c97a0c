"""The sampler conformance suite: every sampler a job may name (``searchskip.search.samplers.names()``)
inherits these checks by the ``sampler`` fixture, as optuna's samplers do theirs.

* no over-budget plan reaches the model, and each plan is scored once (dedup);
* ``search.trials`` counts model evaluations exactly;
* a search SIGKILLed mid-evaluation and resumed lands on the exact count, with the suite's
  study invariants (:func:`helpers.check_study`);
* two worker processes share one study.

The evaluator is cheap and deterministic (the model is not the point); the kill and worker
cases run ``tests/reliability/search_child.py`` processes on the embedded model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from helpers import check_study, load_study
from searchskip.search.evaluations import runs_model, trial_counts
from searchskip.search.samplers import names

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))
import search_child as sc  # noqa: E402

BUDGET = 0.6  # of the unplanned model's FLOPs: most raw proposals of the per-layer space miss it


@pytest.fixture(params=names())
def sampler(request) -> str:
    return request.param


def _search_options(name: str) -> dict:
    # grid enumerates the space as it is (never fitted); every other sampler proposes through the fit
    return {"sampler": name, "budget": {"flops_ratio": BUDGET}, "fit_budget": name != "grid",
            "pruner": "parent" if name == "evo" else "none"}


def _fits(study) -> None:
    for t in study.get_trials(deepcopy=False):
        if runs_model(t):
            assert t.user_attrs["flops_ratio"] <= BUDGET + 1e-9, (t.number, t.user_attrs["flops_ratio"])


@pytest.fixture(scope="module")
def demo(one_thread):
    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model

    job = load_job(Path(__file__).resolve().parents[1] / "jobs/demo.yaml")
    return load_model(job.model), load_eval_split(job.data, "validation").select(range(16))


def test_no_over_budget_plan_reaches_the_model_and_each_plan_is_scored_once(sampler, tmp_path, demo):
    from helpers import job_of
    from searchskip.search.study import run_search

    calls: list[str] = []

    def evaluate(plan, report):
        calls.append(plan.key())
        return sc.CheapEvaluator(sc.Killer("none", str(tmp_path / "ev.jsonl")), batches=2, sleep=0)(plan, report)

    job = job_of(sc.write_job(tmp_path, **_search_options(sampler)))
    loaded, dataset = demo
    result = run_search(job, 12, loaded=loaded, dataset=dataset, evaluator=evaluate, progress=False)
    _fits(result.study)
    assert len(calls) == len(set(calls)) == trial_counts(result.study)["counted"] == 12
    if sampler != "grid":
        assert trial_counts(result.study)["infeasible"] == 0  # fitted: no proposal misses the budget


def test_a_killed_search_resumes_to_the_exact_count(sampler, tmp_path):
    job = sc.write_job(tmp_path, **_search_options(sampler))
    events = tmp_path / "events.jsonl"
    killed = sc.start_child(job, 10, events, kill="evaluating:5")
    out = killed.communicate(timeout=180)[0]
    assert killed.returncode == -9, out  # SIGKILL, mid-evaluation
    done = sc.start_child(job, 10, events)
    out = done.communicate(timeout=180)[0]
    assert done.returncode == 0, out
    study = load_study(job)
    check = check_study(study)
    assert check.counted == 10 and check.failed == 1, check
    _fits(study)


def test_two_workers_share_one_study(sampler, tmp_path):
    job = sc.write_job(tmp_path, workers=2, **_search_options(sampler))
    events, go = tmp_path / "events.jsonl", tmp_path / "go"
    procs = [sc.start_child(job, 12, events, go_file=go, sleep=0.02) for _ in range(2)]
    deadline = time.time() + 120
    while sum(e["event"] == "ready" for e in sc.read_events(events)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    go.write_text("go")
    for p in procs:
        out = p.communicate(timeout=180)[0]
        assert p.returncode == 0, out
    study = load_study(job)
    check = check_study(study)
    assert 12 <= check.counted <= 13, check
    assert len({t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False)}) == 2
    _fits(study)
