"""`storage: postgresql://...` on a real PostgreSQL server (started on loopback by the fixture):
a worker killed with SIGKILL is recovered on resume. (Several workers sharing one PostgreSQL
study: tests/reliability/test_concurrency.py.)"""

from __future__ import annotations

import os
import signal
import time

import optuna

from helpers import check_study, demo_job, searchskip_proc
from searchskip.search.study import trial_counts


def test_a_killed_postgresql_worker_is_recovered_on_resume(tmp_path, postgres):
    url = postgres.create_database("killed_worker")
    target = 14
    path = demo_job(tmp_path, questions=32, eval={"batch_size": 16}, storage=url, trials=target)
    proc = searchskip_proc("search", path, "--no-progress")
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
    assert proc.poll() is None, "the search ended before it could be killed:\n" + proc.communicate()[0]
    assert study is not None, "the study was never created in PostgreSQL within 120 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [t.number for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    resumed = searchskip_proc("search", path, "--no-progress")
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out
    study = optuna.load_study(study_name="demo", storage=url)
    check = check_study(study)
    assert check.counted == target, check  # one worker: exactly the target
    assert check.seeds > 0, "no seed plan was enqueued"
    trials = study.get_trials()
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(t.number for t in failed) == left and check.failed == len(left)
    # A killed trial is retried with its plan; one killed before it had a plan (sampled, not yet
    # suggested) has nothing to retry.
    with_plan = {t.number for t in failed if t.params or t.system_attrs.get("fixed_params")}
    assert {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs} == with_plan


def test_opening_postgresql_storage_warns_nothing(tmp_path, postgres):
    """optuna marks the heartbeat that recovers killed workers experimental; a user who asked for
    PostgreSQL asked for nothing experimental, so no ExperimentalWarning reaches them."""
    import warnings

    from searchskip.search.storage import open_storage

    url = postgres.create_database("quiet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = open_storage(url, tmp_path)
    assert storage is not None
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)], caught
