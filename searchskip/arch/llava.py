"""LLaVA (``LlavaForConditionalGeneration``) over any registered decoder family.

transformers 5.x layout: ``model.model.vision_tower`` (CLIP; its layers at
``vision_tower.encoder.layers``), ``model.model.multi_modal_projector``,
``model.model.language_model`` (the base text model ``AutoModel.from_config(text_config)``
builds: LlamaModel, MistralModel, Qwen2Model, OPTModel, ...), ``model.lm_head``.

Registered unbound; :meth:`~searchskip.arch.wrapper.WrapperAdapter.resolve` binds the
decoder family whose ``text_model_types`` holds ``text_config.model_type``.
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class LlavaAdapter(WrapperAdapter):
    """LLaVA-1.5-style models: CLIP vision tower + projector + a supported decoder."""

    description = "LlavaForConditionalGeneration over any decoder family listed here (Llama/Vicuna, Mistral, Qwen2, Qwen3, OPT)"
    model_type = "llava"
    class_name = "LlavaForConditionalGeneration"
    family = "llava"
