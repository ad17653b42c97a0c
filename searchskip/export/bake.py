"""Sublayer skips for every token, written into the weights, so that a plain loader runs the
planned model.

A decoder layer adds each sublayer's output to the residual stream: ``x + attn(x)``, then
``+ ffn(...)``. A sublayer whose output projection (weight and bias) is zero adds exactly
nothing, so zeroing the attention's ``o_proj`` (OPT: ``out_proj``) or the FFN's ``down_proj``
(``fc2``) makes the plain model compute what ``skip_attn`` / ``skip_ffn`` / ``skip_block`` for all
tokens compute (Gemma's post-sublayer norms map zero to zero). Plain ``transformers`` (or a
serving engine) then gives the planned model's answers without searchskip, only without the
savings; :func:`searchskip.load_compressed` still skips the sublayers at runtime, and the export
records which ones are baked (``baked_skips`` in ``searchskip_export.json``).

What cannot be written into weights -- other token scopes, parallel ops, ``visual_tokens``,
``early_exit`` -- keeps the export's weights from plain loaders (see
:mod:`searchskip.export.model`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from searchskip.plan import Plan
from searchskip.plan.names import SCOPE_ALL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN

__all__ = ["BAKED_OPS", "bake_skips", "bakeable", "baked_skips"]

BAKED_OPS = {SKIP_ATTN: ("attn",), SKIP_FFN: ("ffn",), SKIP_BLOCK: ("attn", "ffn")}
"""Op -> the sublayers whose output projection it zeroes (for ``scope: all``)."""


def baked_skips(plan: Plan, num_layers: int) -> dict[str, list[int]]:
    """``{"attn": [layers], "ffn": [layers]}`` whose output ``plan`` (a runtime plan over the
    exported layers) zeroes for every token."""
    out: dict[str, list[int]] = {"attn": [], "ffn": []}
    for i in range(num_layers):
        op = plan.op_for(i)
        if op.scope == SCOPE_ALL:
            for part in BAKED_OPS.get(op.op, ()):
                out[part].append(i)
    return out


def bakeable(plan: Plan | None, num_layers: int) -> bool:
    """Whether every runtime op of ``plan`` is written into the weights by :func:`bake_skips`
    (``None``, no runtime plan, is): then plain loaders run the planned model."""
    if plan is None:
        return True
    if plan.visual_tokens is not None or plan.early_exit is not None or plan.drop is not None or plan.prune is not None:
        return False
    ops = [plan.op_for(i) for i in range(num_layers)]
    return all(op.op == "keep" or (op.scope == SCOPE_ALL and op.op in BAKED_OPS) for op in ops)


@contextlib.contextmanager
def bake_skips(adapter: Any, model: Any, plan: Plan | None) -> Iterator[dict[str, list[int]]]:
    """While the block runs (to save ``model``), the output projections (weight and bias) of the
    sublayers ``plan`` skips for every token are zero in ``model`` (a plain model, no plan applied,
    whose decoder layers the plan's indices name); yields them (:func:`baked_skips`). On exit the
    original values are back: the caller's model is not changed."""
    import torch

    layers = adapter.layers(model)
    skips = baked_skips(plan, len(layers)) if plan is not None else {"attn": [], "ffn": []}
    saved: list[tuple[Any, Any]] = []
    with torch.no_grad():
        try:
            for part, indices in skips.items():
                for i in indices:
                    out = (adapter.attn_linears(layers[i])["o"] if part == "attn"
                           else adapter.mlp_linears(layers[i])[adapter.mlp_out_key])
                    for tensor in (out.weight, out.bias):
                        if tensor is not None:
                            saved.append((tensor, tensor.detach().clone()))
                            tensor.zero_()
            yield skips
        finally:
            for tensor, original in saved:
                tensor.copy_(original)
