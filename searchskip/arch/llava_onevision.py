"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) over any registered decoder family.

The layout is LLaVA-NeXT's (``model.model.vision_tower``, here SigLIP;
``multi_modal_projector``; ``image_newline``; ``language_model``; ``model.lm_head``), and so is
its "anyres" packing, with one step more: ``vision_aspect_ratio: anyres_max_N`` shrinks the
unpadded tile features to about N crops' worth (bilinear) before the newlines are added.
Image-token counts follow each image's size (``image_sizes``); FLOPs:
:class:`searchskip.flops.vision.anyres.AnyresVisionGeometry`. searchskip feeds still images
only; the model's video path (``pixel_values_videos``) is left as transformers has it.
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class LlavaOnevisionAdapter(WrapperAdapter):
    """LLaVA-OneVision: SigLIP crops at any resolution + projector + a supported decoder (Qwen2)."""

    description = "LlavaOnevisionForConditionalGeneration (LLaVA-OneVision) over any decoder family listed here"
    model_type = "llava_onevision"
    class_name = "LlavaOnevisionForConditionalGeneration"
    family = "llava-onevision"
