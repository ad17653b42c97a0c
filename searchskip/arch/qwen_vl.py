"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``).

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

Qwen3-VL: a Qwen3 decoder (per-head q/k norms) and a ViT with learned position embeddings
(patch 16, no windows) whose **DeepStack** mergers turn the features of some ViT blocks into
extra image embeddings that the text model adds to the image positions after decoder layers
``0 .. k-1`` (``k`` = ``len(deepstack_visual_indexes)``). The addition happens in the text
model's loop, after the layer's forward, so a skipped layer still gets it; the projector is
the main merger plus the DeepStack mergers, and those ``k`` layers are
:meth:`~searchskip.arch.base.ArchAdapter.injected_layers` (an export keeps them in place).
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class QwenVLAdapter(WrapperAdapter):
    """Qwen ViT + patch merger + a Qwen2-style decoder with M-RoPE."""

    name_with_decoder = False

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


class Qwen3VLAdapter(QwenVLAdapter):
    description = "Qwen3VLForConditionalGeneration (Qwen3-VL, dense)"
    model_type = "qwen3_vl"
    class_name = "Qwen3VLForConditionalGeneration"
    family = "qwen3-vl"

    def projector(self, model):
        from torch import nn

        visual = model.model.visual
        return nn.ModuleList([visual.merger, *visual.deepstack_merger_list])

    def injected_layers(self, model):
        return frozenset(range(len(model.model.visual.deepstack_merger_list)))
