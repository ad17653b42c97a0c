"""One search process of the reliability suite, run with ``sys.executable`` as a subprocess.

    python search_child.py JOB.yaml TRIALS --kill PHASE:NTH --events EVENTS.jsonl [--go-file PATH] [--sleep S]

Loads the embedded model and the validation subset once (one torch thread), then calls
:func:`searchskip.search.study.run_search` with :class:`CheapEvaluator` (a deterministic accuracy
from ``sha256(plan.key())``, reported over a few "batches" with a short sleep each, so a kill can
land mid-evaluation; ``--sleep`` seconds per batch). With ``--go-file`` it emits ``ready`` once the
model is loaded and waits for that file before searching (workers started together).

``--kill PHASE:NTH`` sends this process SIGKILL at the NTH occurrence of PHASE (counted in this
process only); the hooks are installed by monkeypatching inside this process:

* ``sampling``: in ``Space.suggest``, after the trial's parameters were suggested;
* ``evaluating``: in the evaluator, between two batches (each batch is one occurrence);
* ``recording``: after ``Objective.__call__`` returned its value, before optuna records it;
* ``telling``: in the storage's ``set_trial_state_values`` for a COMPLETE state, before the write.

Events are appended to ``--events`` as JSON lines (one ``os.write`` of an ``O_APPEND`` file each,
so several processes can share the file): ``start`` (pid, the study's counted trials and best
value before this run), ``trial`` (each finished trial: number, state, value), ``kill`` (phase,
nth, the trial being run) and ``end`` (counted trials, evaluations of this run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PHASES = ("sampling", "evaluating", "recording", "telling")


def emit(path: str, **event) -> None:
    event.setdefault("pid", os.getpid())
    event.setdefault("t", time.time())
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def cheap_accuracy(key: str) -> float:
    """Deterministic in the plan (not Python's salted ``hash``): the same plan, the same score."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 10007 / 10007


class Killer:
    """Counts occurrences of one phase; SIGKILLs this process at the chosen one."""

    def __init__(self, spec: str, events: str):
        self.events = events
        self.current_trial: int | None = None
        self.phase, self.nth = None, 0
        if spec != "none":
            phase, _, nth = spec.partition(":")
            if phase not in PHASES:
                raise SystemExit(f"unknown kill phase {phase!r}; one of {PHASES}")
            self.phase, self.nth = phase, int(nth)
        self.seen = dict.fromkeys(PHASES, 0)

    def at(self, phase: str) -> None:
        self.seen[phase] += 1
        if phase == self.phase and self.seen[phase] == self.nth:
            emit(self.events, event="kill", phase=phase, nth=self.nth, trial=self.current_trial)
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached


class CheapEvaluator:
    def __init__(self, killer: Killer, batches: int = 4, sleep: float = 0.01, questions: int = 16):
        self.killer = killer
        self.batches = batches
        self.sleep = sleep
        self.questions = questions

    def __call__(self, plan, report):
        from searchskip.search.objective import PlanScore

        acc = cheap_accuracy(plan.key())
        per_batch = max(1, self.questions // self.batches)
        for batch in range(1, self.batches):
            time.sleep(self.sleep)
            if report is not None:
                report(acc, batch * per_batch)
            self.killer.at("evaluating")
        time.sleep(self.sleep)
        return PlanScore(acc, {"what shape": acc}, self.questions)


def install_hooks(killer: Killer) -> None:
    import optuna
    from optuna.trial import TrialState

    from searchskip.search.objective import Objective
    from searchskip.search.space import Space

    suggest = Space.suggest

    def suggest_hook(self, trial, num_layers):
        plan = suggest(self, trial, num_layers)
        if isinstance(trial, optuna.trial.Trial):  # not the FixedTrial replays of Space.params_for (seeds)
            killer.at("sampling")
        return plan

    Space.suggest = suggest_hook

    call = Objective.__call__

    def call_hook(self, trial):
        killer.current_trial = trial.number
        value = call(self, trial)
        killer.at("recording")
        return value

    Objective.__call__ = call_hook

    for cls in (optuna.storages.JournalStorage, optuna.storages.RDBStorage):
        original = cls.set_trial_state_values

        def state_hook(self, trial_id, state, values=None, _original=original):
            if state == TrialState.COMPLETE:
                killer.at("telling")
            return _original(self, trial_id, state, values)

        cls.set_trial_state_values = state_hook


def study_summary(job, folder) -> dict:
    """Counted trials and best COMPLETE value of the study now (``None`` before it exists)."""
    import optuna
    from optuna.trial import TrialState

    from searchskip.search.storage import open_storage
    from searchskip.search.study import trial_counts

    from searchskip.search.storage import study_flock

    try:
        with study_flock(folder):  # as searchskip opens it: an RDB's tables are created by one process at a time
            study = optuna.load_study(study_name=job.name, storage=open_storage(job.search.storage, folder))
    except KeyError:
        return {"counted": 0, "best": None}
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return {"counted": trial_counts(study)["counted"], "best": max(values) if values else None}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("trials", type=int)
    parser.add_argument("--kill", default="none")
    parser.add_argument("--events", required=True)
    parser.add_argument("--go-file", default=None)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.01)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model
    from searchskip.search.study import run_search, study_dir, trial_counts

    job = load_job(args.job)
    folder = study_dir(job)
    killer = Killer(args.kill, args.events)
    loaded = load_model(job.model)
    dataset = load_eval_split(job.data, "validation")
    if args.go_file:  # start the workers together: the parent creates the file once all are ready
        emit(args.events, event="ready")
        while not os.path.exists(args.go_file):
            time.sleep(0.01)
    emit(args.events, event="start", kill=args.kill, **study_summary(job, folder))
    install_hooks(killer)

    def on_trial(study, trial):
        value = trial.values[0] if trial.values else None
        emit(args.events, event="trial", number=trial.number, state=trial.state.name, value=value)

    result = run_search(job, args.trials, None, evaluator=CheapEvaluator(killer, args.batches, args.sleep),
                        loaded=loaded, dataset=dataset, progress=False, handle_sigint=False, callbacks=[on_trial])
    emit(args.events, event="end", counted=trial_counts(result.study)["counted"], evaluations=result.evaluations,
         failed_stale=result.failed_stale)
    return 0


# ---- the parent's side (imported by the tests) ----------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
VALIDATION_QUESTIONS = 16


def write_job(folder: Path, name: str = "rel", **search) -> Path:
    """``jobs/demo.yaml`` with a small validation subset, no pruner, a budget every plan fits (so
    every counted trial is COMPLETE), outputs under ``folder``; ``search`` overrides."""
    import yaml

    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["name"] = name
    data["outputs"] = str(folder / "out")
    data["data"]["validation_subset"]["size"] = VALIDATION_QUESTIONS
    data["eval"]["batch_size"] = 8
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), "budget": {"flops_ratio": 1.0},
                           "pruner": "none", "seed_plans": True, **search})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def job_of(path: Path):
    from searchskip.config.loader import load_job

    return load_job(path)


def start_child(job: Path, trials: int, events: Path, *, kill: str = "none", go_file: Path | None = None,
                sleep: float = 0.01) -> subprocess.Popen:
    argv = [sys.executable, str(CHILD), str(job), str(trials), "--kill", kill, "--events", str(events),
            "--sleep", repr(sleep)]
    if go_file is not None:
        argv += ["--go-file", str(go_file)]
    return subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_study(job_path: Path) -> optuna.Study:
    """The study, opened the way ``searchskip`` opens it (a fresh storage object each time)."""
    import optuna

    from searchskip.search.storage import open_storage
    from searchskip.search.study import study_dir

    job = job_of(job_path)
    return optuna.load_study(study_name=job.name, storage=open_storage(job.search.storage, study_dir(job)))


@dataclass
class Check:
    complete: int
    counted: int
    failed: int
    retries: int
    dedups: int
    seeds: int


def check_study(study: optuna.Study) -> Check:
    """The invariants every study of the suite must hold once no process searches it."""
    from optuna.trial import TrialState

    from searchskip.search.study import trial_counts

    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), "a trial number appears twice"
    assert sorted(numbers) == list(range(len(trials))), "trial numbers have a gap"
    counts = trial_counts(study)
    assert counts["running"] == 0 and counts["waiting"] == 0, f"trials left behind: {counts}"
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:
        assert t.values is not None and "accuracy" in t.user_attrs and "plan_key" in t.user_attrs
    # No plan scored twice: a COMPLETE trial either scored its plan itself (once per plan) or reused
    # a COMPLETE trial's score (dedup_of); a plan scored again by a retry is scored once among the
    # COMPLETE trials, its first scoring having been lost with the killed trial (FAIL).
    scored = [t.user_attrs["plan_key"] for t in complete if "dedup_of" not in t.user_attrs]
    assert len(scored) == len(set(scored)), "a plan was scored (and recorded) twice"
    for t in complete:
        if "dedup_of" in t.user_attrs:
            original = by_number[t.user_attrs["dedup_of"]]
            assert original.state == TrialState.COMPLETE and "dedup_of" not in original.user_attrs
            assert original.user_attrs["plan_key"] == t.user_attrs["plan_key"] and original.values == t.values
    def plan_params(t) -> dict:  # what a killed trial is retried with: its fixed params (enqueued) or its params
        return dict(t.system_attrs.get("fixed_params") or {}) or dict(t.params)

    retries = [t for t in trials if "retry_of" in t.user_attrs]
    for t in retries:
        source = by_number[t.user_attrs["retry_of"]]
        assert source.state == TrialState.FAIL and plan_params(source) == t.system_attrs.get("fixed_params")
        assert t.state != TrialState.COMPLETE or plan_params(source).items() <= t.params.items()
        assert source.number < t.number
    retried = [t.user_attrs["retry_of"] for t in retries]
    assert len(retried) == len(set(retried)), "a failed trial was retried twice"
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "stale" in t.user_attrs.get("failed_reason", ""), (t.number, t.user_attrs)
            if "retry_of" not in t.user_attrs and plan_params(t):
                assert t.number in retried, f"failed trial {t.number} was not retried"
    seeds = [t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs and "retry_of" not in t.user_attrs]
    assert len(seeds) == len(set(seeds)), "a seed was enqueued twice"
    return Check(complete=len(complete), counted=counts["counted"], failed=counts["failed"], retries=len(retries),
                 dedups=sum("dedup_of" in t.user_attrs for t in complete), seeds=len(seeds))



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
