"""Run a search (one machine, optuna): :func:`run_search`.

    result = run_search(job, trials=20)                 # job.search must be set
    result.study.best_trial.user_attrs["plan"]

**The study folder** ``<outputs>/<study>/`` (``<study>`` defaults to the job's name) holds
``job.yaml`` (the job file as it was at the first run, which ``searchskip resume`` reads),
``run.json`` (the working directory, study name, storage, and the trial target of the last run,
which ``searchskip resume`` keeps unless given ``--trials``), the journal
``study.journal`` (default storage), ``study.lock`` (an ``fcntl`` lock held while a process sets
the study up) and ``workers/<host>-<pid>`` (one per process searching it now).

**Several workers** (``search.workers: N``): start ``searchskip search JOB`` (or ``resume``) N
times on one machine (journal) or on several (PostgreSQL/MySQL: multi-host needs an RDB storage
with its heartbeat); each loads the model once and they share the study. The study ends with
between ``trials`` and ``trials + N - 1`` counted trials (each worker stops after its running
trial once the target is reached: ``MaxTrialsCallback``). Seeds are enqueued once (study attr
``seeded``); a worker that draws a plan another worker is scoring waits for it (``dedup_of``).

**Once per run**: the model and the validation subset are loaded once, the workload is
measured once on that subset and stored in the study's user attrs (``workload``) with the
``fingerprint`` (:mod:`searchskip.search.fingerprint`) and the unplanned model's FLOPs. A
resumed run reuses the stored workload (so FLOP ratios of old and new trials agree).

**Resume**: opening an existing study compares fingerprints and refuses any difference,
naming the field and both values, unless ``force_new_study`` (the old journal is kept as
``study.journal.old-<time>``; an RDB study is deleted). Trials left RUNNING by a killed
process are failed and their parameters re-enqueued once (:func:`~searchskip.search.storage.fail_stale_trials`):
only trials whose ``worker`` attr names a dead process on this host (or, with no other live
worker registered, trials without one); live workers' and other hosts' trials are left alone.

**Counting**: ``trials`` is the number of COMPLETE + PRUNED trials the study should hold at the
end (infeasible trials are PRUNED; failed trials do not count), so a resumed run finishes
exactly the missing ones. ``timeout`` (seconds) bounds this run's wall time.

**Seeds** (``search.seed_plans``): :mod:`searchskip.search.seeds`; the worker's setup, once per
study: :mod:`searchskip.search.worker`; the live view: :mod:`searchskip.search.progress`;
samplers and pruners: :mod:`searchskip.search.samplers`, :mod:`searchskip.search.pruners`.

**Ray** (``search.backend: ray``): :func:`searchskip.search.run.run_search` hands such a job to
:func:`searchskip.search.ray_backend.run_ray_search`, which runs Ray Tune trials (``OptunaSearch``
on this study) whose actors run the same trial body (:class:`Objective`) on the shared storage;
:func:`run_search` here runs trials in this process only.

**Ctrl-C**: the first stops the search after the running trial is recorded (``study.stop()``
from a callback; :attr:`SearchResult.interrupted`); a second one interrupts at once (the
running trial is then failed and retried by the next resume).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from searchskip.config.job import Job
from searchskip.config.loader import resolve_space
from searchskip.config.yaml_io import read_config_bytes
from searchskip.errors import ConfigError
from searchskip.search import fingerprint as fp
from searchskip.search.evaluations import EvaluationTarget, trial_counts
from searchskip.search.objective import Evaluator, Objective, directions
from searchskip.search.preflight import check_run
from searchskip.search.progress import ProgressView
from searchskip.search.pruners import make_pruner, resolved_pruner
from searchskip.search.samplers import sampler_for
from searchskip.search.storage import (
    JOURNAL_FILE, WorkerRegistration, fail_stale_trials, open_storage, repair_study_journal,
    study_flock,
)
from searchskip.search.study_files import read_run_info, write_atomic, write_run_info
from searchskip.search.worker import load_worker_inputs, make_evaluator, setup_worker, study_done

__all__ = ["SearchResult", "RunStart", "begin_run", "run_search", "run_targets", "prepare_study", "study_dir",
           "check_study_name", "open_study", "trial_counts", "RUN_FILE", "JOB_FILE"]

RUN_FILE = "run.json"
JOB_FILE = "job.yaml"
WORKER_SEED_STRIDE = 7919


class StudyMismatch(ConfigError):
    """The study folder holds a study of another job (fingerprint differs)."""


@dataclass
class SearchResult:
    study: Any
    study_dir: Path
    interrupted: bool = False
    failed_stale: list[int] = field(default_factory=list)
    evaluations: int = 0
    """Plans scored on the model in this run (not deduplicated, not infeasible)."""
    seconds: float = 0.0


def study_dir(job: Job, study: str | None = None, outputs: str | None = None) -> Path:
    """``<outputs>/<study>``: ``outputs`` defaults to ``job.outputs``, ``study`` to ``job.name``."""
    return Path(outputs if outputs is not None else job.outputs) / (study or job.name)


def check_study_name(name: str) -> str:
    """``name`` if it may name a study folder (:func:`~searchskip.config.names.name_problem`, the rule
    of a job's ``name:``), else a :class:`ConfigError` naming ``--study``, the rule and the value."""
    from searchskip.config.names import name_problem

    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(f"--study: {problem}")
    return name


# ---- the study ------------------------------------------------------------------------------


def _save_job_copy(job: Job, folder: Path, study_name: str, storage: str | None, trials: int | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if job.source_file and not (folder / JOB_FILE).exists():
        write_atomic(folder / JOB_FILE, read_config_bytes(job.source_file))
    run_file = folder / RUN_FILE
    info = read_run_info(run_file) if run_file.exists() else {}
    info.setdefault("cwd", os.getcwd())
    info.setdefault("job_file", str(Path(job.source_file).absolute()) if job.source_file else None)
    info.update(study=study_name, storage=storage, outputs=str(folder.parent), trials=trials)
    write_run_info(run_file, info)


def open_study(job: Job, folder: Path, study_name: str, *, force_new_study: bool = False) -> Any:
    """The study of ``folder`` (created if absent), checked against ``job``'s fingerprint.

    The journal is not checked for damage here: :func:`prepare_study` repairs it first."""
    import optuna

    search = job.search
    storage = open_storage(search.storage, folder)
    current = fp.fingerprint(job)
    exists = study_name in optuna.study.get_all_study_names(storage)
    if exists and force_new_study:
        if search.storage is None:
            journal = folder / JOURNAL_FILE
            journal.rename(folder / f"{JOURNAL_FILE}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            storage = open_storage(search.storage, folder)
        else:
            optuna.delete_study(study_name=study_name, storage=storage)
        exists = False
    if exists:
        study = optuna.load_study(study_name=study_name, storage=storage)
        stored = study.user_attrs.get("fingerprint")
        diffs = fp.differences(stored or {}, current)
        if diffs:
            lines = [f"{key}: the study has {json.dumps(old)}, the job has {json.dumps(new)}"
                     for key, old, new in diffs]
            raise StudyMismatch(
                [ConfigError(line).problems[0] for line in lines]
                + [ConfigError(f"the study {study_name!r} in {folder} was made by a different job; its trials are "
                               "not comparable. Use --force-new-study to start over (the old journal is kept), or "
                               "--study NAME for a separate study").problems[0]])
        return study
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions(search.objectives))
    study.set_user_attr("fingerprint", current)
    return study


@dataclass
class RunStart:
    """What both backends settle before a run: targets, study name and folder, the space."""

    trials: int | None
    timeout: float | None
    name: str
    folder: Path
    space: Any
    start: float


def begin_run(job: Job, trials: int | None, timeout: float | None, study_name: str | None,
              outputs: str | None, folder: str | Path | None = None) -> RunStart:
    """Check the run's targets (:func:`run_targets`), name its study and folder, load the space.

    The folder is ``folder`` when given (a resumed study, wherever it was copied or moved to), else
    ``<outputs>/<study_name>``, and then ``study_name`` must be a folder name (:func:`check_study_name`)."""
    import optuna

    from searchskip.search.space import Space

    start = time.perf_counter()
    if folder is None and study_name is not None:
        check_study_name(study_name)
    trials, timeout = run_targets(job, trials, timeout)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = Path(folder) if folder is not None else study_dir(job, study_name, outputs)
    return RunStart(trials, timeout, study_name or job.name, where, Space.load(resolve_space(job.search.space)), start)


def run_targets(job: Job, trials: int | None, timeout: float | None) -> tuple[int | None, float | None]:
    """``(trials, timeout)`` of a run: the arguments, else the job's; checked."""
    search = job.search
    trials = search.trials if trials is None else trials
    timeout = search.timeout_s if timeout is None else timeout
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials: `trials >= 1` must hold, but got trials={trials}")
    if trials is None and timeout is None:
        raise ConfigError("search.trials: `trials` or `timeout_s` must be set, but both are null")
    return trials, timeout


def prepare_study(job: Job, folder: Path, name: str, *, trials: int | None = None, force_new_study: bool = False,
                  others_alive: bool = False) -> tuple[Any, list[int]]:
    """``(study, failed_stale)``: under the study's lock, save the job copy and ``run.json`` (with the
    run's trial target ``trials``, which ``searchskip resume`` keeps), repair
    a torn journal (:func:`~searchskip.search.storage.repair_study_journal`, once per run, before
    anything is appended), open or create the study (fingerprint check, ``force_new_study``) and
    fail the stale RUNNING trials of dead local workers
    (:func:`~searchskip.search.storage.fail_stale_trials`). Both backends' drivers start here."""
    with study_flock(folder):
        _save_job_copy(job, folder, name, job.search.storage, trials)
        repair_study_journal(job.search.storage, folder)
        study = open_study(job, folder, name, force_new_study=force_new_study)
        failed = fail_stale_trials(study, others_alive=others_alive)
    return study, failed


def run_search(
    job: Job,
    trials: int | None = None,
    timeout: float | None = None,
    *,
    study_name: str | None = None,
    outputs: str | None = None,
    folder: str | Path | None = None,
    force_new_study: bool = False,
    evaluator: Evaluator | None = None,
    loaded: Any = None,
    dataset: Any = None,
    progress: bool = True,
    handle_sigint: bool = True,
    callbacks: list[Callable[[Any, Any], None]] | None = None,
) -> SearchResult:
    """Run (or continue) the search of ``job`` until the study holds ``trials`` counted trials.

    ``trials``/``timeout`` default to ``job.search.trials``/``timeout_s``. The study lives in
    ``folder`` when given (``searchskip resume``: the folder named, wherever it was copied, renamed
    or moved to; ``study_name`` is then the name of the study inside its storage), else in
    ``<outputs>/<study_name>`` (:func:`begin_run`). ``evaluator``
    replaces the model evaluation (tests); ``loaded``/``dataset`` reuse an already loaded
    model and validation subset (else both are loaded from the job, once).
    """
    import optuna

    search = job.search
    if search is None:
        raise ConfigError(f"{job.source_file or job.name}: search: the job has no `search` section, so it "
                          "cannot be searched; add one (see jobs/demo.yaml)")
    if search.backend == "ray":
        raise ValueError("run_search runs a search in this process; a job with backend: ray goes through "
                         "searchskip.search.run.run_search")
    run = begin_run(job, trials, timeout, study_name, outputs, folder)
    trials, timeout, name, folder, space, start = run.trials, run.timeout, run.name, run.folder, run.space, run.start
    if not _study_complete(job, folder, name, trials):
        # Bad data, an unloadable or unsupported model, a space that does not fit it or a budget no
        # plan can meet must stop the run before anything is written to outputs/.
        loaded, dataset = load_worker_inputs(job, loaded, dataset, need_dataset=evaluator is None)
        check_run(job, loaded, dataset, space)
    with WorkerRegistration(folder) as registration:  # under the study's lock: sees the other live workers
        study, failed = prepare_study(job, folder, name, trials=trials, force_new_study=force_new_study,
                                      others_alive=bool(registration.others))
        if study_done(study, search, trials):  # nothing to do: load nothing
            return SearchResult(study=study, study_dir=folder, failed_stale=failed,
                                seconds=time.perf_counter() - start)

        setup = setup_worker(job, study, folder, space, loaded=loaded, dataset=dataset,
                             need_dataset=evaluator is None, evaluator=evaluator, progress=progress)
        loaded, dataset, ctx = setup.loaded, setup.dataset, setup.ctx

        # Concurrent workers must not replay one sampler sequence: offset the seed by the number
        # of other live workers seen at registration (0 for a lone process: reproducible as before).
        history = len(study.get_trials(deepcopy=False)) + WORKER_SEED_STRIDE * len(registration.others)
        sampler = sampler_for(search, space, ctx.num_layers, history=history, fit=setup.fit)
        pruner = make_pruner(search, job.eval.batch_size)
        study = optuna.load_study(study_name=name, storage=study._storage, sampler=sampler, pruner=pruner)
        own = evaluator is None
        if own:
            evaluator = setup.evaluator or make_evaluator(job, loaded, dataset)
        objective = Objective(ctx, evaluator, prune=resolved_pruner(search) != "none")
        try:
            interrupted = _optimize(study, objective, trials, timeout, progress=progress,
                                    handle_sigint=handle_sigint, callbacks=callbacks or [])
        finally:
            if own:
                evaluator.close()  # a disk feature cache is removed
    return SearchResult(study=study, study_dir=folder, interrupted=interrupted, failed_stale=failed,
                        evaluations=objective.evaluations, seconds=time.perf_counter() - start)


def _study_complete(job: Job, folder: Path, name: str, trials: int | None) -> bool:
    """Whether the study already holds ``trials`` counted trials (checked without creating anything)."""
    import optuna

    # Only a journal file is checked: opening an RDB storage creates its tables, which must happen
    # under the study lock (two workers starting at once on a fresh database would race).
    if trials is None or job.search.storage is not None or not (folder / JOURNAL_FILE).exists():
        return False
    try:
        # Not repaired here (outside the study lock): a journal that cannot be read as it is
        # counts as unfinished, and prepare_study repairs it.
        study = optuna.load_study(study_name=name, storage=open_storage(job.search.storage, folder))
    except (KeyError, ValueError, TypeError):
        return False
    return study_done(study, job.search, trials)

def _optimize(study: Any, objective: Objective, trials: int | None, timeout: float | None, *,
              progress: bool, handle_sigint: bool, callbacks: list) -> bool:
    """Run trials until the study holds ``trials`` model evaluations, ``timeout`` passes, or the
    sampler stalls (:class:`~searchskip.search.evaluations.EvaluationTarget`); ``True`` if Ctrl-C stopped it."""
    stop = {"requested": False}
    counted = trial_counts(study)["counted"]
    if trials is not None and counted >= trials:
        return False

    def on_sigint(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    def stop_if_asked(study: Any, trial: Any) -> None:
        if stop["requested"]:
            study.stop()

    view = ProgressView(study, trials, enabled=progress)
    target = EvaluationTarget(trials)
    cbs = [target, view.update, *callbacks, stop_if_asked]
    previous = signal.signal(signal.SIGINT, on_sigint) if handle_sigint else None
    try:
        with view:
            study.optimize(objective, n_trials=None, timeout=timeout, callbacks=cbs, catch=(),
                           gc_after_trial=False, show_progress_bar=False)
    finally:
        if handle_sigint:
            signal.signal(signal.SIGINT, previous)
    if target.stalled:
        print(target.stall_message(), file=sys.stderr)
    return stop["requested"]


