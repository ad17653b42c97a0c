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
from pathlib import Path

# tests/ holds the shared helpers; as a script this file has only tests/reliability/ on sys.path.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers import ENV, REPO, demo_job  # noqa: E402

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

    from searchskip.search.storage import open_storage, study_flock
    from searchskip.search.study import trial_counts

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

CHILD = Path(__file__).resolve()
VALIDATION_QUESTIONS = 16


def write_job(folder: Path, name: str = "rel", **search) -> Path:
    """``folder/job.yaml``: ``jobs/demo.yaml`` with a small validation subset, no pruner, a budget every plan fits (so
    every counted trial is COMPLETE) and proposals taken as drawn (``fit_budget: false``: at a budget of 1 the fit
    would give every skip back), outputs under ``folder``; ``search`` overrides."""
    return demo_job(folder, name=name, questions=VALIDATION_QUESTIONS, eval={"batch_size": 8},
                    **{"budget": {"flops_ratio": 1.0}, "pruner": "none", "seed_plans": True, "fit_budget": False,
                       **search})


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
