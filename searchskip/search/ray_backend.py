"""Run a search on Ray (``search.backend: ray``): :func:`run_ray_search`.

**Design.** The driver (``searchskip search JOB``) opens or creates the study once
(:func:`~searchskip.search.study.prepare_study`: job copy, fingerprint check,
``--force-new-study``, stale trials of dead workers), then starts ``search.workers`` Ray actors,
each reserving ``search.resources_per_worker`` (``cpu``/``gpu``/``memory``/custom resources).
Every actor loads the model and the validation subset once and runs the very same worker loop
as ``backend: optuna`` (:func:`~searchskip.search.study.run_search`) against the job's shared
storage: the journal file in the study folder (one node, or a filesystem every node shares) or
PostgreSQL/MySQL (many nodes; it has the heartbeat). So everything the optuna backend does holds
unchanged: each actor registers as a worker and records ``worker`` = host:pid on its trials,
seeds are enqueued once under the study's file lock (by the first actor to get it),
``MaxTrialsCallback`` stops the study at ``trials`` to ``trials + workers - 1`` counted trials,
plans over budget are recorded as infeasible before any compute, duplicates wait for the trial
scoring them, and trials are pruned on intermediate accuracy. The driver only watches (a
progress line read from the storage) and waits.

**Why not Ray Tune's ``OptunaSearch``**: it asks and tells in the driver and runs only the
objective in the trial actors, so the trial would be created before the plan is costed (no
infeasible record before any compute), duplicate plans could not wait on the trial already
scoring them, the actors could not report intermediate accuracy to the study's pruner, and
a killed driver would lose the sampler's pending trials instead of leaving them in the storage
for ``searchskip resume`` to fail and retry. Running optuna's own worker loop in each actor keeps
the storage the single source of truth.

**Ray cluster**: ``search.ray_address`` joins an existing cluster (``ray.init(address=...)``);
its services then listen beyond this machine (a warning is printed for a non-loopback address).
``null`` starts a local Ray for the run, with ``num_cpus = os.cpu_count()``, no dashboard, the
node address 127.0.0.1 and worker output not forwarded, and shuts it down at the end. Ray 2.60
has no setting that binds its gRPC servers (GCS, raylet, core workers) to loopback: they listen
on all interfaces whatever the node address is, and a warning says so at every local start; what
protects them is Ray's token authentication, on by default in 2.60 (a local cluster generates ``~/.ray/auth_token``; do not
set ``RAY_AUTH_MODE=disabled``).

**Ctrl-C** in the driver kills the actors (``ray.kill``); the storage keeps every finished trial,
and the trials they left RUNNING (their pids are dead) are failed and retried by the next
``searchskip resume``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from searchskip.config.job import Job
from searchskip.search.study import SearchResult, prepare_study, run_targets, study_dir

__all__ = ["run_ray_search", "LOOPBACK", "ray_options"]

LOOPBACK = "127.0.0.1"
POLL_S = 1.0


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """``search.resources_per_worker`` as Ray actor options (``num_cpus``, ``num_gpus``, ``memory``, ``resources``)."""
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


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _worker_loop(job: Job, trials: int | None, timeout: float | None, study_name: str, outputs: str,
                 cwd: str) -> dict[str, Any]:
    """The body of one actor: the optuna backend's worker loop on the shared storage."""
    if os.path.isdir(cwd):  # relative paths of the job (space, outputs) resolve as in the driver
        os.chdir(cwd)
    from searchskip.search.study import run_search

    job = dataclasses.replace(job, search=dataclasses.replace(job.search, backend="optuna"))
    result = run_search(job, trials, timeout, study_name=study_name, outputs=outputs, progress=False,
                        handle_sigint=False)
    return {"pid": os.getpid(), "evaluations": result.evaluations, "failed_stale": result.failed_stale,
            "interrupted": result.interrupted}


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
    print("warning: backend: ray starts a local Ray whose services listen on every network interface "
          "(Ray 2.60 cannot bind them to loopback); they are protected by Ray's token authentication, "
          "which must stay on. backend: optuna (with several `searchskip search` processes) listens on nothing.",
          file=sys.stderr)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address=LOOPBACK,
             ignore_reinit_error=True, log_to_driver=False)
    return True


def run_ray_search(
    job: Job,
    trials: int | None = None,
    timeout: float | None = None,
    *,
    study_name: str | None = None,
    outputs: str | None = None,
    force_new_study: bool = False,
    progress: bool = True,
) -> SearchResult:
    """Search ``job`` with ``search.workers`` Ray actors on its shared storage (see the module doc).

    Returns a :class:`~searchskip.search.study.SearchResult` (the study as the storage holds it
    at the end; ``evaluations`` and ``failed_stale`` summed over the actors)."""
    from searchskip.search.storage import live_workers
    from searchskip.search.study import _ProgressView, trial_counts

    search = job.search
    trials, timeout = run_targets(job, trials, timeout)
    name = study_name or job.name
    folder = study_dir(job, study_name, outputs)
    start = time.perf_counter()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, failed = prepare_study(job, folder, name, force_new_study=force_new_study,
                                  others_alive=bool(live_workers(folder)))
    if trials is not None and trial_counts(study)["counted"] >= trials:
        return SearchResult(study=study, study_dir=folder, failed_stale=failed, seconds=time.perf_counter() - start)

    import ray

    local = _init_ray(search.ray_address)
    actors: list[Any] = []
    interrupted = False
    evaluations = 0
    try:
        Worker = ray.remote(max_restarts=0)(_RayWorker).options(**ray_options(dict(search.resources_per_worker)))
        actors = [Worker.remote() for _ in range(search.workers)]
        refs = [a.run.remote(job, trials, timeout, name, str(folder.parent.absolute()), os.getcwd())
                for a in actors]
        pending = list(refs)
        view = _ProgressView(study, trials, enabled=progress)
        try:
            with view:
                while pending:
                    _done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
                    view.update(study, None)
        except KeyboardInterrupt:
            interrupted = True
            for actor in actors:
                ray.kill(actor, no_restart=True)
            print(f"interrupted: the Ray workers were stopped; the storage keeps every finished trial and the "
                  f"next run fails and retries the ones they left running: `searchskip resume {folder}`",
                  file=sys.stderr)
        if not interrupted:
            for ref in refs:
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                evaluations += out["evaluations"]
                failed += [n for n in out["failed_stale"] if n not in failed]
                interrupted = interrupted or out["interrupted"]
    finally:
        if local:
            ray.shutdown()
    study = optuna.load_study(study_name=name, storage=study._storage)
    return SearchResult(study=study, study_dir=folder, interrupted=interrupted, failed_stale=failed,
                        evaluations=evaluations, seconds=time.perf_counter() - start)


class _RayWorker:
    """One search worker (a Ray actor): its own process, so its own pid, worker id and model."""

    def run(self, job: Job, trials: int | None, timeout: float | None, study_name: str, outputs: str,
            cwd: str) -> dict[str, Any]:
        return _worker_loop(job, trials, timeout, study_name, outputs, cwd)
