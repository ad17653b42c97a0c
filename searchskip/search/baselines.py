"""One-shot importance baselines the search is compared with (and seeds its study with).

* :func:`block_influence` -- ShortGPT's Block Influence (BI) of every decoder layer, measured
  once on calibration batches; :func:`block_influence_plan` turns it into a plan by skipping
  the least influential layers until a FLOP budget is met (ShortGPT's layer removal, with
  ``skip_block`` standing in for deleting the layer).
* :func:`greedy_sublayer_removal` -- a FinerCut-style greedy search: remove the least harmful
  attention or FFN sublayer, one at a time, until the smallest budget fits.
* :func:`paper_interval_plans` -- the seed paper's interval plans
  (:meth:`~searchskip.plan.Plan.from_pattern` over modes x intervals x start layers), one
  shared definition for the study and the benchmarks; :func:`best_fitting` keeps those that
  fit a budget.

::

    from searchskip.search.baselines import block_influence, block_influence_plan
    bi = block_influence(loaded.model, calibration_batches(loaded, rows, 16, 0))
    plan = block_influence_plan(bi, loaded.model.config, workload, Budget(ratio=0.75))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from searchskip.flops import Budget, FlopReport, Workload, count_flops, geometry_of
from searchskip.plan import (
    PARALLEL_ATTN_FFN,
    PARALLEL_BLOCKS,
    SCOPE_ALL,
    SKIP_ATTN,
    SKIP_BLOCK,
    SKIP_FFN,
    LayerOp,
    Plan,
)

__all__ = [
    "BI_OPS",
    "PAPER_MODES",
    "PAPER_INTERVALS",
    "block_influence",
    "block_influence_plan",
    "labelled_block_influence_plans",
    "paper_interval_plans",
    "labelled_paper_plans",
    "default_start_layers",
    "best_fitting",
    "GreedyStep",
    "greedy_sublayer_removal",
]

BI_OPS: tuple[str, ...] = (SKIP_BLOCK, SKIP_ATTN, SKIP_FFN)
"""Ops :func:`block_influence_plan` may put on the removed layers (those that lower FLOPs
one layer at a time; ``parallel_*`` ops change no FLOPs)."""

PAPER_MODES: tuple[str, ...] = (SKIP_BLOCK, SKIP_ATTN, SKIP_FFN)
"""The default modes of :func:`paper_interval_plans`."""

PAPER_INTERVALS: tuple[int, ...] = (2, 3, 4)
"""The default skip intervals of :func:`paper_interval_plans`."""


# --------------------------------------------------------------------------------------
# Block Influence (ShortGPT)
# --------------------------------------------------------------------------------------


def block_influence(model: Any, batches: Iterable[dict]) -> list[float]:
    """ShortGPT's Block Influence of each decoder layer of ``model``, in layer order.

    Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You
    Expect" (arXiv:2403.03853), Eq. (1)::

        BI_i = 1 - E_{X, t} [ X_{i,t}^T X_{i+1,t} / (||X_{i,t}||_2 ||X_{i+1,t}||_2) ]

    where ``X_i`` is the input hidden state of layer ``i`` and ``X_{i+1}`` its output, and the
    expectation runs over the tokens ``t`` of the calibration samples ``X``. A layer that
    barely turns the residual stream has a BI near 0 and is the first one ShortGPT removes.

    Here the input/output are taken with forward hooks on the decoder layers of the
    architecture adapter (:func:`searchskip.arch.get_adapter`), not from
    ``output_hidden_states``: in transformers 5 the last entry of ``hidden_states`` is the
    output of the final norm, not of the last layer. The mean is over every non-padding
    token (``attention_mask == 1``; every token when a batch has no mask) of all
    ``batches`` together (each token weighs the same, whatever its batch), cosines computed in
    float32 and summed in float64. The model runs in eval mode (restored afterwards), without
    gradients and without a KV cache. ``batches`` are keyword arguments of ``model(**batch)``,
    e.g. from :func:`searchskip.ops.calibration.calibration_batches`.

    Each value lies in ``[0, 2]``. Raises ``ValueError`` when there are no non-padding
    tokens at all, or when a mask does not match the decoder's sequence length.
    """
    import torch

    from searchskip.arch import get_adapter

    layers = get_adapter(model).layers(model)
    n = len(layers)
    sums = [0.0] * n
    counts = [0] * n
    calls = [0] * n
    state: dict[str, Any] = {"mask": None}

    def make_hook(i: int):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # (B, S)
            mask = state["mask"]
            if mask is None:
                picked = cos.reshape(-1)
            else:
                if tuple(mask.shape) != tuple(cos.shape):
                    raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, but decoder layer {i} runs on "
                                     f"{tuple(cos.shape)} positions; the mask must cover every position")
                picked = cos[mask.to(cos.device)]  # boolean indexing: NaNs at padding cannot leak in
            sums[i] += float(picked.double().sum())
            counts[i] += int(picked.numel())
            calls[i] += 1
        return hook

    was_training = model.training
    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                mask = batch.get("attention_mask")
                state["mask"] = None if mask is None else mask.bool()
                before = list(calls)
                model(**batch, use_cache=False)
                if any(c - b != 1 for c, b in zip(calls, before)):
                    raise ValueError("every decoder layer must run exactly once per batch, but the calls per layer "
                                     f"were {[c - b for c, b in zip(calls, before)]}")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n and counts[0] == 0:
        raise ValueError("the calibration batches hold no non-padding token; Block Influence needs at least one")
    return [1.0 - s / c for s, c in zip(sums, counts)]


def block_influence_plan(
    bi: Sequence[float],
    arch: Any,
    workload: Workload,
    budget: Budget,
    *,
    op: str = SKIP_BLOCK,
    keep_first: bool = True,
    scope: str = SCOPE_ALL,
) -> Plan | None:
    """The plan that puts ``op`` on the least influential layers, just enough of them to fit
    ``budget`` (ShortGPT's removal order: increasing Block Influence).

    Layers are taken one at a time in increasing ``bi`` (ties: the lower index first); after
    each one the plan's FLOPs (:func:`~searchskip.flops.count_flops` of ``arch`` on
    ``workload``, under the budget's count/attention convention) are checked against
    ``budget``, and the first plan that fits is returned. So the result is minimal along that
    order: the plan with one layer fewer does not fit. When the unplanned model already fits,
    the empty :class:`Plan` is returned.

    ``keep_first`` (default): layer 0 is never chosen. ShortGPT (like the seed paper, whose
    interval plans start after ``start_layer``) finds the first layer far too influential to
    remove -- it turns token embeddings into the residual stream the rest of the model reads
    -- and a budget should not be met by removing it however BI was measured. ``op`` is one
    of :data:`BI_OPS` (``skip_attn``/``skip_ffn`` give sublayer variants of the same order),
    ``scope`` the plan's token scope.

    Returns ``None`` when even every allowed layer removed does not fit the budget.
    Raises ``ValueError`` when ``len(bi)`` is not the number of decoder layers of ``arch`` or
    a value is not finite, or ``op`` is not one of :data:`BI_OPS`.
    """
    if op not in BI_OPS:
        hint = " (parallel ops change no FLOPs)" if op in (PARALLEL_ATTN_FFN, PARALLEL_BLOCKS) else ""
        raise ValueError(f"op must be one of {', '.join(BI_OPS)}{hint}, but got {op!r}")
    geometry = geometry_of(arch)
    values = [float(v) for v in bi]
    if len(values) != geometry.num_layers:
        raise ValueError(f"bi has {len(values)} values, but the model has {geometry.num_layers} decoder layers")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"every Block Influence must be finite, but got {values}")

    baseline = count_flops(geometry, None, workload)

    def fits(plan: Plan) -> bool:
        return budget.allows(count_flops(geometry, plan, workload), baseline)

    plan = Plan(scope=scope)
    if fits(plan):
        return plan
    order = sorted((i for i in range(len(values)) if not (keep_first and i == 0)), key=lambda i: (values[i], i))
    chosen: dict[int, LayerOp] = {}
    for i in order:
        chosen[i] = LayerOp(op)
        plan = Plan(layers=chosen, scope=scope)
        if fits(plan):
            return plan
    return None


def labelled_block_influence_plans(bi: Sequence[float], arch: Any, workload: Workload,
                                   budget: Budget) -> list[tuple[str, Plan]]:
    """``(block_influence:<op>, plan)`` of :func:`block_influence_plan` for every op of
    :data:`BI_OPS`, the ones that exist and change something (what the study seeds and the
    benchmarks compare with)."""
    out: list[tuple[str, Plan]] = []
    for op in BI_OPS:
        plan = block_influence_plan(bi, arch, workload, budget, op=op)
        if plan is not None and not plan.is_empty:
            out.append((f"block_influence:{op}", plan))
    return out


# --------------------------------------------------------------------------------------
# The seed paper's interval plans
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Greedy sublayer removal (FinerCut-style)
# --------------------------------------------------------------------------------------


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
