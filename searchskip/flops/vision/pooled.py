"""Gemma 3's vision side: a fixed-resolution SigLIP tower whose patch grid the projector
average-pools to ``mm_tokens_per_image`` positions before one matrix multiply.

The tower runs on every patch (4,096 at 896 px, patch 14; no class token, no pooling head); the
projector pools each ``k x k`` block of patch features (elementwise: no FLOPs counted), applies
an RMSNorm and multiplies by ``mm_input_projection_weight`` (vision width x text width), so the
projector's one matmul runs on the ``mm_tokens_per_image`` pooled positions, which are the
image's LLM positions (256).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from searchskip.errors import ModelError
from searchskip.flops.linear import Linear
from searchskip.flops.vision.fixed import VisionGeometry, fixed_tower

__all__ = ["pooled_tower"]


def pooled_tower(model: Any, adapter: Any, config: Any) -> VisionGeometry:
    """The :class:`~searchskip.flops.vision.fixed.VisionGeometry` of a Gemma 3 model: its tower,
    ``mm_tokens_per_image`` LLM positions, and the projection matrix as the projector's one linear."""
    tower = fixed_tower(model, adapter, config)
    projector = adapter.projector(model)
    weight = getattr(projector, "mm_input_projection_weight", None)
    tokens = int(config.mm_tokens_per_image)
    side = int(round(tokens ** 0.5))
    grid = int(round(tower.patches ** 0.5))
    if weight is None or weight.dim() != 2 or side * side != tokens or grid * grid != tower.patches or grid % side:
        raise ModelError(f"{type(projector).__name__} is not laid out like Gemma 3's projector (a square patch grid "
                         f"pooled to mm_tokens_per_image={tokens} positions, then mm_input_projection_weight)")
    if tower.class_token:
        raise ModelError("Gemma 3's projector pools a grid of patches, but this tower has a class token")
    projection = Linear("mm_input_projection", int(weight.shape[0]), int(weight.shape[1]))
    return replace(tower, image_tokens=tokens, projector=(projection,))
