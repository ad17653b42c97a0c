"""The Qwen2-VL / Qwen2.5-VL / Qwen3-VL ViT: every image at its own resolution, as a patch grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.base import Grid, VisionCount, VisionLayerGeometry, linears_of

__all__ = ["GridVisionGeometry", "grid_tower"]


def _window_sides(units: int, window: int) -> list[int]:
    """Sides of the windows along one axis of ``units`` merged units (the last one cut short)."""
    return [window] * (units // window) + ([units % window] if units % window else [])


@dataclass(frozen=True)
class GridVisionGeometry(VisionCount):
    """The Qwen2-VL / Qwen2.5-VL ViT: images at their own resolution (see the module doc)."""

    channels: int
    temporal_patch: int
    patch_size: int
    width: int
    merge: int
    """Patches merged into one LLM position along each side (``spatial_merge_size``)."""
    layers: tuple[VisionLayerGeometry, ...]
    window: int | None
    """Window side in merged units (``window_size // merge // patch_size``); ``None``: no windows."""
    full_layers: frozenset[int]
    """Blocks that attend over the whole frame when the others use windows."""
    projector: tuple[Linear, ...]
    min_pixels: int
    max_pixels: int
    image_tokens: None = None

    def tokens_per_image(self, grid: Grid | None) -> int:
        t, h, w = self._check(grid)
        return t * h * w // self.merge ** 2

    def _check(self, grid: Grid | None) -> Grid:
        if grid is None:
            raise ValueError("this vision tower takes images at their own resolution: the workload needs image_shape")
        t, h, w = (int(x) for x in grid)
        if min(t, h, w) < 1 or h % self.merge or w % self.merge:
            raise ValueError(f"image_shape {tuple(grid)}: (t, h, w) must be positive with h and w multiples of "
                             f"spatial_merge_size {self.merge}")
        return t, h, w

    def shape_for(self, height: int, width: int, processor_size: Mapping | None = None) -> Grid:
        """The grid of a ``height x width`` image after the image processor's resize (Qwen-VL's
        ``smart_resize``: sides rounded to multiples of ``patch_size * merge``, pixels kept
        within ``[shortest_edge, longest_edge]`` of ``processor_size``, default the image
        processor class's range)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        size = processor_size or {}
        h, w = smart_resize(int(height), int(width), factor=self.patch_size * self.merge,
                            min_pixels=size.get("shortest_edge") or self.min_pixels,
                            max_pixels=size.get("longest_edge") or self.max_pixels)
        return 1, h // self.patch_size, w // self.patch_size

    def entries(self, images: int, grid: Grid | None) -> Iterator[tuple[int | None, str, float]]:
        t, h, w = self._check(grid)
        patches = t * h * w
        per_patch = 2 * self.channels * self.temporal_patch * self.patch_size ** 2 * self.width
        yield None, "patch_embed", images * patches * per_patch
        frame_pairs = t * (h * w) ** 2
        if self.window is not None:
            rows = _window_sides(h // self.merge, self.window)
            cols = _window_sides(w // self.merge, self.window)
            window_pairs = t * self.merge ** 4 * sum(r * r for r in rows) * sum(c * c for c in cols)
        for j, layer in enumerate(self.layers):
            for lin in layer.linears:
                yield j, lin.name, images * patches * lin.flops_per_token
            pairs = frame_pairs if self.window is None or j in self.full_layers else window_pairs
            yield j, "scores", 2 * layer.heads * layer.head_dim * images * pairs
            yield j, "weighted_sum", 2 * layer.heads * layer.head_dim * images * pairs


def grid_tower(model: Any, adapter: Any, config: Any) -> GridVisionGeometry:
    from torch import nn

    tower = adapter.vision_tower(model)
    vc = config.vision_config
    conv = tower.patch_embed.proj
    if not isinstance(conv, nn.Conv3d) or tuple(conv.kernel_size) != tuple(conv.stride):
        raise ModelError(f"{type(tower).__name__}'s patch embedding is not a Conv3d with stride = kernel")
    projector = adapter.projector(model)  # the merger (Qwen3-VL: and its DeepStack mergers)
    in_blocks = {id(m) for m in tower.blocks.modules()} | {id(m) for m in projector.modules()}
    stray = [name for name, m in tower.named_modules() if isinstance(m, nn.Linear) and id(m) not in in_blocks]
    if stray:
        raise ModelError(f"{type(tower).__name__} has linears outside its blocks and merger ({', '.join(stray)}) "
                         "that FLOP counting does not know how to place")
    layers = tuple(VisionLayerGeometry(linears=linears_of(block), heads=int(block.attn.num_heads),
                                       head_dim=int(block.attn.head_dim)) for block in tower.blocks)
    merge = int(vc.spatial_merge_size)
    patch = int(conv.kernel_size[1])
    window_size = getattr(vc, "window_size", None)
    window = int(window_size) // merge // patch if window_size else None
    full = frozenset(int(i) for i in getattr(vc, "fullatt_block_indexes", None) or ())
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    defaults = Qwen2VLImageProcessorPil.size  # the processor's default pixel range (no torchvision needed)
    return GridVisionGeometry(
        channels=int(conv.in_channels), temporal_patch=int(conv.kernel_size[0]), patch_size=patch,
        width=int(conv.out_channels), merge=merge, layers=layers, window=window, full_layers=full,
        projector=linears_of(projector),
        min_pixels=int(defaults["shortest_edge"]), max_pixels=int(defaults["longest_edge"]),
    )
