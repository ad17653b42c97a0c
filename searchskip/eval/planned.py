"""Score a model with a compression plan applied: :func:`apply_plan` and its Wanda calibration.

Library code shared by the ``eval`` verb, the search's workers
(:func:`searchskip.search.study.make_evaluator`) and the export (:func:`searchskip.export.writer.export_plan`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply_plan", "check_unplanned", "plan_calibration"]


def check_unplanned(loaded: Any, source: str, key: str = "") -> None:
    """Refuse (:class:`~searchskip.errors.ConfigError` naming ``source`` and ``key``) to plan a model
    that already runs a plan: the runtime plan of the export its folder holds
    (:func:`~searchskip.export.model.apply_runtime_plan`). Plans do not stack; the export's source
    model takes any plan."""
    from searchskip.apply import applied_plan
    from searchskip.errors import ConfigError, Problem

    if applied_plan(loaded.model) is None:
        return
    raise ConfigError([Problem(source, key, (
        f"the model in {loaded.source} is an export that runs its own runtime plan (searchskip_export.json), "
        "and plans do not stack, so another plan cannot be applied to it; use the model the export was made "
        "from (its metrics.json names it) with the combined plan"))])


def plan_calibration(loaded: Any, job: Any, plan: Any, calibration_cache: dict | None = None) -> Any:
    """The calibration batches ``plan``'s pruning needs (Wanda: from the job's train split), or ``None``.

    ``calibration_cache`` (a dict kept by the caller, e.g. one per search worker) keeps the
    batches by ``(samples, seed)``, so trials after the first reuse them instead of reloading
    the train split and re-running the processor.
    """
    from searchskip.data.splits import load_split
    from searchskip.ops.calibration import calibration_batches

    if plan.prune is None or plan.prune.calibration is None:
        return None
    cal = plan.prune.calibration
    key = (cal.samples, cal.seed)
    if calibration_cache is not None and key in calibration_cache:
        return calibration_cache[key]
    train = load_split(job.data, "train", check_disjoint=False)
    calibration = calibration_batches(loaded, train, cal.samples, cal.seed, job.eval.batch_size)
    if calibration_cache is not None:
        calibration_cache[key] = calibration
    return calibration


def apply_plan(loaded: Any, job: Any, plan: Any, source: str, calibration_cache: dict | None = None, *,
               calibration: Any = None) -> Any:
    """Apply ``plan`` to the loaded model in place; returns the handle whose ``restore()`` undoes it.

    Pruning is calibrated with ``calibration`` when the caller already has the batches
    (:func:`plan_calibration`'s result), else with :func:`plan_calibration`'s batches
    (``calibration_cache`` as there). ``source`` (the plan file or a label) names the plan in
    model-dependent plan errors. A model that runs an export's runtime plan is refused
    (:func:`check_unplanned`).
    """
    from searchskip.apply import apply
    from searchskip.errors import ConfigError, in_job

    check_unplanned(loaded, source)
    if calibration is None:
        calibration = plan_calibration(loaded, job, plan, calibration_cache)
    try:
        return apply(loaded.model, plan, calibration=calibration)
    except ConfigError as err:  # name the plan file in model-dependent plan errors
        raise in_job(source, err) from None
