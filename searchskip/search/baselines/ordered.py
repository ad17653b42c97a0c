"""One-shot plans from a per-layer score: put one op on the lowest-scoring layers, one at a time,
until a FLOP budget is met (:func:`least_first_plan`). ShortGPT's Block Influence and ShortV's
Layer Contribution turn their scores into plans this way."""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Sequence

from searchskip.flops import Budget, Workload, count_flops, geometry_of
from searchskip.plan import LayerOp, Plan

__all__ = ["least_first_plan", "labelled_plans"]


def least_first_plan(scores: Sequence[float], arch: Any, workload: Workload, budget: Budget, *, op: str,
                     scope: str, exclude: Collection[int] = (), what: str = "score") -> Plan | None:
    """The plan with ``op`` (token scope ``scope``) on the layers of lowest ``scores``, just enough
    of them to fit ``budget``.

    Layers are taken one at a time in increasing score (ties: the lower index first), layers in
    ``exclude`` never; after each one the plan's FLOPs (:func:`~searchskip.flops.count_flops` of
    ``arch`` on ``workload``, under the budget's count/attention convention) are checked against
    ``budget`` and the first plan that fits is returned, so the plan with one layer fewer does
    not fit. The empty plan when the unplanned model already fits; ``None`` when even every
    allowed layer does not fit. ``ValueError`` when ``len(scores)`` is not the number of decoder
    layers of ``arch`` or a score is not finite (``what`` names the scores in the message).
    """
    geometry = geometry_of(arch)
    values = [float(v) for v in scores]
    if len(values) != geometry.num_layers:
        raise ValueError(f"{what} has {len(values)} values, but the model has {geometry.num_layers} decoder layers")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"every {what} must be finite, but got {values}")
    baseline = count_flops(geometry, None, workload)

    def fits(plan: Plan) -> bool:
        return budget.allows(count_flops(geometry, plan, workload), baseline)

    plan = Plan(scope=scope)
    if fits(plan):
        return plan
    chosen: dict[int, LayerOp] = {}
    for i in sorted((i for i in range(len(values)) if i not in exclude), key=lambda i: (values[i], i)):
        chosen[i] = LayerOp(op)
        plan = Plan(layers=chosen, scope=scope)
        if fits(plan):
            return plan
    return None


def labelled_plans(family: str, ops: Sequence[str], plan_for: Callable[[str], Plan | None]) -> list[tuple[str, Plan]]:
    """``(family:op, plan_for(op))`` for every op of ``ops`` whose plan exists and changes something
    (what the study seeds and the benchmarks compare with)."""
    plans = ((op, plan_for(op)) for op in ops)
    return [(f"{family}:{op}", plan) for op, plan in plans if plan is not None and not plan.is_empty]
