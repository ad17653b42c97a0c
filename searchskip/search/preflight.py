"""What a search checks before it creates or writes its study folder, so that a refused run leaves
nothing behind (a study folder's fingerprint would otherwise block the corrected job).

* :func:`check_model_family`: the model's family, read from its ``config.json`` alone (no weights):
  ``searchskip validate`` runs it, so a job is not OK when no other verb supports its model.
* :func:`check_run`: once the model and the validation subset are loaded, the model's family (its
  architecture adapter), the space against the model's decoder layers, and the budget
  (:func:`check_budget_reachable`).

Every failure is a :class:`~searchskip.errors.SearchSkipError` naming the job file and the key.
"""

from __future__ import annotations

from typing import Any

from searchskip.config.job import Job
from searchskip.errors import ConfigError, DataError, Problem, SearchSkipError, in_job

__all__ = ["check_model_family", "check_run", "check_budget_reachable"]


def _where(job: Job) -> str:
    return job.source_file or job.name


def check_model_family(job: Job, *, processor: bool = False) -> None:
    """:class:`~searchskip.errors.ModelError` (naming the job file and ``model.id``) when the job's
    model is of a family no verb supports, judged from its files without its weights
    (:func:`~searchskip.models.check_family`); with ``processor``, also when its processor disagrees
    with its config or with the job's prompt template (:func:`~searchskip.models.checked_processor`:
    ``searchskip validate``; the other verbs check that as they load the model). Only local folders
    are checked: the embedded models are supported, and a hub id would need the network (it is
    checked when it is loaded)."""
    from pathlib import Path

    from searchskip.config.job import EMBEDDED_PREFIX
    from searchskip.models import check_family, checked_processor

    if job.model.id.startswith(EMBEDDED_PREFIX):
        return
    try:
        check_family(job.model)
        if processor and Path(job.model.id).is_dir():
            checked_processor(job.model)
    except SearchSkipError as e:
        raise in_job(_where(job), e, "model.id") from None


def check_run(job: Job, loaded: Any, dataset: Any, space: Any) -> None:
    """Everything a search can check once its model (``loaded``) and validation subset
    (``dataset``; ``None``: the budget is checked later, by the worker) are loaded, before any
    folder is created: the model's family, ``space`` against its decoder layers, and the budget."""
    from searchskip.arch import get_adapter
    from searchskip.flops import count_flops, measure_workload
    from searchskip.search.objective import budget_of

    model = loaded.model
    try:
        num_layers = get_adapter(model).num_layers(model)
    except SearchSkipError as e:
        raise in_job(_where(job), e, "model.id") from None
    space.check(num_layers)
    if dataset is None:
        return
    budget = budget_of(job.search.budget)
    try:
        workload = measure_workload(loaded, dataset, job.eval.max_new_tokens)
    except DataError as e:  # an image the model's processor refuses
        raise in_job(_where(job), e, "data.splits.validation") from None
    baseline = count_flops(model.config, None, workload, count=budget.count, attention=budget.attention)
    check_budget_reachable(budget, baseline, _where(job))
    from searchskip.search.budget_fit import BudgetFit
    from searchskip.search.objective import ObjectiveContext

    ctx = ObjectiveContext(space=space, num_layers=num_layers, arch=model.config, workload=workload, budget=budget,
                           baseline=baseline)
    BudgetFit(ctx).check_feasible(_where(job))  # the space's cheapest plan must fit too


def check_budget_reachable(budget: Any, baseline: Any, job_file: str | None = None) -> None:
    """:class:`ConfigError` (``search.budget.<key>``) when ``budget`` (a
    :class:`~searchskip.flops.Budget`) is below what no plan changes
    (:meth:`~searchskip.flops.FlopReport.fixed_total` of the unplanned ``baseline``): every trial would be
    recorded as over budget. The message gives the smallest budget any plan could meet."""
    total = budget.cost(baseline)
    shapes = [baseline] + [b for _, b in baseline.variants]  # the mean, and every image size
    fixed = [(b.fixed_total(budget.count, budget.attention), budget.cost(b)) for b in shapes]
    if all(budget.limit(b) >= f * (1 - 1e-9) for b, (f, _) in zip(shapes, fixed)) or not total:
        return
    # the shape (the mean, or an image size) that needs the largest budget: by share or by FLOPs
    floor, total = max(fixed, key=(lambda ft: ft[0] / ft[1] if ft[1] else 0.0) if budget.ratio is not None
                       else (lambda ft: ft[0]))
    which = "on this workload" if len(shapes) == 1 else "on the workload's most demanding image size"
    why = ("no plan can cost less than what no plan changes (vision tower, projector, lm_head: "
           f"{floor / total:.4f}x the unplanned model's FLOPs, {floor / 1e9:.4g} GFLOPs per sample {which}), "
           "so every trial would be recorded as over budget")
    if budget.ratio is not None:
        key, rule = "flops_ratio", (f"`flops_ratio >= {_round_up(floor / total)}` must hold: {why}; but got "
                                    f"flops_ratio={budget.ratio!r}")
    else:
        key, rule = "gflops_per_sample", (f"`gflops_per_sample >= {_round_up(floor / 1e9)}` must hold: {why}; "
                                          f"but got gflops_per_sample={budget.gflops!r}")
    raise ConfigError([Problem(job_file, f"search.budget.{key}", rule)])


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (a bound a user can copy and meet)."""
    import math

    if value <= 0:
        return value
    scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale
