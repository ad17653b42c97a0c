"""Vision-language models that wrap a registered decoder family: the shared part of their adapters.

transformers 5.x lays its image-text-to-text models out alike: ``model.model.language_model``
is the base text model (``LlamaModel``, ``Qwen2_5_VLTextModel``, ...), the vision tower and
the projector sit beside it in ``model.model`` (``vision_tower`` and ``multi_modal_projector``
unless a family names them otherwise), and ``model.lm_head`` is the output head.
A :class:`WrapperAdapter` is registered unbound; :meth:`WrapperAdapter.resolve` finds the
decoder family whose ``text_model_types`` holds the text config's ``model_type`` and returns
a copy bound to it, which answers every per-layer question by that decoder adapter. A new
wrapper family is a subclass naming its ``model_type`` and its class (and, when they sit
elsewhere, its vision tower and projector).
"""

from __future__ import annotations

from typing import Any

from searchskip.arch.base import ArchAdapter, class_names
from searchskip.errors import ModelError


class WrapperAdapter(ArchAdapter):
    """A vision tower + projector + one of the registered decoder families."""

    model_type: str = ""
    """``config.model_type`` of the whole model (``"llava"``, ``"qwen2_5_vl"``)."""
    class_name: str = ""
    """Class name of the whole model (``"LlavaForConditionalGeneration"``)."""
    family: str = ""
    """Registry name of the unbound adapter; a bound one is ``family`` or ``family-<decoder>``."""
    name_with_decoder: bool = True
    """Whether the bound adapter's name carries its decoder's (``llava-mistral``); families with
    one decoder (Qwen2.5-VL) keep their own name."""

    def __init__(self, inner: ArchAdapter | None = None):
        self.inner = inner
        """The decoder family's adapter; ``None`` until :meth:`resolve` binds it."""
        if inner is None or not self.name_with_decoder:
            self.name = self.family
        else:
            self.name = f"{self.family}-{inner.name}"

    def matches(self, model: Any) -> bool:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type == self.model_type and self.class_name in class_names(model)

    def resolve(self, model, registry):
        text_config = self.text_config(model)
        inner = registry.decoder_family(text_config)
        if inner is None or isinstance(inner, WrapperAdapter):
            base = self.base_text_model(model)
            families = sorted({t for a in registry for t in a.text_model_types})
            raise ModelError(
                f"{type(model).__name__} over a {type(base).__name__} decoder (text model_type "
                f"'{getattr(text_config, 'model_type', '?')}') is not supported; decoders searchskip "
                f"supports inside {self.family}: {', '.join(families)}"
            )
        inner.validate_text_config(text_config)
        bound = type(self)(inner)
        layers = bound.layers(model)
        if len(layers):
            inner.validate_layer(layers[0])
        return bound

    def _decoder(self) -> ArchAdapter:
        if self.inner is None:
            raise RuntimeError(f"unbound {type(self).__name__}: obtain adapters with searchskip.arch.get_adapter(model)")
        return self.inner

    # model level ----------------------------------------------------------
    def base_text_model(self, model: Any) -> Any:
        """The base text model the wrapper holds (``model.model.language_model``)."""
        return model.model.language_model

    def text_config(self, model):
        return model.config.text_config

    def language_model(self, model):
        return self._decoder().decoder_stack(self.base_text_model(model))

    def image_token_id(self, model):
        return model.config.image_token_id

    def vision_tower(self, model):
        """``model.model.vision_tower`` (the LLaVA layout); families laid out otherwise override it."""
        return model.model.vision_tower

    def projector(self, model):
        """``model.model.multi_modal_projector`` (the LLaVA layout); families laid out otherwise override it."""
        return model.model.multi_modal_projector

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

    def query_norm(self, layer, q):
        return self._decoder().query_norm(layer, q)

    def key_norm(self, layer, k):
        return self._decoder().key_norm(layer, k)

    def attn_softcap(self, layer):
        return self._decoder().attn_softcap(layer)

    def attn_output_norm(self, layer, out):
        return self._decoder().attn_output_norm(layer, out)

    def attn_delta(self, layer, hidden_states, **layer_kwargs):
        return self._decoder().attn_delta(layer, hidden_states, **layer_kwargs)

    def mlp_delta(self, layer, hidden_states):
        return self._decoder().mlp_delta(layer, hidden_states)
