"""Several processes on one study: shared journal, stale trials of dead workers only, seeds once.

Worker processes run ``run_search`` with a cheap fake evaluator (a helper script written to
``tmp_path``); each loads the embedded model once for the workload and FLOP counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchskip.config.loader import job_from_data
from searchskip.plan import Plan
from searchskip.search.objective import PlanScore
from searchskip.search.storage import open_storage, worker_id
from searchskip.search.study import run_search, study_dir, trial_counts

REPO = Path(__file__).resolve().parents[1]

WORKER_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from searchskip.config.loader import job_from_data
from searchskip.search.objective import PlanScore
from searchskip.search.study import run_search
job = job_from_data(json.loads(sys.argv[1]), None)
go = float(sys.argv[2])
def fake(plan, report):
    time.sleep(0.05)
    acc = (sum(map(ord, plan.key())) % 1000) / 1000
    return PlanScore(acc, {"what shape": acc}, 32)
from searchskip.models import load_model
from searchskip.data.splits import load_eval_split
loaded = load_model(job.model)
dataset = load_eval_split(job.data, "validation")
while time.time() < go:  # start the searches together
    time.sleep(0.01)
run_search(job, evaluator=fake, progress=False, loaded=loaded, dataset=dataset, handle_sigint=False)
"""


def job_data(tmp_path: Path, **search) -> dict:
    return {"name": "t", "outputs": str(tmp_path / "out"),
            "data": {"source": "easy_vqa", "carve_validation": {"fraction": 0.1, "seed": 0},
                     "validation_subset": {"size": 32, "seed": 0}},
            "eval": {"batch_size": 8, "max_new_tokens": 2},
            "search": {"space": str(REPO / "spaces/per-layer.yaml"), "budget": {"flops_ratio": 0.8},
                       "sampler": "random", **search}}


@pytest.fixture(scope="module")
def demo(one_thread):
    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model

    job = load_job(REPO / "jobs/demo.yaml")
    return load_model(job.model), load_eval_split(job.data, "validation").select(range(32))


def fake(plan: Plan, report) -> PlanScore:
    acc = (sum(map(ord, plan.key())) % 1000) / 1000
    return PlanScore(acc, {"what shape": acc}, 32)


def run(job, demo, **kw):
    loaded, dataset = demo
    return run_search(job, loaded=loaded, dataset=dataset, evaluator=fake, progress=False, **kw)


def test_two_processes_on_one_journal_complete_a_study_together(tmp_path):
    import time

    data = job_data(tmp_path, trials=20, workers=2)
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    go = time.time() + 12
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), json.dumps(data), str(go)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "database is locked" not in out
    job = job_from_data(data, None)
    study = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job)))
    trials = study.get_trials()
    counts = trial_counts(study)
    assert 20 <= counts["counted"] <= 21
    assert counts["running"] == 0 and counts["failed"] == 0
    assert len({t.number for t in trials}) == len(trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and {w.rsplit(":", 1)[1] for w in workers} == {str(p.pid) for p in procs}
    scored = [t.user_attrs["plan_key"] for t in trials if "accuracy" in t.user_attrs
              and "dedup_of" not in t.user_attrs and "retry_of" not in t.user_attrs]
    assert len(scored) == len(set(scored)), "a plan was scored twice"
    seeds = [t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs]
    assert seeds and len(seeds) == len(set(seeds)), "seeds enqueued more than once"
    assert study.user_attrs["seeded"] is True
    assert list((study_dir(job) / "workers").iterdir()) == []


def _running_trial(job, worker: str | None) -> int:
    study = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job)))
    from searchskip.search.space import Space

    trial = study.ask()
    if worker is not None:
        trial.set_user_attr("worker", worker)
    Space.load(job.search.space).suggest(trial, 8)
    return trial.number


def test_a_live_workers_running_trial_is_left_alone(tmp_path, demo):
    job = job_from_data(job_data(tmp_path, trials=1, seed_plans=False), None)
    run(job, demo)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = _running_trial(job, worker_id(live.pid))
        other_host = _running_trial(job, "some-other-host:1")
        # a trial without `worker` while another live process is registered on the study
        (study_dir(job) / "workers").mkdir(exist_ok=True)
        reg = study_dir(job) / "workers" / worker_id(live.pid).replace(":", "-")
        reg.write_text("x")
        anonymous = _running_trial(job, None)
        result = run(job, demo, trials=3)
        assert result.failed_stale == []
        trials = result.study.get_trials()
        for n in (mine, other_host, anonymous):
            assert trials[n].state == TrialState.RUNNING
        assert trial_counts(result.study)["counted"] == 3
        assert reg.exists()  # a live registration is kept
    finally:
        live.kill()
        live.wait()


def test_a_dead_workers_running_trial_is_failed_and_retried_once(tmp_path, demo):
    job = job_from_data(job_data(tmp_path, trials=1, seed_plans=False, budget={"flops_ratio": 1.0}), None)
    run(job, demo)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = _running_trial(job, worker_id(dead.pid))
    (study_dir(job) / "workers" / worker_id(dead.pid).replace(":", "-")).write_text("x")
    result = run(job, demo, trials=3)
    assert result.failed_stale == [stale]
    trials = result.study.get_trials()
    assert trials[stale].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == stale]
    assert len(retries) == 1 and retries[0].params == trials[stale].params
    assert trial_counts(result.study)["counted"] == 3
    assert list((study_dir(job) / "workers").iterdir()) == []  # the dead registration is removed
