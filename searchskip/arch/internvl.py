"""InternVL, transformers-native (``InternVLForConditionalGeneration``: the ``-hf`` checkpoints)
over any registered decoder family (Qwen2 in InternVL3, Qwen3 in InternVL3.5).

The layout is LLaVA's (``model.model.vision_tower``, here InternViT; ``multi_modal_projector``,
a LayerNorm and two linears; ``language_model``; ``model.lm_head``). Its processor cuts an image
into tiles of the tower's resolution (plus a thumbnail), the tower runs on each, and a pixel
shuffle merges each tile's patch features 2 x 2 before the projector, so image-token counts
follow the tile count; FLOPs: :class:`searchskip.flops.vision.tiled.TiledVisionGeometry`. The
image tokens sit between ``<img>`` and ``</img>`` text tokens, which stay text (scope
``non_visual``). The remote-code InternVL checkpoints (``InternVLChatModel``) are another
class, refused like every unsupported one.
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class InternVLAdapter(WrapperAdapter):
    """InternVL: InternViT tiles + pixel shuffle + projector + a supported decoder."""

    description = "InternVLForConditionalGeneration (InternVL, -hf checkpoints) over any decoder family listed here"
    model_type = "internvl"
    class_name = "InternVLForConditionalGeneration"
    family = "internvl"
