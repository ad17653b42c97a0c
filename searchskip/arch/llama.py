"""Llama-style pre-norm decoders: Llama (and Vicuna), Mistral, Qwen2, Qwen3.

In transformers 5.x the three decoder layers are line-for-line the same::

    h = h + self_attn(input_layernorm(h), attention_mask=..., position_ids=..., cache=...,
                      use_cache=..., position_embeddings=..., **kwargs)[0]
    h = h + mlp(post_attention_layernorm(h))          # mlp = down(act(gate(x)) * up(x))

They differ only inside the attention module (biases, sliding window), which this adapter
calls as a whole, so one adapter serves all three:

- Llama: q/k/v/o bias = ``config.attention_bias`` (default off), FFN bias = ``config.mlp_bias``;
  no sliding window.
- Mistral: no biases; ``config.sliding_window`` (default 4096) applies to every layer — the
  model builds one sliding-window mask and a ``DynamicCache(config=...)`` of sliding layers.
- Qwen2: q/k/v biased, o not; sliding window per layer from ``config.layer_types`` (only when
  ``use_sliding_window``), so the model passes a per-layer mask.
- Qwen3: Qwen2's layer with per-head RMSNorms of the queries and keys (``q_norm``, ``k_norm``,
  before the rotary embeddings; :meth:`LlamaAdapter.query_norm`), no q/k/v biases.
- The decoders of Qwen2-VL / Qwen2.5-VL / Qwen3-VL (``qwen2_vl_text``, ``qwen2_5_vl_text``,
  ``qwen3_vl_text``; no causal-LM class of their own): Qwen2's (Qwen3's) layers, with M-RoPE folded into the ``position_embeddings``
  the text model passes (see :mod:`searchskip.arch.qwen_vl`).
"""

from __future__ import annotations

from typing import Any

from searchskip.arch.base import ArchAdapter, class_names
from searchskip.errors import ModelError

_CAUSAL_LMS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class LlamaAdapter(ArchAdapter):
    """Pre-norm RMSNorm decoders with a gated (SwiGLU) FFN: Llama/Vicuna, Mistral, Qwen2, Qwen3."""

    name = "llama"
    description = "LlamaForCausalLM (Llama, Vicuna), MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"
    text_model_types = ("llama", "mistral", "qwen2", "qwen3", "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")
    mlp_in_keys = ("gate", "up")
    mlp_out_key = "down"
    causal_lms: tuple[str, ...] = _CAUSAL_LMS
    """Class names of the family's causal LMs (a model matches by one of them and its model_type)."""
    layer_parts: tuple[str, ...] = _LAYER_PARTS
    """Attributes (dotted paths) every decoder layer of the family has."""
    layout: str = "Llama-style"
    """The family's layout in words, for the error a renamed part gives."""

    def matches(self, model: Any) -> bool:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type in self.text_model_types and bool(class_names(model) & set(self.causal_lms))

    def validate_layer(self, layer):
        def has(path: str) -> bool:
            obj = layer
            for part in path.split("."):
                if not hasattr(obj, part):
                    return False
                obj = getattr(obj, part)
            return True

        missing = [p for p in self.layer_parts if not has(p)]
        if missing:
            raise ModelError(
                f"decoder layer {type(layer).__name__} lacks {', '.join(missing)}; this transformers version "
                f"lays {self.layout} layers out differently than searchskip expects"
            )

    def language_model(self, model):
        return model.model

    # per layer ------------------------------------------------------------
    def attention(self, layer):
        return layer.self_attn

    def attn_norm(self, layer):
        return layer.input_layernorm

    def mlp_norm(self, layer):
        return layer.post_attention_layernorm

    def attn_linears(self, layer):
        a = layer.self_attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj}

    def mlp_linears(self, layer):
        m = layer.mlp
        return {"gate": m.gate_proj, "up": m.up_proj, "down": m.down_proj}

    def attn_geometry(self, layer):
        a = layer.self_attn
        heads = a.q_proj.out_features // a.head_dim
        kv_heads = a.k_proj.out_features // a.head_dim
        return heads, kv_heads, a.head_dim

    def query_norm(self, layer, q):
        norm = getattr(layer.self_attn, "q_norm", None)
        return q if norm is None else norm(q)

    def key_norm(self, layer, k):
        norm = getattr(layer.self_attn, "k_norm", None)
        return k if norm is None else norm(k)

    def attn_delta(self, layer, hidden_states, use_cache=False, **kwargs):
        # Mirrors {Llama,Mistral,Qwen2}DecoderLayer.forward: the layer's keyword arguments go to
        # self_attn by the names the layer received them under (the KV cache's name changed in
        # transformers 5.24, see searchskip.arch.cache_api), with the layer's use_cache default.
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), use_cache=use_cache, **kwargs)
        return out

    def mlp_delta(self, layer, hidden_states):
        return layer.mlp(layer.post_attention_layernorm(hidden_states))
