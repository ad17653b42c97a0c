"""Parallel ops: ``parallel_attn_ffn`` and ``parallel_blocks``. They save depth, not FLOPs.

* ``parallel_attn_ffn`` at layer ``i``: ``x + attn(n1(x)) + ffn(n2(x))`` — attention and FFN
  both read the layer's input, each through its own norm.
* ``parallel_blocks`` at layer ``i``: layers ``i`` and ``i + 1`` both read ``x`` (the input of
  layer ``i``) and their residual updates are added: ``x + (L_i(x) - x) + (L_{i+1}(x) - x)``.
  With ``average: true`` the updates are halved, ``x + ((L_i(x) - x) + (L_{i+1}(x) - x)) / 2``,
  i.e. the two blocks' outputs are averaged (the seed paper's variant as the plan format
  describes it; the paper's own code was not available to check against).

Layer ``i``'s forward runs the original layer ``i`` on ``x``, hands ``(x, L_i(x))`` to layer
``i + 1`` through the runtime's per-call stash and returns ``x`` (so ``output_hidden_states``
shows ``x`` after layer ``i``); layer ``i + 1``'s forward runs the original layer ``i + 1``
with its own keyword arguments (its own mask type on Qwen2 sliding/full mixes) and combines.

With a scope, positions outside it run the original sequential layers: there layer ``i + 1``
reads ``L_i(x)`` and the pair's output is ``L_{i+1}(L_i(x))``; ``parallel_attn_ffn``'s FFN
reads ``x + attn(x)``.

A model that adds features after layer ``i`` by index (Qwen3-VL's DeepStack, ``inj``) keeps
them: in the pair both layers still read ``x`` and ``inj`` is added to the pair's output
(``x + (L_i(x) - x) + (L_{i+1}(x) - x) + inj``); outside the scope layer ``i + 1`` reads
``L_i(x) + inj`` as in the model.
"""

from __future__ import annotations

from typing import Any

import torch

from searchskip.ops.registry import ATTN_ALL, LayerSite, OpHandler
from searchskip.ops.skip import layer_kwargs_binder
from searchskip.plan import PARALLEL_ATTN_FFN, PARALLEL_BLOCKS, SCOPE_ALL

__all__ = ["PARALLEL_ATTN_FFN_HANDLER", "PARALLEL_BLOCKS_HANDLER"]


def _build_parallel_attn_ffn(site: LayerSite) -> dict:
    layer, adapter, runtime = site.layer, site.adapter, site.runtime
    scope = site.op.scope or SCOPE_ALL
    bind = layer_kwargs_binder(layer)

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = hidden_states
        a = adapter.attn_delta(layer, x, **bind(args, kwargs))
        if scope == SCOPE_ALL:
            return x + a + adapter.mlp_delta(layer, x)
        inside = runtime.positions(x).in_scope(scope, x.device)
        return x + a + adapter.mlp_delta(layer, torch.where(inside, x, x + a))

    return {site.index: forward}


def _build_parallel_blocks(site: LayerSite) -> dict:
    i, runtime = site.index, site.runtime
    first, second = site.layers[i], site.layers[i + 1]
    scope = site.op.scope or SCOPE_ALL
    average = site.op.average
    first_forward = type(first).forward
    second_forward = type(second).forward
    key = ("parallel_blocks", id(first))
    injected = i in site.injected  # the model adds features between the two layers

    def forward_first(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = hidden_states
        a = first_forward(first, x, *args, **kwargs)
        inside = None if scope == SCOPE_ALL else runtime.positions(x).in_scope(scope, x.device)
        returned = x if inside is None else torch.where(inside, x, a)
        runtime.stash[key] = (x, a, inside, returned)
        return returned

    def forward_second(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if key not in runtime.stash:
            raise RuntimeError(f"parallel_blocks: layer {i + 1} ran without layer {i} running first in the same call")
        x, a, inside, returned = runtime.stash.pop(key)
        y = hidden_states
        if injected:  # the pair reads x; what the model added after layer i joins the pair's output
            added = y - returned
            y = x if inside is None else torch.where(inside, x, y)
        b = second_forward(second, y, *args, **kwargs)
        if average:
            both = x + ((a - x) + (b - x)) / 2
        else:
            both = x + (a - x) + (b - x)
        if injected:
            both = both + added
        return both if inside is None else torch.where(inside, both, b)

    return {i: forward_first, i + 1: forward_second}


# attention and FFN both read the layer input
PARALLEL_ATTN_FFN_HANDLER = OpHandler(PARALLEL_ATTN_FFN, _build_parallel_attn_ffn, lambda op: {0: ATTN_ALL})
# layers i and i+1 both read layer i's input
PARALLEL_BLOCKS_HANDLER = OpHandler(PARALLEL_BLOCKS, _build_parallel_blocks, lambda op: {0: ATTN_ALL, 1: ATTN_ALL})
