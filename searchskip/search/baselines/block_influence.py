"""ShortGPT's Block Influence (BI): :func:`block_influence` measures it once on calibration batches,
:func:`block_influence_plan` skips the least influential layers until a FLOP budget is met
(ShortGPT's layer removal, with ``skip_block`` standing in for deleting the layer)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from searchskip.flops import Budget, Workload
from searchskip.plan import PARALLEL_ATTN_FFN, PARALLEL_BLOCKS, SCOPE_ALL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, Plan
from searchskip.search.baselines.ordered import labelled_plans, least_first_plan

__all__ = ["BI_OPS", "block_influence", "block_influence_plan", "labelled_block_influence_plans"]

BI_OPS: tuple[str, ...] = (SKIP_BLOCK, SKIP_ATTN, SKIP_FFN)
"""Ops :func:`block_influence_plan` may put on the removed layers (those that lower FLOPs
one layer at a time; ``parallel_*`` ops change no FLOPs)."""


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
    return least_first_plan(bi, arch, workload, budget, op=op, scope=scope, exclude={0} if keep_first else (),
                            what="Block Influence")


def labelled_block_influence_plans(bi: Sequence[float], arch: Any, workload: Workload,
                                   budget: Budget) -> list[tuple[str, Plan]]:
    """``(block_influence:<op>, plan)`` of :func:`block_influence_plan` for every op of
    :data:`BI_OPS`, the ones that exist and change something (what the study seeds and the
    benchmarks compare with)."""
    return labelled_plans("block_influence", BI_OPS, lambda op: block_influence_plan(bi, arch, workload, budget, op=op))
