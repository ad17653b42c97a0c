"""FLOP formulas that torch's ``FlopCounterMode`` lacks, registered once on import.

On CPU, ``scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, for which torch 2.13 has no formula,
so attention would count as 0 FLOPs. :func:`register` adds it (and its backward), reusing
torch's own ``sdpa_flop_count`` / ``sdpa_backward_flop_count``: like upstream, the count is
the full ``queries x keys`` rectangle (a causal mask is not halved).

Import this module (``searchskip.ops`` does) before counting FLOPs; registering is
idempotent and leaves a formula torch may ship later in place.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

__all__ = ["register"]

_aten = torch.ops.aten


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register() -> None:
    """Register the CPU flash-attention forward/backward formulas (no-op for those already known)."""
    pairs = (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flop),
    )
    for name, formula in pairs:
        target = getattr(_aten, name, None)
        if target is not None and target not in flop_registry:
            register_flop_formula(target)(formula)


register()
