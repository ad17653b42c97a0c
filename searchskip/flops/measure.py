"""Measuring FLOPs with torch's ``FlopCounterMode``, to check the analytic count against.

torch 2.13's ``FlopCounterMode`` has no formula for the CPU SDPA kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so attention would count 0.
:func:`flop_counter` returns a ``FlopCounterMode`` that counts it with torch's own
``sdpa_flop_count`` (``4 * b * h * s_q * s_k * d``: the full rectangle of query-key pairs
the kernel is given, causal mask or not), passed as ``custom_mapping`` so nothing global is
changed. If :mod:`searchskip.ops.flop_formulas` registers formulas globally, importing it
first is harmless: the mapping here only fills what is missing.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["flop_counter", "measure_flops", "sdpa_mapping"]


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def sdpa_mapping() -> dict[Any, Callable[..., int]]:
    """``custom_mapping`` for ``FlopCounterMode``: formulas for attention ops it lacks."""
    import torch
    from torch.utils.flop_counter import flop_registry

    try:  # the ops package may register these globally; then there is nothing to add
        import searchskip.ops.flop_formulas  # noqa: F401
    except ImportError:
        pass
    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            mapping[op] = _cpu_sdpa_flop
    return mapping


def flop_counter(**kwargs: Any):
    """A ``FlopCounterMode(display=False, custom_mapping=sdpa_mapping(), **kwargs)``."""
    from torch.utils.flop_counter import FlopCounterMode

    kwargs.setdefault("display", False)
    mapping = dict(sdpa_mapping())
    mapping.update(kwargs.pop("custom_mapping", None) or {})
    return FlopCounterMode(custom_mapping=mapping, **kwargs)


def measure_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """``(total FLOPs, fn's result)`` of running ``fn()`` under :func:`flop_counter` with no grad."""
    import torch

    with flop_counter() as counter, torch.no_grad():
        out = fn()
    return counter.get_total_flops(), out
