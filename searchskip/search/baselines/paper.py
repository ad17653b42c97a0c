"""The seed paper's interval plans (:meth:`~searchskip.plan.Plan.from_pattern` over modes x intervals x
start layers), one shared definition for the study's seeds and the benchmarks; :func:`best_fitting`
keeps those that fit a budget."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from searchskip.flops import Budget, FlopReport, Workload, count_flops, geometry_of
from searchskip.plan import SCOPE_ALL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, Plan

__all__ = ["PAPER_MODES", "PAPER_INTERVALS", "default_start_layers", "paper_interval_plans", "labelled_paper_plans",
           "best_fitting"]

PAPER_MODES: tuple[str, ...] = (SKIP_BLOCK, SKIP_ATTN, SKIP_FFN)
"""The default modes of :func:`paper_interval_plans`."""

PAPER_INTERVALS: tuple[int, ...] = (2, 3, 4)
"""The default skip intervals of :func:`paper_interval_plans`."""


def default_start_layers(num_layers: int) -> tuple[int, ...]:
    """The start layers :func:`paper_interval_plans` uses by default: every second layer
    from 0 to ``num_layers - 2`` (so ``0, 2, 4, 6`` for 8 layers; ``(0,)`` for 1 or 2)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer >= 1, but got {num_layers!r}")
    return tuple(range(0, max(num_layers - 1, 1), 2))


def paper_interval_plans(num_layers: int, **options: Any) -> list[Plan]:
    """The seed paper's interval plans for a model with ``num_layers`` decoder layers.

    One :meth:`Plan.from_pattern` ``(interval, start, end_layer, mode, scope, num_layers)``
    per mode x interval x start layer (in that nesting order), ``end_layer`` defaulting to
    ``num_layers`` (the whole depth; both bounds exclusive, so ``start`` itself is never
    changed) and ``start_layers`` to :func:`default_start_layers`. Plans that change nothing
    are left out and each plan appears once (its first occurrence), so the list is what the
    study and the benchmarks enumerate as "the paper's plans". ``options`` (``modes``, ``intervals``,
    ``start_layers``, ``scope``, ``end_layer``) are those of :func:`labelled_paper_plans`.
    """
    return [plan for _label, plan in labelled_paper_plans(num_layers, **options)]


def labelled_paper_plans(
    num_layers: int,
    modes: Sequence[str] = PAPER_MODES,
    intervals: Sequence[int] = PAPER_INTERVALS,
    start_layers: Sequence[int] | None = None,
    scope: str = SCOPE_ALL,
    *,
    end_layer: int | None = None,
) -> list[tuple[str, Plan]]:
    """:func:`paper_interval_plans` with each plan's label,
    ``paper:<mode>/interval=<interval>/start=<start>`` (its first occurrence)."""
    end = num_layers if end_layer is None else end_layer
    starts = default_start_layers(num_layers) if start_layers is None else tuple(start_layers)
    out: list[tuple[str, Plan]] = []
    seen: set[Plan] = set()
    for mode in modes:
        for interval in intervals:
            for start in starts:
                if start >= end:
                    continue
                plan = Plan.from_pattern(interval, start, end, mode, scope, num_layers)
                if plan.is_empty or plan in seen:
                    continue
                seen.add(plan)
                out.append((f"paper:{mode}/interval={interval}/start={start}", plan))
    return out


def best_fitting(plans: Iterable[Plan], arch: Any, workload: Workload, budget: Budget) -> list[Plan]:
    """The ``plans`` that fit ``budget`` (FLOPs of ``arch`` on ``workload``), best first:
    the ones that use the most of the budget (least compression, so presumably the least
    quality lost) come first; equal costs keep their input order. Duplicates are kept once."""
    geometry = geometry_of(arch)
    baseline: FlopReport = count_flops(geometry, None, workload)
    scored: list[tuple[float, int, Plan]] = []
    seen: set[Plan] = set()
    for k, plan in enumerate(plans):
        if plan in seen:
            continue
        seen.add(plan)
        report = count_flops(geometry, plan, workload)
        if budget.allows(report, baseline):
            scored.append((-budget.cost(report), k, plan))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [plan for _, _, plan in scored]
