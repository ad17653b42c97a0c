"""Concurrency: several worker processes on one study lose and duplicate nothing.

N child processes (``search_child.py``: the embedded model, a cheap deterministic evaluator, no
kills) load the model, wait for each other, and search one study together (``search.workers: N``):
2 and 4 workers on one journal file, 2 workers on a real PostgreSQL server on loopback (skipped,
with the reason, where none can start). Afterwards: every worker exited 0 with no "database is
locked" (nor any traceback) in its output; the study holds between the target and target + N - 1
counted trials, no FAIL, no RUNNING/WAITING trial, unique trial numbers; every worker's pid is
recorded on trials; the seeds were enqueued once; no plan was scored twice (the evaluations the
workers made add up to the distinct plans scored). SQLite with more than one worker is refused
by the job rules (``tests/test_study.py``, ``tests/test_cli_search.py``), not here.

Fast variant (default run): 20 + 24 + 20 trials; full (``reliability_full``): 60 + 80 + 60 = 200.
"""

from __future__ import annotations

import time

import pytest
from optuna.trial import TrialState

import search_child as sc
from helpers import check_study, load_study

JOURNAL = None


def run_workers(tmp_path, workers: int, target: int, storage: str | None) -> dict:
    job = sc.write_job(tmp_path, name=f"w{workers}", workers=workers, storage=storage)
    events = tmp_path / "events.jsonl"
    go = tmp_path / "go"
    started = time.monotonic()
    procs = [sc.start_child(job, target, events, go_file=go, sleep=0.05) for _ in range(workers)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if sum(e["event"] == "ready" for e in sc.read_events(events)) == workers:
            break
        time.sleep(0.1)
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    seconds = time.monotonic() - started
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "database is locked" not in out and "Traceback" not in out, out

    study = load_study(job)
    check = check_study(study)
    assert target <= check.counted <= target + workers - 1, check
    assert check.failed == 0 and check.counted == check.complete - check.dedups, check  # duplicates do not count
    trials = study.get_trials(deepcopy=False)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert pids == {str(p.pid) for p in procs}, "a worker recorded no trial (or an unknown one did)"
    assert check.seeds > 0 and study.user_attrs["seeded"] is True
    ends = [e for e in sc.read_events(events) if e["event"] == "end"]
    assert sorted(e["pid"] for e in ends) == sorted(p.pid for p in procs)
    scored = [t for t in trials if t.state == TrialState.COMPLETE and "dedup_of" not in t.user_attrs]
    assert sum(e["evaluations"] for e in ends) == len(scored), "a plan was evaluated twice"
    per_worker = {pid: sum(t.user_attrs["worker"].endswith(f":{pid}") for t in trials) for pid in sorted(pids)}
    print(f"\nreliability/concurrency: {workers} workers on {'journal' if storage is None else 'postgresql'}: "
          f"{check.counted} counted trials for a target of {target} (trials per worker {list(per_worker.values())}), "
          f"0 lost, 0 duplicated, 0 failed, {check.dedups} dedup, {check.seeds} seeds once; {seconds:.0f} s")
    return {"counted": check.counted, "per_worker": per_worker}


@pytest.mark.parametrize("workers,target", [
    pytest.param(2, 20, id="2-workers-20-trials"),
    pytest.param(4, 24, id="4-workers-24-trials"),
    pytest.param(2, 60, id="2-workers-60-trials", marks=pytest.mark.reliability_full),
    pytest.param(4, 80, id="4-workers-80-trials", marks=pytest.mark.reliability_full),
])
def test_workers_share_one_journal(tmp_path, workers, target):
    run_workers(tmp_path, workers, target, JOURNAL)


@pytest.mark.parametrize("target", [
    pytest.param(20, id="20-trials"),
    pytest.param(60, id="60-trials", marks=pytest.mark.reliability_full),
])
def test_two_workers_share_one_postgresql_study(tmp_path, postgres, target):
    run_workers(tmp_path, 2, target, postgres.create_database(f"reliability_{target}"))
