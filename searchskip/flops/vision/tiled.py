"""InternVL's tiles: a fixed-resolution tower (InternViT) run on each tile of an image, its
features merged by a pixel shuffle before the projector.

InternVL's processor cuts an image into ``cols x rows`` tiles of the tower's resolution (the
grid of ``min_patches .. max_patches`` tiles whose aspect ratio is closest to the image's) and
adds a thumbnail of the whole image when there is more than one tile; each tile runs through
the tower alone (its class token dropped with ``vision_feature_select_strategy: default``), and
the pixel shuffle folds every ``1 / downsample_ratio`` x ``1 / downsample_ratio`` block of patch
features into one wider feature (a reshape, no FLOPs), so a 448-pixel tile of 14-pixel patches
(1,024 patches) gives 256 LLM positions, on which the projector runs. An image's shape is its
tile count ``(tiles,)`` (the image processor's ``num_patches``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.base import Grid, VisionCount
from searchskip.flops.vision.fixed import VisionGeometry, fixed_tower

__all__ = ["TiledVisionGeometry", "tiled_tower"]


@dataclass(frozen=True)
class TiledVisionGeometry(VisionCount):
    """InternVL: :attr:`tile` run on every tile, ``tile_tokens`` LLM positions per tile."""

    tile: VisionGeometry
    tile_tokens: int
    """LLM positions per tile (the tile's patch features after the pixel shuffle)."""
    tile_size: int
    min_tiles: int
    max_tiles: int
    projector: tuple[Linear, ...]
    image_tokens: None = None

    def tiles(self, shape: Grid | None) -> int:
        """Tower passes for one image of ``shape`` (``(tiles,)``)."""
        if shape is None or len(shape) != 1 or int(shape[0]) < 1:
            raise ValueError("this vision tower takes images as tiles: the workload needs image_shape (tiles,), "
                             f"but got {shape!r}")
        return int(shape[0])

    def tokens_per_image(self, shape: Grid | None) -> int:
        return self.tiles(shape) * self.tile_tokens

    def shape_for(self, height: int, width: int, processor_size: Mapping | None = None) -> Grid:
        """The tiles of a ``height x width`` image, as InternVL's processor cuts it (between
        :attr:`min_tiles` and :attr:`max_tiles` tiles, a thumbnail added to more than one);
        ``processor_size``: the image processor's ``size`` and tiling settings (``min_patches``,
        ``max_patches``, ``crop_to_patches``) where they are known."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        size = processor_size or {}
        if not size.get("crop_to_patches", True) or int(size.get("max_patches", self.max_tiles)) <= 1:
            return (1,)
        tile = (int(size.get("height") or self.tile_size), int(size.get("width") or self.tile_size))
        cols, rows = get_optimal_tiled_canvas((int(height), int(width)), tile,
                                              int(size.get("min_patches", self.min_tiles)),
                                              int(size.get("max_patches", self.max_tiles)))
        return (1 + cols * rows if cols * rows > 1 else 1,)

    def entries(self, images: int, shape: Grid | None) -> Iterator[tuple[int | None, str, float]]:
        yield from self.tile.entries(images * self.tiles(shape))


def tiled_tower(model: Any, adapter: Any, config: Any) -> TiledVisionGeometry:
    """The :class:`TiledVisionGeometry` of an InternVL model."""
    tile = fixed_tower(model, adapter, config)
    ratio = float(config.downsample_ratio)
    side = tile.image_tokens ** 0.5
    merged = side * ratio
    if side != int(side) or merged != int(merged) or merged < 1:
        raise ModelError(f"InternVL's pixel shuffle needs a square patch grid whose side times downsample_ratio "
                         f"({ratio}) is whole, but a tile gives {tile.image_tokens} features")
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    side_px = config.vision_config.image_size
    return TiledVisionGeometry(tile=tile, tile_tokens=int(merged) ** 2,
                               tile_size=int(side_px if isinstance(side_px, int) else side_px[0]),
                               min_tiles=int(GotOcr2ImageProcessorPil.min_patches),
                               max_tiles=int(GotOcr2ImageProcessorPil.max_patches), projector=tile.projector)
