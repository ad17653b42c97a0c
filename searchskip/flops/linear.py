"""One ``nn.Linear`` as FLOP counting sees it (shared by the decoder and vision geometries)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Linear"]


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear``: ``2 * in_features * out_features`` FLOPs per token (biases, like
    every elementwise op, are not counted)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @classmethod
    def of(cls, name: str, module: Any) -> "Linear":
        """The geometry of ``nn.Linear`` ``module`` (meta-device modules work)."""
        return cls(name, int(module.in_features), int(module.out_features), module.bias is not None)

    @property
    def flops_per_token(self) -> int:
        return 2 * self.in_features * self.out_features

    @property
    def weights(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weights + (self.out_features if self.bias else 0)
