"""ShortV's Layer Contribution (LC): :func:`layer_contribution` measures, once on calibration
batches, how much freezing the image tokens of one layer moves the answer-token distribution;
:func:`layer_contribution_plan` freezes the image tokens (scope ``visual``) of the least
contributing layers until a FLOP budget is met."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from searchskip.flops import Budget, Workload
from searchskip.plan import SCOPE_VISUAL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, LayerOp, Plan
from searchskip.search.baselines.ordered import labelled_plans, least_first_plan

__all__ = ["LC_OPS", "layer_contribution", "layer_contribution_plan", "labelled_layer_contribution_plans"]

LC_OPS: tuple[str, ...] = (SKIP_BLOCK, SKIP_FFN, SKIP_ATTN)
"""Ops :func:`layer_contribution_plan` puts on the chosen layers, each with scope ``visual``:
image tokens frozen (ShortV), attention only (their FFN skipped), FFN only (their attention skipped)."""


def layer_contribution(model: Any, batches: Iterable[dict], op: str = SKIP_BLOCK) -> list[float]:
    """ShortV's Layer Contribution of each decoder layer of ``model``, in layer order.

    Yuan et al., "ShortV: Efficient Multimodal Large Language Models by Freezing Visual Tokens
    in Ineffective Layers" (arXiv:2504.00502): the contribution of layer ``i`` is the KL
    divergence of the model's output distribution from the unplanned model's when only layer
    ``i``'s image tokens are frozen (here: ``op`` with scope ``visual`` on layer ``i`` alone,
    :mod:`searchskip.ops.scope`; the text still attends to the frozen tokens' K/V)::

        LC_i = E_x [ KL( p(. | x) || p_i(. | x) ) ]

    over the next-token distribution at the last prompt position of each calibration sample
    ``x`` (the distribution of the first answer token: :func:`searchskip.eval.shift.first_token_kl`).
    A layer whose image tokens can be frozen without moving the answer has an LC near 0 and is
    the first one ShortV freezes. ``batches`` are keyword arguments of ``model(**batch)``, e.g.
    from :func:`searchskip.ops.calibration.calibration_batches`; the model runs in eval mode
    (restored afterwards), without gradients or a KV cache, and is left unplanned.

    Costs ``num_layers + 1`` forward passes over the batches. Raises ``ValueError`` when there is
    no sample, or a batch's last position is padding in some row (right padding).
    """
    from searchskip.arch import get_adapter
    from searchskip.eval.shift import first_token_kl

    n = get_adapter(model).num_layers(model)
    try:
        return first_token_kl(model, batches, (Plan(layers={i: LayerOp(op, SCOPE_VISUAL)}) for i in range(n)))
    except ValueError as err:
        raise ValueError(f"Layer Contribution: {err}") from None


def layer_contribution_plan(lc: Sequence[float], arch: Any, workload: Workload, budget: Budget, *,
                            op: str = SKIP_BLOCK) -> Plan | None:
    """The plan that puts ``op`` with scope ``visual`` on the least contributing layers, just enough
    of them to fit ``budget`` (ShortV's choice: increasing Layer Contribution, ties to the lower
    index; no layer is excluded, since LC measures what freezing each one costs). The empty plan
    when the unplanned model fits, ``None`` when freezing every layer's image tokens does not.
    Raises ``ValueError`` when ``op`` is not one of :data:`LC_OPS`, or ``lc`` does not fit
    ``arch`` (see :func:`~searchskip.search.baselines.ordered.least_first_plan`)."""
    if op not in LC_OPS:
        raise ValueError(f"op must be one of {', '.join(LC_OPS)}, but got {op!r}")
    return least_first_plan(lc, arch, workload, budget, op=op, scope=SCOPE_VISUAL, what="Layer Contribution")


def labelled_layer_contribution_plans(lc: Sequence[float], arch: Any, workload: Workload,
                                      budget: Budget) -> list[tuple[str, Plan]]:
    """``(layer_contribution:<op>, plan)`` of :func:`layer_contribution_plan` for every op of
    :data:`LC_OPS`, the ones that exist and change something (what the study seeds and the
    benchmarks compare with)."""
    return labelled_plans("layer_contribution", LC_OPS, lambda op: layer_contribution_plan(lc, arch, workload, budget, op=op))
