"""Skip ops: ``keep``, ``skip_block``, ``skip_attn``, ``skip_ffn`` and ``drop``.

A skipped sublayer is not executed for the positions of the op's scope (no matmul runs; see
the table in :mod:`searchskip.ops.scope`); the residual stream passes through unchanged
there. ``drop`` (a layer in ``plan.drop``) behaves at runtime like ``skip_block`` with scope
``all``: the layer's forward returns its input; removing the layer physically is the
export's job. New forwards are built from the adapter's ``attn_delta`` / ``mlp_delta``, so
no family-specific code lives here.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch

from searchskip.ops.registry import ATTN_ALL, ATTN_NONE, ATTN_PROMPT, AttentionUse, LayerSite, OpHandler
from searchskip.ops.scope import attention_update, mlp_update
from searchskip.plan import KEEP, SCOPE_ALL, SCOPE_PROMPT, SCOPE_VISUAL, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, LayerOp

__all__ = ["DROP", "DROP_HANDLER", "KEEP_HANDLER", "SKIP_ATTN_HANDLER", "SKIP_BLOCK_HANDLER", "SKIP_FFN_HANDLER",
           "layer_kwargs_binder", "skipped_attention_use"]

DROP = "drop"
"""Op name of a layer removed by ``plan.drop`` (not a per-layer op of the plan file)."""


@functools.lru_cache(maxsize=None)
def _forward_params(cls: type) -> tuple[str, ...]:
    return tuple(inspect.signature(cls.forward).parameters)[2:]  # drop self, hidden_states


def layer_kwargs_binder(layer: Any) -> Callable[[tuple, dict], dict]:
    """A function turning a decoder layer's call ``(*args, **kwargs)`` after ``hidden_states``
    into keyword arguments, by the names of the layer class's ``forward`` (decoder layers are
    called with keywords; this covers positional callers)."""
    params = _forward_params(type(layer))

    def bind(args: tuple, kwargs: dict) -> dict:
        if not args:
            return kwargs
        merged = dict(zip(params, args))
        merged.update(kwargs)
        return merged

    return bind


def skipped_attention_use(scope: str) -> AttentionUse:
    """Which positions get K/V when the attention is skipped for ``scope``'s positions."""
    if scope == SCOPE_ALL:
        return ATTN_NONE
    return ATTN_ALL if scope in (SCOPE_PROMPT, SCOPE_VISUAL) else ATTN_PROMPT


def _full(_: LayerOp) -> dict[int, AttentionUse]:
    return {0: ATTN_ALL}


def _skipped(op: LayerOp) -> dict[int, AttentionUse]:
    return {0: skipped_attention_use(op.scope or SCOPE_ALL)}


def _passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


# ---- keep -------------------------------------------------------------------------------


def _build_keep(site: LayerSite) -> dict:
    return {}


KEEP_HANDLER = OpHandler(KEEP, _build_keep, _full, scoped=False)  # run the layer as it is


# ---- drop -------------------------------------------------------------------------------


def _build_drop(site: LayerSite) -> dict:
    return {site.index: _passthrough}


# layer removed by plan.drop: no compute (physical removal is the export's job)
DROP_HANDLER = OpHandler(DROP, _build_drop, lambda op: {0: ATTN_NONE}, scoped=False)


# ---- skip_block / skip_attn / skip_ffn ----------------------------------------------------


def _build_skip(site: LayerSite, skip_attn: bool, skip_ffn: bool) -> dict:
    layer, adapter, runtime = site.layer, site.adapter, site.runtime
    scope = site.op.scope or SCOPE_ALL
    bind = layer_kwargs_binder(layer)

    if scope == SCOPE_ALL:
        if skip_attn and skip_ffn:
            return {site.index: _passthrough}

        def forward_all(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            h = hidden_states
            if not skip_attn:
                h = h + adapter.attn_delta(layer, h, **bind(args, kwargs))
            if not skip_ffn:
                h = h + adapter.mlp_delta(layer, h)
            return h

        return {site.index: forward_all}

    def forward_scoped(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs = bind(args, kwargs)
        pos = runtime.positions(hidden_states)
        runs = pos.runs(scope)
        h = hidden_states
        if skip_attn:
            h = attention_update(adapter, layer, h, runs, pos.kv_stop(scope), kwargs)
        else:
            h = h + adapter.attn_delta(layer, h, **kwargs)
        if skip_ffn:
            return mlp_update(adapter, layer, h, runs)
        return h + adapter.mlp_delta(layer, h)

    return {site.index: forward_scoped}


# skip attention and FFN / self-attention / the FFN for the scope's positions
SKIP_BLOCK_HANDLER = OpHandler(SKIP_BLOCK, lambda site: _build_skip(site, True, True), _skipped)
SKIP_ATTN_HANDLER = OpHandler(SKIP_ATTN, lambda site: _build_skip(site, True, False), _skipped)
SKIP_FFN_HANDLER = OpHandler(SKIP_FFN, lambda site: _build_skip(site, False, True), _full)
