"""`storage: postgresql://...` on a real PostgreSQL server (started on loopback by the fixture):
two worker processes share one study; a worker killed with SIGKILL is recovered on resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from searchskip.search.study import trial_counts

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def job_file(tmp_path: Path, url: str, **search) -> Path:
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(tmp_path / "out")
    data["data"]["validation_subset"]["size"] = 32
    data["eval"]["batch_size"] = 16
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), "storage": url, **search})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def search(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "searchskip", "search", str(path), "--no-progress"], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_study(study: optuna.Study, target: int, workers: int) -> list:
    trials = study.get_trials()
    counts = trial_counts(study)
    assert target <= counts["counted"] <= target + workers - 1, counts
    assert counts["running"] == 0 and counts["waiting"] == 0, counts
    assert len({t.number for t in trials}) == len(trials)
    seeds = [t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs and "retry_of" not in t.user_attrs]
    assert seeds and len(seeds) == len(set(seeds)), "a seed was enqueued twice"
    scored = [t.user_attrs["plan_key"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE
              and "dedup_of" not in t.user_attrs]
    assert len(scored) == len(set(scored)), "a plan was scored twice"
    return trials


def test_two_workers_share_one_postgresql_study(tmp_path, postgres):
    url = postgres.create_database("two_workers")
    path = job_file(tmp_path, url, workers=2, trials=16)
    procs = [search(path) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("database is locked" in o or "Traceback" in o for o in outs), outs
    trials = check_study(optuna.load_study(study_name="demo", storage=url), 16, 2)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials if "worker" in t.user_attrs}
    assert pids == {str(p.pid) for p in procs}


def test_a_killed_postgresql_worker_is_recovered_on_resume(tmp_path, postgres):
    url = postgres.create_database("killed_worker")
    path = job_file(tmp_path, url, trials=14)
    proc = search(path)
    deadline = time.monotonic() + 120
    study = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = optuna.load_study(study_name="demo", storage=url)
        except KeyError:  # not created yet
            time.sleep(0.3)
            continue
        if trial_counts(study)["counted"] >= 3 and trial_counts(study)["running"] == 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    resumed = search(path)
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out
    trials = check_study(optuna.load_study(study_name="demo", storage=url), 14, 1)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(t.number for t in failed) == left
    # A killed trial is retried with its plan; one killed before it had a plan (sampled, not yet
    # suggested) has nothing to retry.
    with_plan = {t.number for t in failed if t.params or t.system_attrs.get("fixed_params")}
    assert {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs} == with_plan
