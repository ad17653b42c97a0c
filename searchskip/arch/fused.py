"""A view onto some output rows of a fused ``nn.Linear`` (Phi-3's ``qkv_proj`` and ``gate_up_proj``),
so that adapters can hand out ``q`` / ``k`` / ``v`` and ``gate`` / ``up`` as the separate linears
every other family has.

A :class:`RowSlice` is not a module (the model keeps running its fused linear): calling it runs
those rows only (``F.linear`` on a view of the weight: the FLOPs of those rows); ``weight`` and
``bias`` are views, so pruning that zeroes weights in place prunes the fused module; hooks go
to the fused module (a forward hook sees the slice's rows of its output). Code that replaces a
linear by a smaller one (structured FFN pruning) rebuilds the fused module from the slices'
rows (:func:`searchskip.ops.prune.swap_ffn_linears`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported when a slice runs, not with the adapters
    import torch
    from torch import nn

__all__ = ["RowSlice", "source_of"]


class RowSlice:
    """Output rows ``[start, stop)`` of the fused linear ``source``."""

    def __init__(self, source: "nn.Linear", start: int, stop: int):
        if not 0 <= start < stop <= source.out_features:
            raise ValueError(f"rows {start}..{stop} are outside {source}")
        self.source, self.start, self.stop = source, int(start), int(stop)

    @property
    def in_features(self) -> int:
        return self.source.in_features

    @property
    def out_features(self) -> int:
        return self.stop - self.start

    @property
    def weight(self) -> "torch.Tensor":
        return self.source.weight[self.start:self.stop]

    @property
    def bias(self) -> "torch.Tensor | None":
        bias = self.source.bias
        return None if bias is None else bias[self.start:self.stop]

    @property
    def training(self) -> bool:
        return self.source.training

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        return F.linear(x, self.weight, self.bias)

    def register_forward_pre_hook(self, hook: Callable) -> Any:
        """On the fused module: its input is every slice's input."""
        return self.source.register_forward_pre_hook(hook)

    def register_forward_hook(self, hook: Callable) -> Any:
        """On the fused module, ``hook`` seeing this slice's rows of its output."""
        def rows(module: "nn.Module", args: Any, output: "torch.Tensor") -> Any:
            return hook(self, args, output[..., self.start:self.stop])

        return self.source.register_forward_hook(rows)

    def __repr__(self) -> str:
        return f"RowSlice({self.source}, rows {self.start}..{self.stop})"


def source_of(linear: Any) -> "nn.Module":
    """The module that holds ``linear``'s weights: the fused linear of a :class:`RowSlice`, else itself."""
    return linear.source if isinstance(linear, RowSlice) else linear
