"""Run a search on Ray Tune (``search.backend: ray``): :func:`run_ray_search`.

**Design.** The driver (``searchskip search JOB``) opens or creates the study once
(:func:`~searchskip.search.study.prepare_study`: job copy, fingerprint check,
``--force-new-study``, stale trials of dead workers). If the study is new, one Ray task with the
worker's resources runs :func:`~searchskip.search.study.setup_worker` (measures the workload,
stores the unplanned FLOPs and the budget, enqueues the seeds). Then a ``ray.tune.Tuner`` runs
the trials: its searcher is Ray Tune's ``OptunaSearch`` on **the job's storage and study**
(:class:`StorageOptunaSearch`), with the job's sampler and a define-by-run space that suggests
the plan's parameters in the driver (seeds first: ``study.ask()`` pops the enqueued ones).
Each Tune trial runs in a Ray actor reserving ``search.resources_per_worker``
(``cpu``/``gpu``/``memory``/custom resources); at most ``search.workers`` run at once, and
actors are reused (``reuse_actors``), so **each worker process loads the model and the
validation subset once** (:func:`_worker`) for all the trials it runs.

**The trial body is the optuna backend's** (:class:`~searchskip.search.objective.Objective`):
the actor opens the Optuna trial the driver created (``optuna.trial.Trial(study, trial_id)``,
whose ``suggest_*`` return the stored parameters), prices the plan, records an over-budget plan
as infeasible without running the model, reuses the score of a duplicate plan, reports the
running accuracy to the study's pruner and stops a hopeless trial, and tells the study the
result itself. So ``StorageOptunaSearch`` never tells values: it only fails an Optuna trial that
its Tune trial left unfinished (an actor crash) and re-enqueues its parameters once. The storage
is the single source of truth: the journal file in the study folder (one node, or a filesystem
every node shares) or PostgreSQL/MySQL (many nodes; it has the heartbeat).

**Resume** goes through the storage, not ``Tuner.restore``: a killed driver takes its actors
with it, and the trials they left RUNNING carry the dead processes' ids (``worker``: the
driver's id while the trial waits for an actor, the actor's once it starts), so the next
``searchskip search JOB`` / ``searchskip resume DIR`` fails them, re-enqueues their parameters
and starts a new ``Tuner`` for the trials still missing. Tune's own experiment state goes to
``<study>/ray/<run>`` (one folder per run; nothing there is needed to resume).

**Ray cluster**: ``search.ray_address`` joins an existing cluster (``ray.init(address=...)``);
its services then listen beyond this machine (a warning is printed for a non-loopback address).
``null`` starts a local Ray for the run, only with ``search.ray_allow_network: true`` (the job is
refused otherwise, so that by default nothing searchskip starts listens beyond loopback), with ``num_cpus = os.cpu_count()``, no dashboard, the
node address 127.0.0.1 and worker output not forwarded, and shuts it down at the end. Ray 2.60
has no setting that binds its gRPC servers (GCS, raylet, core workers) to loopback: they listen
on all interfaces whatever the node address is, and a warning says so at every local start; what
protects them is Ray's token authentication, on by default in 2.60 (a local cluster generates
``~/.ray/auth_token``; do not set ``RAY_AUTH_MODE=disabled``).

**Ctrl-C** in the driver stops Tune (its first Ctrl-C ends the experiment); the trials it
stopped mid-run are failed and re-enqueued at once, and every finished trial is in the storage.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchskip.config.job import Job
from searchskip.search.study import SearchResult, prepare_study

__all__ = ["run_ray_search", "StorageOptunaSearch", "LOOPBACK", "ray_options", "TRIAL_ID"]

LOOPBACK = "127.0.0.1"
TRIAL_ID = "optuna_trial_id"
"""Config key carrying the Optuna trial id from the driver's searcher to the Tune trial."""


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """``search.resources_per_worker`` as Ray options (``num_cpus``, ``num_gpus``, ``memory``, ``resources``)."""
    opts: dict[str, Any] = {"num_cpus": 0}
    custom: dict[str, float] = {}
    for key, value in resources.items():
        if key == "cpu":
            opts["num_cpus"] = value
        elif key == "gpu":
            opts["num_gpus"] = value
        elif key == "memory":
            opts["memory"] = int(value)
        else:
            custom[key] = float(value)
    if custom:
        opts["resources"] = custom
    return opts


def tune_resources(resources: dict[str, float]) -> dict[str, float]:
    """``search.resources_per_worker`` as ``tune.with_resources`` takes it (``cpu``, ``gpu``, ``memory``, custom):
    the same keys, ``cpu: 0`` unless given, ``memory`` in whole bytes, custom amounts as floats."""
    out: dict[str, float] = {"cpu": 0}
    for key, value in resources.items():
        out[key] = value if key in ("cpu", "gpu") else int(value) if key == "memory" else float(value)
    return out


def _ray_cause(err: BaseException) -> BaseException:
    """The error a Ray task or Tune trial raised: a ``RayTaskError``'s cause as its own type (as a
    local call would have raised it), any other error as is."""
    cause = getattr(err, "as_instanceof_cause", None)
    return cause() if cause else err


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; ``True`` if this call started a local cluster."""
    import ray

    if address:
        if not _is_loopback(address):
            print(f"warning: search.ray_address={address!r}: Ray's services listen beyond this machine; "
                  "keep Ray's token authentication on (RAY_AUTH_MODE) and the cluster's ports firewalled",
                  file=sys.stderr)
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return False
    print("warning: search.ray_allow_network: true: a local Ray starts and its services listen on every network "
          "interface (Ray 2.60 cannot bind them to loopback); they are protected by Ray's token authentication, "
          "which must stay on. backend: optuna (with several `searchskip search` processes) listens on nothing.",
          file=sys.stderr)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address=LOOPBACK,
             ignore_reinit_error=True, log_to_driver=False)
    return True


# ---- the worker side (runs in Ray processes) -----------------------------------------------


@dataclass
class _Worker:
    study: Any
    objective: Any


_WORKERS: dict[tuple[str, str], _Worker] = {}
"""Per process: the loaded worker of each study (Tune reuses the actor across trials)."""


def _open_worker_study(job: Job, study_name: str, folder: Path) -> Any:
    import optuna

    from searchskip.search.storage import open_storage
    from searchskip.search.pruners import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The sampler is never asked: every parameter of a Tune trial was suggested by the driver, which
    # also checked (and repaired) the journal before any worker started.
    return optuna.load_study(study_name=study_name, storage=open_storage(job.search.storage, folder),
                             sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(job.search, job.eval.batch_size))


def _set_up(job: Job, study_name: str, folder: str, cwd: str) -> tuple[Any, Any]:
    """``(study, WorkerSetup)`` in this Ray process: the driver's working directory (the job's
    relative paths resolve as there), the study, and :func:`~searchskip.search.study.setup_worker`."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    from searchskip.config.loader import resolve_space
    from searchskip.search.space import Space
    from searchskip.search.worker import setup_worker

    study = _open_worker_study(job, study_name, Path(folder))
    return study, setup_worker(job, study, Path(folder), Space.load(resolve_space(job.search.space)))


def _setup_task(job: Job, study_name: str, folder: str, cwd: str) -> None:
    """The one-off Ray task of a new study: workload, unplanned FLOPs, budget and seeds."""
    _study, setup = _set_up(job, study_name, folder, cwd)
    if setup.evaluator is not None:  # the greedy seed's
        setup.evaluator.close()


def _worker(job: Job, study_name: str, folder: str, cwd: str) -> _Worker:
    """This process's worker for the study: model, subset and objective, loaded on first use."""
    key = (folder, study_name)
    if key not in _WORKERS:
        import atexit

        from searchskip.search.objective import Objective
        from searchskip.search.pruners import resolved_pruner
        from searchskip.search.storage import WorkerRegistration
        from searchskip.search.worker import make_evaluator

        registration = WorkerRegistration(Path(folder)).__enter__()  # left when the actor's process exits
        atexit.register(registration.__exit__, None, None, None)
        study, setup = _set_up(job, study_name, folder, cwd)
        evaluator = setup.evaluator or make_evaluator(job, setup.loaded, setup.dataset)
        atexit.register(evaluator.close)  # a disk feature cache is removed with the actor
        objective = Objective(setup.ctx, evaluator, prune=resolved_pruner(job.search) != "none")
        _WORKERS[key] = _Worker(study, objective)
    return _WORKERS[key]


def run_trial(study: Any, objective: Any, trial_id: int) -> dict[str, Any]:
    """Run the Optuna trial ``trial_id`` (created by the driver) through ``objective`` and tell the
    study its result, exactly as ``study.optimize`` would. Returns the metrics for Tune."""
    import optuna
    from optuna.trial import TrialState

    from searchskip.search.objective import OBJECTIVE_ATTRS

    trial = optuna.trial.Trial(study, trial_id)
    try:
        values = objective(trial)
    except optuna.TrialPruned:
        frozen = study.tell(trial, state=TrialState.PRUNED)
    except BaseException as err:
        trial.set_user_attr("failed_reason", f"{type(err).__name__}: {err}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        frozen = study.tell(trial, values)
    attrs = frozen.user_attrs
    # One metric per objective, by the objective's name (``accuracy``, ``flops``, ``latency``); a
    # pruned trial's accuracy is its running accuracy when the pruner stopped it.
    metrics: dict[str, Any] = {name: float(attrs.get(attr, math.nan)) for name, attr in OBJECTIVE_ATTRS.items()}
    for name in OBJECTIVE_ATTRS:
        if f"{name}_at_prune" in attrs:  # the running value of the objective the pruner watched
            metrics[name] = float(attrs[f"{name}_at_prune"])
    metrics["flops_ratio"] = metrics["flops"]
    metrics.update(optuna_state=frozen.state.name, optuna_number=frozen.number,
                   infeasible=bool(attrs.get("infeasible", False)))
    return metrics


EVALUATED = "evaluated"
"""Tune metric: the model evaluations the trial ran (``Objective.evaluations`` after minus before:
0 for an infeasible or duplicate plan, 1 for a plan scored on the model, pruned or not)."""


def _tune_trial(config: dict[str, Any], job: Job, study_name: str, folder: str, cwd: str) -> None:
    """The Tune trainable: one Optuna trial on this process's worker."""
    from ray import tune

    worker = _worker(job, study_name, folder, cwd)
    before = worker.objective.evaluations
    metrics = run_trial(worker.study, worker.objective, int(config[TRIAL_ID]))
    metrics[EVALUATED] = worker.objective.evaluations - before
    tune.report(metrics)


# ---- the driver side ------------------------------------------------------------------------


def _searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class _StorageOptunaSearch(OptunaSearch):
        """Ray Tune's ``OptunaSearch`` whose trials tell the study themselves (see the module doc).

        It asks the study in the driver (define-by-run ``space``), marks each asked trial with
        the driver's worker id, and on completion only fails (and re-enqueues once) an Optuna
        trial that its Tune trial left RUNNING."""

        target: Any = None
        """An :class:`~searchskip.search.evaluations.EvaluationTarget`: no new trial once the study
        holds its model evaluations, or once its proposals stall (``None``: no limit)."""

        def suggest(self, trial_id: str) -> Any:
            from ray.tune.search import Searcher

            from searchskip.search.evaluations import trial_counts

            target = self.target
            if target is not None and (target.stalled or (
                    target.target is not None and trial_counts(self._ot_study)["counted"] >= target.target)):
                return Searcher.FINISHED
            return super().suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            """The trial reported to the study itself."""

        def save_to_dir(self, dirpath: str, session_str: str = "default") -> None:
            """Nothing to checkpoint: the study's storage holds every trial, and resuming goes through it
            (OptunaSearch would pickle the study, the sampler and the space function here)."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            from optuna.trial import TrialState

            from searchskip.search.storage import fail_and_retry

            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials.get(trial_id)  # OptunaSearch's: Tune trial id -> the Optuna trial asked
            if ot_trial is None:
                return
            study = self._ot_study
            frozen = study._storage.get_trial(ot_trial._trial_id)
            if self.target is not None and frozen.state.is_finished():
                self.target.observe(frozen)
            if frozen.state == TrialState.RUNNING:
                fail_and_retry(study, frozen, "its Ray Tune trial ended without recording a result"
                               + (" (the trial raised an error)" if error else " (stopped)"))

    return _StorageOptunaSearch


def StorageOptunaSearch(*args: Any, **kwargs: Any) -> Any:
    """An instance of the searcher class (Ray is imported only when a Ray search runs)."""
    return _searcher_class()(*args, **kwargs)


def fail_unfinished(study: Any, numbers: list[int], reason: str) -> list[int]:
    """Fail (and re-enqueue once) those trials among ``numbers`` that are still RUNNING."""
    from optuna.trial import TrialState

    from searchskip.search.storage import fail_and_retry

    wanted = set(numbers)
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number in wanted and fail_and_retry(study, t, reason)]


def _define_by_run(space: Any, num_layers: int) -> Any:
    from searchskip.search.storage import worker_id

    me = worker_id()

    def define(trial: Any) -> dict[str, Any]:
        trial.set_user_attr("worker", me)  # the driver's until an actor takes the trial
        space.suggest(trial, num_layers)
        return {TRIAL_ID: trial.ot_trial._trial_id}

    return define


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def _progress_callback(view: Any, study: Any) -> Any:
    """Refreshes the progress view, and sums the trials' ``evaluated`` metric as their results
    arrive (``.evaluations``: also right after a Ctrl-C, when ``Tuner.fit`` returns no results)."""
    from ray.tune import Callback

    class _View(Callback):
        evaluations = 0

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.evaluations += int(result.get(EVALUATED) or 0)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            view.update(study, None)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            view.update(study, None)

    return _View()


def run_ray_search(
    job: Job,
    trials: int | None = None,
    timeout: float | None = None,
    *,
    study_name: str | None = None,
    outputs: str | None = None,
    folder: str | Path | None = None,
    force_new_study: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Search ``job`` with Ray Tune trials on its shared storage (see the module doc).

    Returns a :class:`~searchskip.search.study.SearchResult` (the study as the storage holds it
    at the end; ``evaluations`` counts the model evaluations the trials ran, as
    :attr:`Objective.evaluations <searchskip.search.objective.Objective.evaluations>` does)."""
    from searchskip.search.storage import live_workers
    from searchskip.search.evaluations import EvaluationTarget, trial_counts
    from searchskip.search.objective import directions
    from searchskip.search.progress import ProgressView
    from searchskip.search.samplers import sampler_for
    from searchskip.search.study import begin_run
    from searchskip.search.worker import study_done, study_fit, study_needs_setup

    search = job.search
    run = begin_run(job, trials, timeout, study_name, outputs, folder)
    trials, timeout, name, folder, space, start = run.trials, run.timeout, run.name, run.folder, run.space, run.start
    study, failed = prepare_study(job, folder, name, trials=trials, force_new_study=force_new_study,
                                  others_alive=bool(live_workers(folder)))
    if study_done(study, search, trials):
        return SearchResult(study=study, study_dir=folder, failed_stale=failed, seconds=time.perf_counter() - start)

    import ray
    from ray import tune

    local = _init_ray(search.ray_address)
    interrupted = False
    callback = None
    where = str(folder.absolute())
    try:
        if study_needs_setup(study, search):
            task = ray.remote(max_retries=0)(_setup_task).options(**ray_options(dict(search.resources_per_worker)))
            try:
                ray.get(task.remote(job, name, where, os.getcwd()))
            except ray.exceptions.RayTaskError as e:
                raise _ray_cause(e) from None
        num_layers = int(study.user_attrs["num_layers"])
        from searchskip.flops import resolve_config

        fit = study_fit(job, study, space, resolve_config(job.model)[0])
        sampler = sampler_for(search, space, num_layers, history=len(study.get_trials(deepcopy=False)), fit=fit)
        multi = len(search.objectives) > 1
        modes = ["max" if d == "maximize" else "min" for d in directions(search.objectives)]
        searcher = StorageOptunaSearch(
            space=_define_by_run(space, num_layers), study_name=name, storage=study._storage, sampler=sampler,
            metric=list(search.objectives) if multi else search.objectives[0], mode=modes if multi else modes[0])
        trainable = tune.with_resources(
            tune.with_parameters(_tune_trial, job=job, study_name=name, folder=where, cwd=os.getcwd()),
            tune_resources(dict(search.resources_per_worker)))
        view = ProgressView(study, trials, enabled=progress)
        callback = _progress_callback(view, study)
        searcher.target = EvaluationTarget(trials)  # the searcher stops proposing at the target (Tune: no limit)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=search.workers, reuse_actors=True,
                                        time_budget_s=timeout, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                      storage_path=str(folder.absolute() / "ray"), verbose=0,
                                      callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=0)))
        try:
            with view:
                grid = tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
            grid = None
        stopped = fail_unfinished(study, [t.number for t in searcher._ot_trials.values()],
                                  "its Ray Tune trial was stopped (Ctrl-C or the time limit) before it finished")
        if grid is not None:
            errors = [r.error for r in grid if r.error is not None]
            interrupted = interrupted or (trials is not None and timeout is None and not errors
                                          and not searcher.target.stalled and trial_counts(study)["counted"] < trials)
            if searcher.target.stalled:
                print(searcher.target.stall_message(), file=sys.stderr)
            if errors:
                raise _ray_cause(errors[0]) from None
        if interrupted:
            print(f"interrupted: Ray Tune stopped; the storage keeps every finished trial"
                  + (f", and the {len(stopped)} stopped mid-run were re-enqueued" if stopped else "")
                  + f": `searchskip resume {folder}` continues", file=sys.stderr)
    finally:
        if local:
            ray.shutdown()
    return SearchResult(study=study, study_dir=folder, interrupted=interrupted, failed_stale=failed,
                        evaluations=callback.evaluations if callback is not None else 0,
                        seconds=time.perf_counter() - start)
