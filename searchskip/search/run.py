"""Run a job's search on the backend it names: :func:`run_search`.

    from searchskip.search.run import run_search
    result = run_search(job, trials=20)

``search.backend: optuna`` runs the trials in this process
(:func:`searchskip.search.study.run_search`; start the command once per worker);
``backend: ray`` runs them as Ray Tune trials (:func:`searchskip.search.ray_backend.run_ray_search`).
Both return a :class:`~searchskip.search.study.SearchResult`. This module is the only one that
knows both backends, so neither imports the other's driver.
"""

from __future__ import annotations

from typing import Any

from searchskip.config.job import Job
from searchskip.errors import ConfigError

__all__ = ["run_search"]


def run_search(job: Job, trials: int | None = None, timeout: float | None = None, **options: Any) -> Any:
    """Search ``job`` with its backend. ``options``: those of the backend's driver
    (``study_name``, ``outputs``, ``folder``, ``force_new_study``, ``progress``; the in-process
    backend also takes ``evaluator``, ``loaded``, ``dataset``, ``handle_sigint``, ``callbacks``)."""
    if job.search is None:
        raise ConfigError(f"{job.source_file or job.name}: search: the job has no `search` section, so it "
                          "cannot be searched; add one (see jobs/demo.yaml)")
    if job.search.backend == "ray":
        from searchskip.search.ray_backend import run_ray_search

        ray_options = {k: options[k] for k in ("study_name", "outputs", "folder", "force_new_study", "progress")
                       if k in options}
        return run_ray_search(job, trials, timeout, **ray_options)
    from searchskip.search.study import run_search as run_here

    return run_here(job, trials, timeout, **options)
