"""The plans a study scores first (``search.seed_plans``): :func:`seed_plans`, enqueued once.

The unplanned model, the paper's interval plans (:meth:`Plan.from_pattern` with modes
skip_block, skip_attn, skip_ffn, intervals 2..4, start layers
:func:`~searchskip.search.baselines.default_start_layers` (every second layer), end = n),
ShortGPT's Block Influence plans and, when the space offers ops with scope ``visual``, ShortV's
Layer Contribution plans (:mod:`searchskip.search.baselines`), each only if it fits the
budget **and** the space can express it (:meth:`Space.params_for` is not ``None``); plans
outside the space are left out (a trial must be reproducible from its parameters). Seeds run
first, in that order, and are enqueued once (optuna's ``skip_if_exists``).
"""

from __future__ import annotations

from typing import Any, Callable

from searchskip.config.job import Job
from searchskip.plan import SCOPE_VISUAL, LayerOp, Plan
from searchskip.search.baselines import (
    LC_OPS, block_influence, labelled_block_influence_plans, labelled_layer_contribution_plans, labelled_paper_plans,
    layer_contribution,
)
from searchskip.search.objective import ObjectiveContext, plan_cost

__all__ = ["seed_plans", "calibration_questions", "offers_visual_scope", "baseline_seeds", "enqueue_seeds",
           "CALIBRATION_SAMPLES"]


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


CALIBRATION_SAMPLES = 64
"""Validation questions the Block Influence and Layer Contribution seeds and the budget fit's harm
are measured on (the first run only; stored)."""


def calibration_questions(job: Job, loaded: Any, dataset: Any) -> list[dict]:
    """``CALIBRATION_SAMPLES`` questions of ``dataset`` (the validation subset: the search's own split,
    never the test split), drawn with ``search.seed``, as model inputs."""
    from searchskip.ops.calibration import calibration_batches

    return calibration_batches(loaded, dataset, min(CALIBRATION_SAMPLES, len(dataset)), job.search.seed,
                               job.eval.batch_size)


def offers_visual_scope(ctx: ObjectiveContext) -> bool:
    """Whether the space can express a plan that freezes one layer's image tokens (an op of
    :data:`~searchskip.search.baselines.LC_OPS` with scope ``visual``)."""
    n = ctx.num_layers
    return any(ctx.space.params_for(Plan(layers={i: LayerOp(op, SCOPE_VISUAL)}), n) is not None
               for i in reversed(range(n)) for op in LC_OPS)


def _stored(study: Any, attr: str, measure: Any, dataset: Any) -> list[float] | None:
    """The study's ``attr``, measured (``measure()``) and stored the first time; ``None`` without data."""
    values = study.user_attrs.get(attr)
    if values is None:
        if dataset is None or len(dataset) == 0:
            return None
        values = measure()
        study.set_user_attr(attr, values)
    return values


def baseline_seeds(study: Any, loaded: Any, dataset: Any, ctx: ObjectiveContext,
                   calibration: Callable[[], list[dict]]) -> list[tuple[str, Plan]]:
    """ShortGPT's Block Influence plans (:func:`~searchskip.search.baselines.labelled_block_influence_plans`:
    the least influential layers skipped until the budget fits) and, when the space offers scope
    ``visual`` (:func:`offers_visual_scope`), ShortV's Layer Contribution plans
    (:func:`~searchskip.search.baselines.labelled_layer_contribution_plans`: the image tokens of the
    least contributing layers frozen until the budget fits). Each score is measured once and stored
    in the study (``block_influence``, ``layer_contribution``), so a resumed run reuses it, on
    ``calibration()`` (:func:`calibration_questions`, built once by the caller). Returns ``[]`` when
    nothing can be measured."""
    out: list[tuple[str, Plan]] = []
    bi = _stored(study, "block_influence", lambda: block_influence(loaded.model, calibration()), dataset)
    if bi is not None:
        out += labelled_block_influence_plans(bi, ctx.arch, ctx.workload, ctx.budget)
    if offers_visual_scope(ctx):
        lc = _stored(study, "layer_contribution", lambda: layer_contribution(loaded.model, calibration()), dataset)
        if lc is not None:
            out += labelled_layer_contribution_plans(lc, ctx.arch, ctx.workload, ctx.budget)
    return out


def enqueue_seeds(study: Any, seeds: list[tuple[str, Plan, dict]]) -> int:
    before = len(study.get_trials(deepcopy=False))
    for label, _plan, params in seeds:
        study.enqueue_trial(params, user_attrs={"seed": label}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before
