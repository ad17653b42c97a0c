"""What every vision tower's FLOP count answers (:class:`VisionCount`), and one encoder layer's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from searchskip.flops.linear import Linear

__all__ = ["Grid", "VisionCount", "VisionLayerGeometry", "linears_of"]

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class VisionLayerGeometry:
    """One encoder layer of a vision tower: its linears and attention shape."""

    linears: tuple[Linear, ...]
    heads: int
    head_dim: int


def linears_of(module: Any) -> tuple[Linear, ...]:
    from torch import nn

    return tuple(Linear.of(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear))


class VisionCount:
    """What :func:`searchskip.flops.count_flops` asks of a vision tower."""

    image_tokens: int | None
    """LLM positions per image when fixed; ``None`` when they follow the image's grid."""
    projector: tuple[Linear, ...]
    """The projector's linears, each run once per LLM position."""

    def tokens_per_image(self, grid: Grid | None) -> int:
        """LLM positions of one image (of ``grid``, for towers that take it)."""
        raise NotImplementedError

    def projector_tokens(self, grid: Grid | None) -> int:
        """Positions the projector runs on for one image: its LLM positions, unless the model
        packs the projected features differently (LLaVA-NeXT projects every crop's patches)."""
        return self.tokens_per_image(grid)

    def shape_for(self, height: int, width: int, processor_size: Mapping | None = None) -> Grid:
        """The image shape of a ``height x width`` image, for towers that take images at their own
        resolution (:attr:`image_tokens` is ``None``); ``processor_size``: the model's image
        processor's ``size`` where it bounds the resize."""
        raise ValueError("this vision tower takes every image at one resolution: images have no shape")

    def entries(self, images: int, grid: Grid | None) -> Iterator[tuple[int | None, str, float]]:
        """``(layer, part, flops)`` of the tower for ``images`` images (of ``grid``)."""
        raise NotImplementedError
