"""Measuring FLOPs with torch's ``FlopCounterMode``, to check the analytic count against.

torch 2.13's ``FlopCounterMode`` has no formula for the CPU SDPA kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so attention would count 0.
:mod:`searchskip.ops.flop_formulas` registers it globally, on import, with torch's own
``sdpa_flop_count`` (``4 * b * h * s_q * s_k * d``: the full rectangle of query-key pairs
the kernel is given, causal mask or not); this module imports it, so every
``FlopCounterMode`` -- the one :func:`flop_counter` returns included -- counts attention.
"""

from __future__ import annotations

from typing import Any, Callable

import searchskip.ops.flop_formulas  # noqa: F401  (registers the CPU SDPA FLOP formula globally)

__all__ = ["flop_counter", "measure_flops"]


def flop_counter(**kwargs: Any):
    """A ``FlopCounterMode(display=False, **kwargs)`` (CPU SDPA counted, see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    kwargs.setdefault("display", False)
    return FlopCounterMode(**kwargs)


def measure_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """``(total FLOPs, fn's result)`` of running ``fn()`` under :func:`flop_counter` with no grad."""
    import torch

    with flop_counter() as counter, torch.no_grad():
        out = fn()
    return counter.get_total_flops(), out
