"""The plans a study scores first (``search.seed_plans``): :func:`seed_plans`, enqueued once.

The unplanned model, the paper's interval plans (:meth:`Plan.from_pattern` with modes
skip_block, skip_attn, skip_ffn, intervals 2..4, start layers
:func:`~searchskip.search.baselines.default_start_layers` (every second layer), end = n) and
ShortGPT's Block Influence plans (:mod:`searchskip.search.baselines`), each only if it fits the
budget **and** the space can express it (:meth:`Space.params_for` is not ``None``); plans
outside the space are left out (a trial must be reproducible from its parameters). Seeds run
first, in that order, and are enqueued once (optuna's ``skip_if_exists``).
"""

from __future__ import annotations

from typing import Any

from searchskip.config.job import Job
from searchskip.plan import Plan
from searchskip.search.baselines import block_influence, labelled_block_influence_plans, labelled_paper_plans
from searchskip.search.objective import ObjectiveContext, plan_cost

__all__ = ["seed_plans", "measure_block_influence", "baseline_seeds", "enqueue_seeds", "BI_SAMPLES"]


def seed_plans(ctx: ObjectiveContext, extra: list[tuple[str, Plan]] | None = None) -> list[tuple[str, Plan, dict]]:
    """``(label, plan, params)`` of the seeds that fit the budget and the space, without duplicates."""
    n = ctx.num_layers
    candidates: list[tuple[str, Plan]] = [("unplanned", Plan()), *labelled_paper_plans(n)]
    candidates += extra or []
    out: list[tuple[str, Plan, dict]] = []
    seen: set[str] = set()
    for label, plan in candidates:
        key = plan.key()
        if key in seen:
            continue
        seen.add(key)
        params = ctx.space.params_for(plan, n)
        if params is None or not plan_cost(ctx, plan)[2]:
            continue
        out.append((label, plan, params))
    return out


BI_SAMPLES = 64
"""Validation questions the Block Influence seed is measured on (the first run only; stored)."""


def measure_block_influence(job: Job, loaded: Any, dataset: Any) -> list[float]:
    """ShortGPT's Block Influence of every decoder layer, measured on ``BI_SAMPLES`` questions of
    ``dataset`` (the validation subset: the search's own split, never the test split), drawn with
    ``search.seed``."""
    from searchskip.ops.calibration import calibration_batches

    batches = calibration_batches(loaded, dataset, min(BI_SAMPLES, len(dataset)), job.search.seed,
                                  job.eval.batch_size)
    return [float(v) for v in block_influence(loaded.model, batches)]


def baseline_seeds(study: Any, job: Job, loaded: Any, dataset: Any, ctx: ObjectiveContext) -> list[tuple[str, Plan]]:
    """ShortGPT's Block Influence plans (:func:`~searchskip.search.baselines.labelled_block_influence_plans`):
    the least influential layers skipped until the budget fits. BI is measured once
    (:func:`measure_block_influence`) and stored in the study (``block_influence``), so a resumed
    run reuses it. Returns ``[]`` when no BI can be measured."""
    bi = study.user_attrs.get("block_influence")
    if bi is None:
        if dataset is None or len(dataset) == 0:
            return []
        bi = measure_block_influence(job, loaded, dataset)
        study.set_user_attr("block_influence", bi)
    return labelled_block_influence_plans(bi, ctx.arch, ctx.workload, ctx.budget)


def enqueue_seeds(study: Any, seeds: list[tuple[str, Plan, dict]]) -> int:
    before = len(study.get_trials(deepcopy=False))
    for label, _plan, params in seeds:
        study.enqueue_trial(params, user_attrs={"seed": label}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before
