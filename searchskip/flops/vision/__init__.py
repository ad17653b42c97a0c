"""Vision towers and projectors, as FLOP counting sees them: read from a meta-device model.

Four kinds of tower, one class (and module) each, with the same interface (:class:`VisionCount`):

* :class:`VisionGeometry` (``fixed.py``) -- a CLIP or SigLIP ViT at a fixed resolution: every
  image is ``patches`` patches (plus CLIP's class token), the tower's attention is
  bidirectional over all of them, SigLIP may add an attention-pooling head, and it gives a
  fixed number of LLM positions per image (Gemma 3, ``pooled.py``: its projector pools the
  patch grid to ``mm_tokens_per_image`` of them);
* :class:`AnyresVisionGeometry` (``anyres.py``) -- LLaVA-NeXT / LLaVA-OneVision: such a tower
  run on a base crop and on the tiles of the best-fitting resolution, the LLM positions
  following each image's size;
* :class:`TiledVisionGeometry` (``tiled.py``) -- InternVL: InternViT run on each tile of an
  image (plus a thumbnail), its patch features merged by a pixel shuffle;
* :class:`GridVisionGeometry` (``grid.py``) -- the Qwen2-VL / Qwen2.5-VL / Qwen3-VL ViT, which takes every image at its
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

from typing import Any

from searchskip.errors import ModelError
from searchskip.flops.vision.anyres import AnyresVisionGeometry, anyres_tower
from searchskip.flops.vision.base import Grid, VisionCount, VisionLayerGeometry
from searchskip.flops.vision.fixed import VisionGeometry, fixed_tower
from searchskip.flops.vision.grid import GridVisionGeometry, grid_tower
from searchskip.flops.vision.pooled import pooled_tower
from searchskip.flops.vision.tiled import TiledVisionGeometry, tiled_tower

__all__ = ["AnyresVisionGeometry", "Grid", "GridVisionGeometry", "TiledVisionGeometry", "VisionCount",
           "VisionGeometry", "VisionLayerGeometry", "vision_geometry"]

FIXED_TOWERS = ("clip_vision_model", "siglip_vision_model")
"""``vision_config.model_type`` of the fixed-resolution towers :func:`fixed_tower` reads."""


def vision_geometry(model: Any, adapter: Any, config: Any) -> VisionCount:
    """The vision geometry of a meta-device ``model`` (its tower and projector, found through
    ``adapter``); :class:`ModelError` for a tower FLOP counting does not know."""
    vc = config.vision_config
    kind = getattr(vc, "model_type", None)
    if kind in FIXED_TOWERS and getattr(config, "mm_tokens_per_image", None):  # Gemma 3
        return pooled_tower(model, adapter, config)
    if kind in FIXED_TOWERS and getattr(config, "image_grid_pinpoints", None):
        return anyres_tower(model, adapter, config)
    if kind in FIXED_TOWERS:
        return fixed_tower(model, adapter, config)
    if kind == "internvl_vision":
        return tiled_tower(model, adapter, config)
    if kind in ("qwen2_vl_vision", "qwen2_5_vl_vision", "qwen3_vl_vision"):
        return grid_tower(model, adapter, config)
    raise ModelError(f"FLOP counting knows CLIP, SigLIP, InternViT and Qwen-VL vision towers, but this model's is "
                     f"'{kind or type(adapter.vision_tower(model)).__name__}'")
