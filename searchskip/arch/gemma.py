"""Gemma 2 and Gemma 3 decoders ("sandwich" norms): Gemma2ForCausalLM, Gemma3ForCausalLM, and the
text model inside Gemma 3's vision-language model.

Their layers normalize each sublayer's input *and* output::

    h = h + post_attention_layernorm(self_attn(input_layernorm(h), ...))
    h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))   # gelu-tanh gated FFN

so a sublayer's residual update is the normed output (:meth:`GemmaAdapter.attn_output_norm` is
applied by the token scopes' partial attention too). Beside that:

- the attention scales scores by ``query_pre_attn_scalar ** -0.5`` (the module's ``scaling``,
  which the partial attention and the ranking read);
- Gemma 2 caps the scores at ``attn_logit_softcapping * tanh(s / cap)``
  (:meth:`GemmaAdapter.attn_softcap`; the partial attention then computes it as the model's
  eager attention does) and the logits at ``final_logit_softcapping`` (elementwise: FLOPs and
  plans are unaffected);
- Gemma 3 normalizes queries and keys per head (``q_norm`` / ``k_norm``, as Qwen3);
- layers alternate sliding-window and full attention (``config.layer_types``), each kind with
  its own rotary embedding and mask, which the model hands each layer;
- embeddings are scaled by ``sqrt(hidden_size)`` inside the embedding module.
"""

from __future__ import annotations

from searchskip.arch.llama import LlamaAdapter


class GemmaAdapter(LlamaAdapter):
    """Gemma 2 / Gemma 3 decoders: Llama's linears and geometry, with sandwich norms."""

    name = "gemma"
    description = "Gemma2ForCausalLM, Gemma3ForCausalLM (Gemma 2, Gemma 3 text)"
    text_model_types = ("gemma2", "gemma3_text")
    causal_lms = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")
    layer_parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "pre_feedforward_layernorm", "mlp",
                   "post_feedforward_layernorm")
    layout = "Gemma"

    def mlp_norm(self, layer):
        return layer.pre_feedforward_layernorm

    def attn_softcap(self, layer):
        cap = getattr(layer.self_attn, "attn_logit_softcapping", None)
        return float(cap) if cap else None

    def attn_output_norm(self, layer, out):
        return layer.post_attention_layernorm(out)

    def attn_delta(self, layer, hidden_states, use_cache=False, **kwargs):
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), use_cache=use_cache, **kwargs)
        return layer.post_attention_layernorm(out)

    def mlp_delta(self, layer, hidden_states):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden_states)))
