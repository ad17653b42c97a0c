"""LLaVA (``LlavaForConditionalGeneration``) over any registered decoder family.

transformers 5.x layout: ``model.model.vision_tower`` (CLIP; its layers at
``vision_tower.encoder.layers``), ``model.model.multi_modal_projector``,
``model.model.language_model`` (the base text model ``AutoModel.from_config(text_config)``
builds: LlamaModel, MistralModel, Qwen2Model, OPTModel, ...), ``model.lm_head``.

The adapter is registered unbound; :meth:`LlavaAdapter.resolve` finds the decoder family
whose ``text_model_types`` holds ``text_config.model_type`` and returns a copy bound to it.
Every per-layer question is then answered by that decoder adapter.
"""

from __future__ import annotations

from typing import Any

from searchskip.arch.base import ArchAdapter, class_names
from searchskip.errors import ModelError


class LlavaAdapter(ArchAdapter):
    """LLaVA-1.5-style models: CLIP vision tower + projector + a supported decoder."""

    description = "LlavaForConditionalGeneration over any decoder family listed here (Llama/Vicuna, Mistral, Qwen2, OPT)"

    def __init__(self, inner: ArchAdapter | None = None):
        self.inner = inner
        """The decoder family's adapter; ``None`` until :meth:`resolve` binds it."""
        self.name = "llava" if inner is None else f"llava-{inner.name}"

    def matches(self, model: Any) -> bool:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type == "llava" and "LlavaForConditionalGeneration" in class_names(model)

    def resolve(self, model, registry):
        text_config = self.text_config(model)
        inner = registry.decoder_family(text_config)
        if inner is None or inner is self:
            base = model.model.language_model
            families = sorted({t for a in registry for t in a.text_model_types})
            raise ModelError(
                f"{type(model).__name__} over a {type(base).__name__} decoder (text model_type "
                f"'{getattr(text_config, 'model_type', '?')}') is not supported; LLaVA decoders searchskip "
                f"supports: {', '.join(families)}"
            )
        inner.validate_text_config(text_config)
        bound = LlavaAdapter(inner)
        layers = bound.layers(model)
        if len(layers):
            inner.validate_layer(layers[0])
        return bound

    def _decoder(self) -> ArchAdapter:
        if self.inner is None:
            raise RuntimeError("unbound LlavaAdapter: obtain adapters with searchskip.arch.get_adapter(model)")
        return self.inner

    # model level ----------------------------------------------------------
    def text_config(self, model):
        return model.config.text_config

    def language_model(self, model):
        return self._decoder().decoder_stack(model.model.language_model)

    def vision_tower(self, model):
        return model.model.vision_tower

    def projector(self, model):
        return model.model.multi_modal_projector

    def image_token_id(self, model):
        return model.config.image_token_id

    # per layer: delegated -------------------------------------------------
    @property
    def mlp_in_keys(self):  # type: ignore[override]
        return self._decoder().mlp_in_keys

    @property
    def mlp_out_key(self):  # type: ignore[override]
        return self._decoder().mlp_out_key

    @property
    def attn_in_keys(self):  # type: ignore[override]
        return self._decoder().attn_in_keys

    @property
    def attn_out_key(self):  # type: ignore[override]
        return self._decoder().attn_out_key

    def attention(self, layer):
        return self._decoder().attention(layer)

    def attn_norm(self, layer):
        return self._decoder().attn_norm(layer)

    def mlp_norm(self, layer):
        return self._decoder().mlp_norm(layer)

    def attn_linears(self, layer):
        return self._decoder().attn_linears(layer)

    def mlp_linears(self, layer):
        return self._decoder().mlp_linears(layer)

    def ffn_channels(self, layer):
        return self._decoder().ffn_channels(layer)

    def attn_geometry(self, layer):
        return self._decoder().attn_geometry(layer)

    def attn_delta(self, layer, hidden_states, **layer_kwargs):
        return self._decoder().attn_delta(layer, hidden_states, **layer_kwargs)

    def mlp_delta(self, layer, hidden_states):
        return self._decoder().mlp_delta(layer, hidden_states)
