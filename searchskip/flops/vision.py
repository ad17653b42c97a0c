"""Vision towers and projectors, as FLOP counting sees them: read from a meta-device model.

Two kinds of tower, one class each, with the same interface (:class:`VisionCount`):

* :class:`VisionGeometry` -- a CLIP (or SigLIP-like) ViT at a fixed resolution: every image
  is ``patches`` patches (plus a class token), the tower's attention is bidirectional over
  all of them, and it gives a fixed number of LLM positions per image;
* :class:`GridVisionGeometry` -- the Qwen2-VL / Qwen2.5-VL / Qwen3-VL ViT, which takes every image at its
  own resolution: an image is a grid ``(t, h, w)`` of patches (``t`` temporal patches of
  ``temporal_patch_size`` frames; a still image is ``t = 1``), embedded by a Conv3d; each
  block attends within a frame (Qwen2-VL; Qwen2.5-VL's ``fullatt_block_indexes``) or within
  windows of ``window x window`` merged units (Qwen2.5-VL's other blocks; windows at the
  right and bottom edges are cut short), one SDPA call per frame / window; the patch merger
  joins ``merge x merge`` patches into one LLM position, so an image gives
  ``t * h * w / merge ** 2`` positions (Qwen3-VL: each DeepStack merger does the same for
  the features of one block, so they count with the projector).

:meth:`VisionCount.entries` lists ``(layer, part, flops)`` of the tower for ``images``
images of one grid (``None`` for fixed-resolution towers); the projector's linears run once
per LLM position (:attr:`VisionCount.projector`). Counts equal ``FlopCounterMode``'s on a
real forward (tested), as the module doc of :mod:`searchskip.flops` describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear

__all__ = ["AnyresVisionGeometry", "GridVisionGeometry", "VisionGeometry", "VisionLayerGeometry", "vision_geometry"]

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class VisionLayerGeometry:
    """One encoder layer of a vision tower: its linears and attention shape."""

    linears: tuple[Linear, ...]
    heads: int
    head_dim: int


def _linears(module: Any) -> tuple[Linear, ...]:
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


@dataclass(frozen=True)
class VisionGeometry(VisionCount):
    """A CLIP vision tower (fixed resolution) and the multimodal projector of a LLaVA model."""

    channels: int
    patch_size: int
    width: int
    patches: int
    """Patches per image (``(image_size // patch_size) ** 2``)."""
    class_token: bool
    layers: tuple[VisionLayerGeometry, ...]
    """Every encoder layer that runs (all of them: HF runs the whole tower even when
    ``vision_feature_layer`` selects an earlier hidden state)."""
    image_tokens: int
    """LLM positions (projector outputs) per image: the patches, plus the class token with
    ``vision_feature_select_strategy: full``."""
    projector: tuple[Linear, ...]

    @property
    def tokens(self) -> int:
        """Sequence length inside the tower (patches + class token)."""
        return self.patches + int(self.class_token)

    def tokens_per_image(self, grid: Grid | None = None) -> int:
        return self.image_tokens

    def entries(self, images: int, grid: Grid | None = None) -> Iterator[tuple[int | None, str, float]]:
        t = self.tokens
        patch = 2 * self.channels * self.patch_size ** 2 * self.width  # the conv as a matmul, per patch
        yield None, "patch_embed", images * self.patches * patch
        for j, layer in enumerate(self.layers):
            for lin in layer.linears:
                yield j, lin.name, images * t * lin.flops_per_token
            pairs = images * t * t  # bidirectional: every query sees every key, as computed
            yield j, "scores", 2 * layer.heads * layer.head_dim * pairs
            yield j, "weighted_sum", 2 * layer.heads * layer.head_dim * pairs


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


@dataclass(frozen=True)
class AnyresVisionGeometry(VisionCount):
    """LLaVA-NeXT's "anyres": the CLIP tower (:attr:`crop`) runs on the image resized to one crop
    and on the crops of the image at the best-fitting resolution of ``pinpoints`` (``rows x
    cols`` crops); the projector runs on every crop's patches; the LLM gets the base crop's
    patches, then the tiles' patches with the padding rows (or columns) of the letterboxed
    image removed, each row ended by a newline embedding. An image's shape is its original
    ``(height, width)`` in pixels (what the processor returns as ``image_sizes``)."""

    crop: VisionGeometry
    pinpoints: tuple[tuple[int, int], ...]
    crop_size: int
    projector: tuple[Linear, ...]
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
        return side * side + current_h * current_w + current_h  # base, unpadded tiles, one newline a row

    def projector_tokens(self, shape: Grid | None) -> int:
        return self.crops(shape) * self.crop.patches

    def shape_for(self, height: int, width: int, processor_size: Mapping | None = None) -> Grid:
        """The shape of a ``height x width`` image: its size (the processor resizes it per crop)."""
        return int(height), int(width)

    def entries(self, images: int, shape: Grid | None) -> Iterator[tuple[int | None, str, float]]:
        yield from self.crop.entries(images * self.crops(shape))


def vision_geometry(model: Any, adapter: Any, config: Any) -> VisionCount:
    """The vision geometry of a meta-device ``model`` (its tower and projector, found through
    ``adapter``); :class:`ModelError` for a tower FLOP counting does not know."""
    vc = config.vision_config
    kind = getattr(vc, "model_type", None)
    if kind == "clip_vision_model" and getattr(config, "image_grid_pinpoints", None):
        return _anyres(model, adapter, config)
    if kind == "clip_vision_model":
        return _clip(model, adapter, config)
    if kind in ("qwen2_vl_vision", "qwen2_5_vl_vision", "qwen3_vl_vision"):
        return _qwen(model, adapter, config)
    raise ModelError(f"FLOP counting knows CLIP and Qwen-VL vision towers, but this model's is "
                     f"'{kind or type(adapter.vision_tower(model)).__name__}'")


def _clip(model: Any, adapter: Any, config: Any) -> VisionGeometry:
    from torch import nn

    tower = adapter.vision_tower(model)
    projector = adapter.projector(model)
    vc = config.vision_config
    layer_lists = [m for name, m in tower.named_modules()
                   if name.endswith("encoder.layers") and isinstance(m, nn.ModuleList)]
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if len(layer_lists) != 1 or len(convs) != 1:
        raise ModelError(f"{type(tower).__name__} is not laid out like a CLIP vision tower "
                         "(one patch convolution, one encoder.layers list)")
    in_layers = {id(m) for m in layer_lists[0].modules()}
    stray = [name for name, m in tower.named_modules() if isinstance(m, nn.Linear) and id(m) not in in_layers]
    if stray:
        raise ModelError(f"{type(tower).__name__} has linears outside its encoder layers ({', '.join(stray)}) "
                         "that FLOP counting does not know how to place")
    layers = tuple(VisionLayerGeometry(linears=_linears(layer), heads=int(layer.self_attn.num_heads),
                                       head_dim=int(layer.self_attn.head_dim)) for layer in layer_lists[0])
    conv = convs[0]
    if tuple(conv.kernel_size) != tuple(conv.stride):
        raise ModelError("the patch convolution's stride differs from its kernel size")
    patch = int(conv.kernel_size[0])
    patches = (int(vc.image_size) // patch) ** 2
    class_token = any(hasattr(m, "class_embedding") for m in tower.modules())
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    image_tokens = patches + (1 if (strategy == "full" and class_token) else 0)
    return VisionGeometry(
        channels=int(conv.in_channels), patch_size=patch, width=int(conv.out_channels), patches=patches,
        class_token=class_token, layers=layers, image_tokens=image_tokens, projector=_linears(projector),
    )


def _anyres(model: Any, adapter: Any, config: Any) -> AnyresVisionGeometry:
    if getattr(config, "vision_feature_select_strategy", "default") != "default":
        raise ModelError("FLOP counting knows LLaVA-NeXT with vision_feature_select_strategy 'default' only "
                         "(the class token dropped from every crop)")
    crop = _clip(model, adapter, config)
    return AnyresVisionGeometry(crop=crop, pinpoints=tuple(tuple(int(x) for x in p) for p in config.image_grid_pinpoints),
                                crop_size=int(config.vision_config.image_size), projector=crop.projector)


def _qwen(model: Any, adapter: Any, config: Any) -> GridVisionGeometry:
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
    layers = tuple(VisionLayerGeometry(linears=_linears(block), heads=int(block.attn.num_heads),
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
        projector=_linears(projector),
        min_pixels=int(defaults["shortest_edge"]), max_pixels=int(defaults["longest_edge"]),
    )
