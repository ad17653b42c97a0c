"""Greedy sublayer removal, FinerCut-style: :func:`greedy_sublayer_removal` removes the least
harmful attention or FFN sublayer, one at a time, until a budget fits. The benchmark compares the
search with it; ``search.seed_greedy`` seeds a study with its plan
(:mod:`searchskip.search.greedy_seed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from searchskip.flops import Budget, FlopReport, Workload, count_flops, geometry_of
from searchskip.plan import SCOPE_ALL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, LayerOp, Plan

__all__ = ["GreedyStep", "greedy_sublayer_removal"]


@dataclass(frozen=True)
class GreedyStep:
    """One removal of :func:`greedy_sublayer_removal`: the plan after it, its score and FLOP ratio."""

    removed: tuple[int, str]
    """``(layer, "attn" | "ffn")`` removed at this step."""
    plan: Plan
    score: float
    flops_ratio: float
    evaluations: int
    """Plans scored so far (this step included)."""


def _sublayer_plan(removed: set[tuple[int, str]], scope: str) -> Plan:
    layers: dict[int, LayerOp] = {}
    for layer in sorted({i for i, _ in removed}):
        attn, ffn = (layer, "attn") in removed, (layer, "ffn") in removed
        layers[layer] = LayerOp(SKIP_BLOCK if attn and ffn else SKIP_ATTN if attn else SKIP_FFN)
    return Plan(layers=layers, scope=scope)


def greedy_sublayer_removal(
    score: Callable[[Plan], float],
    arch: Any,
    workload: Workload,
    budget: Budget,
    *,
    layers: Sequence[int] | None = None,
    scope: str = SCOPE_ALL,
    on_step: Callable[[GreedyStep], None] | None = None,
) -> list[GreedyStep]:
    """FinerCut-style greedy removal: from the unplanned model, try removing each remaining
    attention or FFN sublayer of ``layers`` (default: every decoder layer), keep the removal whose
    plan scores best (``score(plan)``, higher is better; the benchmark passes validation
    accuracy, FinerCut itself ranks by how little the output changes), and repeat until the plan
    fits ``budget`` (FLOPs of ``arch`` on ``workload``). A layer whose two sublayers are removed
    becomes ``skip_block``. Ties go to the cheaper plan, then the lower layer, attention first.

    Returns the steps in order (each plan one sublayer smaller than the one before), so the
    first step whose ``flops_ratio`` fits a larger budget is that budget's plan too. Stops early
    (the last step does not fit) when nothing is left to remove. ``score`` is called once per
    candidate: ``sum(2L - k for k < steps)`` calls for ``L`` layers.
    """
    geometry = geometry_of(arch)
    candidates_layers = list(range(geometry.num_layers)) if layers is None else sorted(set(layers))
    baseline = count_flops(geometry, None, workload)
    removed: set[tuple[int, str]] = set()
    steps: list[GreedyStep] = []
    evaluations = 0
    if budget.allows(baseline, baseline):
        return steps
    while True:
        best: tuple[tuple[float, float, int, int], tuple[int, str], Plan, float, FlopReport] | None = None
        for layer in candidates_layers:
            for rank, part in enumerate(("attn", "ffn")):
                if (layer, part) in removed:
                    continue
                plan = _sublayer_plan(removed | {(layer, part)}, scope)
                report = count_flops(geometry, plan, workload)
                value = float(score(plan))
                evaluations += 1
                key = (-value, budget.cost(report), layer, rank)
                if best is None or key < best[0]:
                    best = (key, (layer, part), plan, value, report)
        if best is None:  # nothing left to remove
            return steps
        _, chosen, plan, value, report = best
        removed.add(chosen)
        step = GreedyStep(chosen, plan, value, report.ratio(baseline), evaluations)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if budget.allows(report, baseline):
            return steps
