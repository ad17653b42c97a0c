"""LLaVA-NeXT's and LLaVA-OneVision's "anyres": a fixed-resolution tower run on a base crop and
the tiles of an image."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.base import Grid, VisionCount
from searchskip.flops.vision.fixed import VisionGeometry, fixed_tower

__all__ = ["AnyresVisionGeometry", "anyres_tower"]


@dataclass(frozen=True)
class AnyresVisionGeometry(VisionCount):
    """"anyres": the tower (:attr:`crop`: CLIP in LLaVA-NeXT, SigLIP in LLaVA-OneVision) runs on
    the image resized to one crop and on the crops of the image at the best-fitting resolution
    of ``pinpoints`` (``rows x cols`` crops); the projector runs on every crop's patches; the
    LLM gets the base crop's patches, then the tiles' patches with the padding rows (or
    columns) of the letterboxed image removed, each row ended by a newline embedding.
    LLaVA-OneVision (``vision_aspect_ratio: anyres_max_N``) first shrinks the unpadded tile
    features (bilinear, uncounted like every elementwise op) to about ``N`` crops' worth when
    they are over 1.1 times the side of that. An image's shape is its original
    ``(height, width)`` in pixels (what the processor returns as ``image_sizes``)."""

    crop: VisionGeometry
    pinpoints: tuple[tuple[int, int], ...]
    crop_size: int
    projector: tuple[Linear, ...]
    max_crops: int | None = None
    """``N`` of ``anyres_max_N`` (LLaVA-OneVision); ``None``: tile features are never shrunk."""
    image_tokens: None = None

    def _layout(self, shape: Grid | None) -> tuple[int, int, int]:
        """``(rows, cols, patches per crop side)``."""
        if shape is None or len(shape) != 2 or min(int(x) for x in shape) < 1:
            raise ValueError("this vision tower takes images at their own resolution: the workload needs "
                             f"image_shape (height, width) in pixels, but got {shape!r}")
        from transformers.image_processing_utils import select_best_resolution

        height, width = select_best_resolution([int(shape[0]), int(shape[1])], [list(p) for p in self.pinpoints])
        return height // self.crop_size, width // self.crop_size, self.crop_size // self.crop.patch_size

    def crops(self, shape: Grid | None) -> int:
        """Tower passes for one image: the base crop and the ``rows x cols`` tiles."""
        rows, cols, _ = self._layout(shape)
        return 1 + rows * cols

    def tokens_per_image(self, shape: Grid | None) -> int:
        rows, cols, side = self._layout(shape)
        height, width = int(shape[0]), int(shape[1])
        current_h, current_w = rows * side, cols * side
        if width / height > current_w / current_h:  # letterboxed top and bottom: padding rows go
            current_h -= 2 * ((current_h - int(round(height * (current_w / width), 7))) // 2)
        else:
            current_w -= 2 * ((current_w - int(round(width * (current_h / height), 7))) // 2)
        if self.max_crops is not None:
            ratio = math.sqrt(current_h * current_w / (self.max_crops * side ** 2))
            if ratio > 1.1:  # as the model computes it: floor of a float division
                current_h, current_w = int(current_h // ratio), int(current_w // ratio)
        return side * side + current_h * current_w + current_h  # base, unpadded tiles, one newline a row

    def projector_tokens(self, shape: Grid | None) -> int:
        return self.crops(shape) * self.crop.patches

    def shape_for(self, height: int, width: int, processor_size: Mapping | None = None) -> Grid:
        """The shape of a ``height x width`` image: its size (the processor resizes it per crop)."""
        return int(height), int(width)

    def entries(self, images: int, shape: Grid | None) -> Iterator[tuple[int | None, str, float]]:
        yield from self.crop.entries(images * self.crops(shape))


def _max_crops(config: Any) -> int | None:
    """``N`` of LLaVA-OneVision's ``vision_aspect_ratio: anyres_max_N``; ``None`` without one."""
    aspect = getattr(config, "vision_aspect_ratio", None)
    if aspect is None:
        return None
    prefix, _, count = str(aspect).partition("anyres_max_")
    if prefix or not count.isdigit() or int(count) < 1:
        raise ModelError(f"vision_aspect_ratio '{aspect}': FLOP counting knows 'anyres_max_N' (N a positive whole "
                         "number of crops) only")
    return int(count)


def anyres_tower(model: Any, adapter: Any, config: Any) -> AnyresVisionGeometry:
    """The :class:`AnyresVisionGeometry` of a LLaVA-NeXT or LLaVA-OneVision model."""
    crop = fixed_tower(model, adapter, config)
    if crop.image_tokens != crop.patches:
        raise ModelError(f"anyres packs each crop's patches, but with vision_feature_select_strategy "
                         f"'{getattr(config, 'vision_feature_select_strategy', 'default')}' this tower gives "
                         f"{crop.image_tokens} features for {crop.patches} patches (CLIP needs 'default', which drops "
                         "its class token; SigLIP needs 'full')")
    return AnyresVisionGeometry(crop=crop, pinpoints=tuple(tuple(int(x) for x in p) for p in config.image_grid_pinpoints),
                                crop_size=int(config.vision_config.image_size), projector=crop.projector,
                                max_crops=_max_crops(config))
