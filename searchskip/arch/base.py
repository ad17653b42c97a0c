"""What every architecture adapter provides, and the registry that holds them.

An adapter describes where one model family keeps its parts (decoder stack, layers,
attention, norms, FFN linears, vision tower, projector) and computes the residual
update of each sublayer, so that skipping / parallel / pruning code never contains
family-specific code. Op code only ever does::

    adapter = get_adapter(model)
    for layer in adapter.layers(model):
        h = h + adapter.attn_delta(layer, h, **layer_kwargs)
        h = h + adapter.mlp_delta(layer, h)

and gets, bit for bit, what the layer's own ``forward`` returns.

Registration follows peft's explicit pattern: one ``register(...)`` line per family in
``searchskip/arch/__init__.py``; registering a name twice is refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Iterator

from searchskip.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def class_names(obj: Any) -> set[str]:
    """Names of every class in ``type(obj)``'s MRO (so subclasses of a supported class match),
    without importing transformers' model modules."""
    return {cls.__name__ for cls in type(obj).__mro__}


class ArchAdapter(ABC):
    """How searchskip reads and decomposes one model family.

    Adapters are stateless and shared; every method takes the model or one decoder layer.
    A wrapper family (LLaVA) is registered unbound and ``resolve`` returns a copy bound to
    the adapter of the decoder it wraps.
    """

    name: str = ""
    """Registry key of the adapter family (``"llama"`` also serves Mistral and Qwen2)."""

    description: str = ""
    """What the family covers, in words, for the "supported families" list of error messages."""

    text_model_types: tuple[str, ...] = ()
    """``config.model_type`` values of the *decoder* configs this adapter can decompose
    (``"llama"``, ``"mistral"``, ...). Empty for wrappers. A wrapper such as LLaVA looks its
    inner decoder up by this, so a new decoder family works inside LLaVA with no extra line."""

    bidirectional_images: bool = False
    """Whether image tokens attend to every token of their own image, later ones too (Gemma 3);
    else attention is causal throughout (what token dropping's masks and the causal FLOP count
    assume)."""

    # ---------------------------------------------------------------- matching
    @abstractmethod
    def matches(self, model: Any) -> bool:
        """True when ``model`` (a whole ``...ForCausalLM`` / ``...ForConditionalGeneration``)
        belongs to this family, judged by its class (MRO names) and ``config.model_type``."""

    def validate_text_config(self, text_config: Any) -> None:
        """Raise :class:`ModelError` when a decoder config of this family cannot be decomposed
        (e.g. OPT post-norm). Default: everything is fine."""

    def validate_layer(self, layer: "nn.Module") -> None:
        """Raise :class:`ModelError` when a decoder layer is not laid out as this adapter expects
        (guards against a transformers release that renames parts). Default: no check."""

    def resolve(self, model: Any, registry: "AdapterRegistry") -> "ArchAdapter":
        """The adapter to use for ``model``, after checking it can be handled.

        Default: validate the text config and the first layer, and return ``self``. Wrappers
        override this to bind the adapter of their inner decoder (looked up in ``registry``)."""
        self.validate_text_config(self.text_config(model))
        layers = self.layers(model)
        if len(layers):
            self.validate_layer(layers[0])
        return self

    # ---------------------------------------------------------------- model-level locations
    @abstractmethod
    def language_model(self, model: Any) -> "nn.Module":
        """The decoder stack: the module that owns ``.layers`` and runs them
        (LlamaModel / MistralModel / Qwen2Model / OPTDecoder; for LLaVA the inner one)."""

    def decoder_stack(self, base_model: "nn.Module") -> "nn.Module":
        """Given the base text model ``AutoModel.from_config(text_config)`` builds for this
        family (what LLaVA holds as ``model.model.language_model``), the decoder stack inside
        it. Default: the base model itself (true for Llama, Mistral, Qwen2)."""
        return base_model

    def layers(self, model: Any) -> "nn.ModuleList":
        """The decoder layers, in order (``language_model(model).layers``)."""
        return self.language_model(model).layers

    def text_config(self, model: Any) -> Any:
        """The decoder's config (``model.config`` for text-only models, ``config.text_config``
        for LLaVA)."""
        return model.config.get_text_config(decoder=True)

    def num_layers(self, model: Any) -> int:
        """Number of decoder layers actually present (``len(layers(model))``)."""
        return len(self.layers(model))

    def vision_tower(self, model: Any) -> "nn.Module | None":
        """The image encoder (CLIP vision model for LLaVA); ``None`` for text-only models."""
        return None

    def projector(self, model: Any) -> "nn.Module | None":
        """The vision-to-text projector; ``None`` for text-only models."""
        return None

    def image_token_id(self, model: Any) -> int | None:
        """Id of the placeholder token that image features replace; ``None`` for text-only."""
        return None

    def injected_layers(self, model: Any) -> frozenset[int]:
        """Decoder layers after which the model adds something by layer index (Qwen3-VL's DeepStack
        adds vision features after layers ``0 .. k-1``): skipping them at runtime keeps the
        injection right, but an export cannot remove them physically (the layers after would be
        renumbered into their place). Default: none."""
        return frozenset()

    # ---------------------------------------------------------------- per-layer locations
    @abstractmethod
    def attention(self, layer: "nn.Module") -> "nn.Module":
        """The self-attention module of ``layer`` (it owns ``layer_idx``, its KV-cache slot)."""

    @abstractmethod
    def attn_norm(self, layer: "nn.Module") -> "nn.Module":
        """The norm applied to the residual stream before attention."""

    @abstractmethod
    def mlp_norm(self, layer: "nn.Module") -> "nn.Module":
        """The norm applied to the residual stream before the FFN."""

    @abstractmethod
    def attn_linears(self, layer: "nn.Module") -> dict[str, "nn.Linear"]:
        """``{"q", "k", "v", "o"}`` projections. q/k/v output channels are heads x head_dim
        (k/v: kv-heads x head_dim); o's input channels are heads x head_dim."""

    @abstractmethod
    def mlp_linears(self, layer: "nn.Module") -> dict[str, "nn.Linear"]:
        """The FFN's linears by role name, e.g. ``{"gate", "up", "down"}`` or ``{"fc1", "fc2"}``.
        The linears named in :attr:`mlp_in_keys` have the FFN channels as *output* channels,
        the one named :attr:`mlp_out_key` has them as *input* channels (structured pruning
        removes the same indices from all of them)."""

    mlp_in_keys: tuple[str, ...] = ()
    """Keys of :meth:`mlp_linears` whose output features are the FFN channels."""

    mlp_out_key: str = ""
    """Key of :meth:`mlp_linears` whose input features are the FFN channels."""

    attn_in_keys: tuple[str, ...] = ("q", "k", "v")
    """Keys of :meth:`attn_linears` whose output features are head channels."""

    attn_out_key: str = "o"
    """Key of :meth:`attn_linears` whose input features are head channels."""

    def ffn_channels(self, layer: "nn.Module") -> int:
        """Number of FFN channels (intermediate size) of ``layer`` as it is now."""
        return self.mlp_linears(layer)[self.mlp_out_key].in_features

    @abstractmethod
    def attn_geometry(self, layer: "nn.Module") -> tuple[int, int, int]:
        """``(num_heads, num_kv_heads, head_dim)`` of ``layer``'s attention."""

    def query_norm(self, layer: "nn.Module", q: "torch.Tensor") -> "torch.Tensor":
        """Queries (batch x heads x positions x head_dim, projected, before rotary embeddings) as
        the attention normalizes them per head (Qwen3's ``q_norm``); default: unchanged. Code
        that computes attention for selected positions itself (token scopes, ranking) calls it."""
        return q

    def key_norm(self, layer: "nn.Module", k: "torch.Tensor") -> "torch.Tensor":
        """Keys, as :meth:`query_norm` (Qwen3's ``k_norm``); default: unchanged."""
        return k

    def attn_softcap(self, layer: "nn.Module") -> float | None:
        """``c`` where the attention caps its scaled scores at ``c * tanh(s / c)`` before the softmax
        (Gemma 2's ``attn_logit_softcapping``); default ``None``: no cap."""
        return None

    def attn_output_norm(self, layer: "nn.Module", out: "torch.Tensor") -> "torch.Tensor":
        """The attention's output (after the o projection) as it enters the residual stream:
        Gemma's ``post_attention_layernorm`` ("sandwich" norms); default: unchanged."""
        return out

    # ---------------------------------------------------------------- decomposition
    @abstractmethod
    def attn_delta(self, layer: "nn.Module", hidden_states: "torch.Tensor", **layer_kwargs: Any) -> "torch.Tensor":
        """The attention sublayer's residual update: ``h + attn_delta(h)`` is the stream after
        attention. ``layer_kwargs`` are exactly the keyword arguments the decoder layer's own
        ``forward`` receives (attention_mask, position_ids, the KV cache, use_cache,
        position_embeddings, ...); they are forwarded as the layer would forward them, so the
        attention writes its K/V into cache slot ``attention(layer).layer_idx`` as usual."""

    @abstractmethod
    def mlp_delta(self, layer: "nn.Module", hidden_states: "torch.Tensor") -> "torch.Tensor":
        """The FFN sublayer's residual update: ``h + mlp_delta(h)`` is the stream after the FFN."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class AdapterRegistry:
    """Ordered name -> adapter map; refuses a second adapter under an existing name."""

    def __init__(self) -> None:
        self._adapters: dict[str, ArchAdapter] = {}

    def register(self, adapter: ArchAdapter) -> ArchAdapter:
        """Add ``adapter``. Raises ``ValueError`` if its name is empty or already registered."""
        if not isinstance(adapter, ArchAdapter):
            raise TypeError(f"expected an ArchAdapter, got {type(adapter).__name__}")
        if not adapter.name:
            raise ValueError(f"{type(adapter).__name__} has no name")
        if adapter.name in self._adapters:
            raise ValueError(
                f"an architecture adapter named '{adapter.name}' is already registered "
                f"({type(self._adapters[adapter.name]).__name__}); refusing to replace it"
            )
        self._adapters[adapter.name] = adapter
        return adapter

    def __iter__(self) -> Iterator[ArchAdapter]:
        return iter(self._adapters.values())

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def names(self) -> list[str]:
        return list(self._adapters)

    def supported(self) -> list[str]:
        """One description line per registered family."""
        return [f"{a.name}: {a.description}" for a in self]

    def decoder_family(self, text_config: Any) -> ArchAdapter | None:
        """The adapter whose :attr:`ArchAdapter.text_model_types` holds ``text_config.model_type``."""
        model_type = getattr(text_config, "model_type", None)
        for adapter in self:
            if model_type in adapter.text_model_types:
                return adapter
        return None

    def get(self, model: Any) -> ArchAdapter:
        """The (resolved) adapter for ``model``; :class:`ModelError` naming the model class and
        listing the supported families when none matches."""
        for adapter in self:
            if adapter.matches(model):
                return adapter.resolve(model, self)
        raise ModelError(
            f"{type(model).__name__} (model_type '{getattr(getattr(model, 'config', None), 'model_type', '?')}') "
            "is not a supported architecture. Supported families:\n  - " + "\n  - ".join(self.supported())
        )
