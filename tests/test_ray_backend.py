"""``search.backend: ray``: two Ray actors search one journal study together (a local Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from searchskip.config.loader import job_from_data
from searchskip.search.ray_backend import _is_loopback, ray_options
from searchskip.search.storage import open_storage
from searchskip.search.study import study_dir, trial_counts

REPO = Path(__file__).resolve().parents[1]


def ray_job(tmp_path: Path, **search) -> dict:
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(tmp_path / "out")
    data["data"]["validation_subset"]["size"] = 32
    data["eval"]["batch_size"] = 16
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), "backend": "ray", "ray_allow_network": True, "workers": 2,
                           "resources_per_worker": {"cpu": 1}, "trials": 12, **search})
    return data


def problems(data: dict) -> str:
    from searchskip.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        job_from_data(data, None)
    return str(err.value)


def test_ray_config_rules(tmp_path):
    job = job_from_data(ray_job(tmp_path), None)
    assert dict(job.search.resources_per_worker) == {"cpu": 1} and job.search.ray_address is None
    text = problems(ray_job(tmp_path, storage="sqlite:///s.db"))
    assert "search.storage" in text and "sqlite:///s.db" in text and "backend='ray'" in text
    text = problems(ray_job(tmp_path, resources_per_worker={"CPU": 1}))
    assert "resources_per_worker.CPU" in text
    text = problems(ray_job(tmp_path, resources_per_worker={"gpu": 0}))
    assert "`gpu > 0`" in text
    job_from_data(ray_job(tmp_path, resources_per_worker={"gpu": 1, "memory": 2e9, "tpu_v4": 1}), None)
    assert ray_options({"cpu": 1, "gpu": 0.5, "memory": 2e9, "tpu_v4": 1}) == {
        "num_cpus": 1, "num_gpus": 0.5, "memory": 2000000000, "resources": {"tpu_v4": 1.0}}
    assert _is_loopback("127.0.0.1:6379") and not _is_loopback("ray://10.0.0.2:10001")


def test_two_ray_actors_complete_a_study_together(tmp_path):
    data = ray_job(tmp_path)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "searchskip", "search", str(job_file), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.communicate(timeout=150)[0]
    assert proc.returncode == 0, out
    assert "listen on every network interface" in out  # the exposure of a local Ray is never silent
    job = job_from_data(data, None)
    study = optuna.load_study(study_name="demo", storage=open_storage(None, study_dir(job)))
    trials = study.get_trials()
    counts = trial_counts(study)
    assert 12 <= counts["counted"] <= 13, counts
    assert counts["running"] == 0 and counts["failed"] == 0
    assert len({t.number for t in trials}) == len(trials)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials if "worker" in t.user_attrs}
    assert len(pids) == 2 and str(proc.pid) not in pids, pids
    seeds = [t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs]
    assert seeds and len(seeds) == len(set(seeds)), "seeds enqueued more than once"
    assert study.user_attrs["seeded"] is True
    assert list((study_dir(job) / "workers").iterdir()) == []


def test_killed_ray_driver_resumes_through_the_storage(tmp_path):
    """SIGKILL the driver mid-search: its actors die with it; `searchskip resume` fails the trials
    they left RUNNING, retries them once and finishes the study without losing or double-counting."""
    import signal
    import time

    data = ray_job(tmp_path, trials=16)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(data))
    job = job_from_data(data, None)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "searchskip", "search", str(job_file), "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = study_dir(job) / "study.journal"
    deadline = time.monotonic() + 120
    counted = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            study = optuna.load_study(study_name="demo", storage=open_storage(None, study_dir(job)))
            counted = trial_counts(study)["counted"]
            if counted >= 3:
                break
        time.sleep(0.3)
    ended = proc.poll() is not None
    if not ended and counted < 3:
        proc.kill()  # leave no driver behind when the test fails here
        proc.wait()
    assert not ended, "the search ended before it could be killed"
    assert counted >= 3, (f"only {counted} trial(s) counted within 120 s (the journal "
                          f"{'exists' if journal.exists() else 'never appeared'}): the kill must come mid-search")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.state for t in study.get_trials()}
    out = subprocess.run([sys.executable, "-m", "searchskip", "resume", str(study_dir(job)), "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="demo", storage=open_storage(None, study_dir(job)))
    trials = study.get_trials()
    counts = trial_counts(study)
    assert 16 <= counts["counted"] <= 17 and counts["running"] == 0 and counts["waiting"] == 0, counts
    assert len({t.number for t in trials}) == len(trials)
    for number, state in before.items():  # nothing finished before the kill changed (a WAITING seed may run since)
        if state.is_finished():
            assert trials[number].state == state
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    assert {t.number for t in failed if t.params} <= retried
    assert all("stale" in t.user_attrs["failed_reason"] for t in failed)
    # A trial left RUNNING at the kill was either finished by its actor (a Ray worker can outlive
    # the driver by a moment) or failed as stale by the resume and retried; none is lost.
    left_running = {n for n, state in before.items() if state == optuna.trial.TrialState.RUNNING}
    assert {t.number for t in failed} <= left_running
    keys = [t.user_attrs["plan_key"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE
            and "dedup_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)), "a plan was scored twice"


def test_ray_runs_the_greedy_seed_and_a_label_free_objective(tmp_path):
    """The Ray backend takes the greedy seed (run once in the setup task, its evaluations counted) and
    ranks by ``kl`` (minimized) like the in-process backend."""
    from searchskip.search.greedy_seed import greedy_evaluations
    from searchskip.search.leaderboard import leaderboard, primary

    data = ray_job(tmp_path, workers=1, trials=60, objectives=["kl"], seed_plans=False, seed_greedy=True,
                   budget={"flops_ratio": 0.85})
    data["data"]["validation_subset"]["size"] = 16
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "searchskip", "search", str(job_file), "--no-progress"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    study = optuna.load_study(study_name="demo", storage=open_storage(None, study_dir(job_from_data(data, None))))
    greedy = greedy_evaluations(study.user_attrs)
    counts = trial_counts(study)
    assert greedy > 0 and counts["greedy"] == greedy and 60 <= counts["counted"] <= 61, counts
    seeded = [t for t in study.trials if t.user_attrs.get("seed") == "greedy"]
    assert len(seeded) == 1 and seeded[0].user_attrs["flops_ratio"] <= 0.85 and "kl" in seeded[0].user_attrs
    assert primary(study) == ("kl", False) and study.directions[0].name == "MINIMIZE"
    board = leaderboard(study)
    assert [t.user_attrs["kl"] for t in board] == sorted(t.user_attrs["kl"] for t in board)
    assert all({"kl", "agreement", "accuracy"} <= set(t.user_attrs) for t in board)
