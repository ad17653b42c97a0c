"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

transformers 5.x layout: ``model.model.visual`` (the Qwen ViT: a Conv3d patch embedding over
``temporal_patch_size x patch_size x patch_size`` pixels, ``blocks`` -- Qwen2.5-VL with
window attention except in ``fullatt_block_indexes`` --, and the patch ``merger``, which
joins ``spatial_merge_size ** 2`` neighbouring patches into one LLM token: the projector),
``model.model.language_model`` (``Qwen2VLTextModel`` / ``Qwen2_5_VLTextModel``), ``model.lm_head``.

The decoder layers are Llama-style (Qwen2 with q/k/v biases), so the ``llama`` adapter
decomposes them. M-RoPE (3-D positions: time, height, width) is folded into the
``position_embeddings`` (cos, sin) the text model hands every layer, one pair per position,
so scoped ops and token dropping carry it by taking those rows. Image-token counts follow
each image's resolution (``image_grid_thw``): ``t * h * w / spatial_merge_size ** 2``.
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class QwenVLAdapter(WrapperAdapter):
    """Qwen ViT + patch merger + a Qwen2-style decoder with M-RoPE."""

    name_with_decoder = False
    image_input_keys = ("pixel_values", "image_grid_thw")

    def vision_tower(self, model):
        return model.model.visual

    def projector(self, model):
        return model.model.visual.merger


class Qwen2VLAdapter(QwenVLAdapter):
    description = "Qwen2VLForConditionalGeneration (Qwen2-VL)"
    model_type = "qwen2_vl"
    class_name = "Qwen2VLForConditionalGeneration"
    family = "qwen2-vl"


class Qwen25VLAdapter(QwenVLAdapter):
    description = "Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL)"
    model_type = "qwen2_5_vl"
    class_name = "Qwen2_5_VLForConditionalGeneration"
    family = "qwen2.5-vl"
