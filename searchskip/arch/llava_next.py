"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) over any registered decoder family.

transformers 5.x layout, as LLaVA's: ``model.model.vision_tower`` (CLIP),
``model.model.multi_modal_projector``, ``model.model.language_model``, ``model.lm_head``; plus
``model.model.image_newline``, the embedding that ends every row of tile features.

"anyres": an image is cut into the crops of the best-fitting resolution of
``config.image_grid_pinpoints`` plus one crop of the whole image; the tower and projector run
on every crop, and the LLM gets the whole-image crop's patches and the tiles' patches with the
letterbox padding removed, a newline after each row. Image-token counts therefore follow each
image's size (the processor's ``image_sizes``); FLOPs: :class:`searchskip.flops.vision.anyres.AnyresVisionGeometry`.
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class LlavaNextAdapter(WrapperAdapter):
    """LLaVA-NeXT (LLaVA-1.6): CLIP crops at any resolution + projector + a supported decoder."""

    description = "LlavaNextForConditionalGeneration (LLaVA-NeXT) over any decoder family listed here"
    model_type = "llava_next"
    class_name = "LlavaNextForConditionalGeneration"
    family = "llava-next"
