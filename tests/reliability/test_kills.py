"""Hard kills: a search SIGKILLed at seeded random moments, resumed after each, loses nothing.

A child process (``search_child.py``: the embedded model, a cheap deterministic evaluator) runs
the study and kills itself with SIGKILL at the NTH occurrence of one phase: ``sampling`` (after
``Space.suggest``), ``evaluating`` (between two batches), ``recording`` (the objective returned,
optuna has not recorded it) or ``telling`` (in the storage write that completes the trial, before
it). The next child resumes the study. The phases are spread evenly and shuffled, and NTH drawn,
by ``random.Random(0)``. Kills during export are covered by the export tests
(``tests/test_export_atomic.py``, ``test_export_kills.py``), not here.

After every kill the journal opens, exactly one trial (the killed one) is RUNNING, every trial
finished before stays as it was, and the best value has not decreased. At the end the study
holds exactly the target of COMPLETE trials, unique numbers, no RUNNING/WAITING trial, every
killed trial FAIL ("stale") and retried once unless it was itself a retry (a retry killed
again is not retried), and no plan scored twice
(:func:`helpers.check_study`).

The fast variant (4 kills, one per phase, 20 trials) runs by default; the full one (20 kills, 60 trials) has the
``reliability_full`` marker. The last test is the one end-to-end case on the real model: the
``searchskip search`` command killed once mid-run and finished by ``searchskip resume``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

import search_child as sc
from helpers import check_study, job_of, load_study, searchskip_proc

BATCHES = 4  # the cheap evaluator's batches: BATCHES - 1 "evaluating" moments per scored plan


def kill_schedule(kills: int, seed: int = 0) -> list[tuple[str, int]]:
    """``kills`` (phase, nth) pairs: the phases spread evenly and shuffled, nth drawn, all seeded."""
    rng = random.Random(seed)
    phases = [sc.PHASES[i % len(sc.PHASES)] for i in range(kills)]
    rng.shuffle(phases)
    return [(phase, rng.randint(1, 3 * (BATCHES - 1) if phase == "evaluating" else 3)) for phase in phases]


def finished(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.values, t.user_attrs.get("plan_key")) for t in study.get_trials(deepcopy=False)
            if t.state.is_finished()}


def best_value(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None


@pytest.mark.parametrize("kills,target", [
    pytest.param(4, 20, id="4-kills-20-trials"),
    pytest.param(20, 60, id="20-kills-60-trials", marks=pytest.mark.reliability_full),
])
def test_sigkill_at_random_moments_then_resume(tmp_path, kills, target):
    job = sc.write_job(tmp_path, seed_plans=True)
    events = tmp_path / "events.jsonl"
    schedule = kill_schedule(kills)
    delivered: Counter = Counter()
    bests: list[float] = []
    before: dict[int, tuple] = {}
    started = time.monotonic()
    for phase, nth in schedule:
        proc = sc.start_child(job, target, events, kill=f"{phase}:{nth}")
        out = proc.communicate(timeout=300)[0]
        study = load_study(job)  # the storage opens cleanly after every kill
        now = finished(study)
        for number, row in before.items():  # nothing finished before the kill changed or vanished
            assert now.get(number) == row, f"trial {number} changed across a kill: {row} -> {now.get(number)}"
        before = now
        best = best_value(study)
        if best is not None:
            assert not bests or best >= bests[-1], f"the best value went backwards: {bests[-1]} -> {best}"
            bests.append(best)
        if proc.returncode == 0:  # the study reached its target before this kill's moment
            assert sum(1 for s, _v, _k in now.values() if s == TrialState.COMPLETE) >= target, out
            continue
        assert proc.returncode == -signal.SIGKILL, out
        killed = [e for e in sc.read_events(events) if e["event"] == "kill" and e["pid"] == proc.pid]
        assert [(e["phase"], e["nth"]) for e in killed] == [(phase, nth)], out
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        assert running == [killed[0]["trial"]], "the killed trial (and only it) is left RUNNING"
        delivered[phase] += 1

    last = sc.start_child(job, target, events)
    out = last.communicate(timeout=300)[0]
    assert last.returncode == 0, out
    study = load_study(job)
    for number, row in before.items():
        assert finished(study).get(number) == row
    check = check_study(study)
    # exactly the target of model evaluations, all COMPLETE (a duplicate plan reuses a score and is not counted)
    assert check.complete - check.dedups == check.counted == target, check
    assert best_value(study) >= bests[-1]
    assert sum(delivered.values()) == kills, f"kills delivered by phase: {dict(delivered)}"
    # each kill cost exactly one trial (failed as stale, then retried unless it was a retry itself)
    assert check.failed == kills, check
    starts = [e for e in sc.read_events(events) if e["event"] == "start"]
    assert len(starts) == kills + 1
    seen = [e["best"] for e in starts if e["best"] is not None]
    assert seen == sorted(seen), "a restarted process saw a lower best value than an earlier one"
    print(f"\nreliability/kills: {sum(delivered.values())} SIGKILLs survived "
          f"({', '.join(f'{p} {delivered[p]}' for p in sc.PHASES)}), {kills + 1} runs; "
          f"{check.counted}/{target} evaluations COMPLETE, 0 lost; {check.failed} killed trials failed as stale, "
          f"{check.retries} retried; {check.dedups} dedup; best value never decreased "
          f"({bests[0]:.4f} -> {bests[-1]:.4f}); {time.monotonic() - started:.0f} s")


# ---- the one end-to-end case on the real model ------------------------------------------------


def test_cli_search_killed_mid_run_then_resume_on_the_real_model(tmp_path):
    """``searchskip search`` (the embedded model really scoring plans on 16 questions, the demo's
    budget, sampler and median pruner) is SIGKILLed with a trial RUNNING after 3 counted trials;
    ``searchskip resume`` fails that trial as stale, retries it and ends at exactly the target."""
    from searchskip.search.study import study_dir, trial_counts

    target = 10
    job = sc.write_job(tmp_path, name="e2e", budget={"flops_ratio": 0.8}, pruner="median", trials=target)
    folder = study_dir(job_of(job))
    proc = searchskip_proc("search", str(job), "--no-progress")
    deadline = time.monotonic() + 240
    running: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if (folder / "study.journal").exists():
            try:
                study = load_study(job)
            except KeyError:  # not created yet
                study = None
            if study is not None:
                counts = trial_counts(study)
                running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                if counts["counted"] >= 3 and running:
                    break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed:\n" + proc.communicate()[0]
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, out
    study = load_study(job)
    before = finished(study)
    left = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    assert len(left) == 1 and trial_counts(study)["counted"] < target

    resumed = searchskip_proc("resume", str(folder), "--no-progress")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    study = load_study(job)
    check = check_study(study)
    assert check.counted == target and check.failed == 1, check
    trials = study.get_trials(deepcopy=False)
    assert trials[left[0]].state == TrialState.FAIL and "stale" in trials[left[0]].user_attrs["failed_reason"]
    killed = trials[left[0]]
    retryable = bool(killed.params or killed.system_attrs.get("fixed_params"))  # killed before it had a plan: none
    assert [t.user_attrs.get("retry_of") for t in trials].count(left[0]) == int(retryable)
    for number, row in before.items():
        assert finished(study)[number] == row
    assert not list((folder / "workers").iterdir())  # the dead process's registration was removed
