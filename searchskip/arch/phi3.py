"""Phi-3 decoders (``Phi3ForCausalLM``: Phi-3, Phi-3.5, Phi-4-mini): Llama's layer with fused
projections.

    h = h + resid_attn_dropout(self_attn(input_layernorm(h)))   # qkv_proj: q, k, v rows in one linear
    h = h + resid_mlp_dropout(mlp(post_attention_layernorm(h))) # gate_up_proj: gate rows, then up rows

The adapter hands out the fused linears' rows as separate ``q`` / ``k`` / ``v`` and ``gate`` /
``up`` (:class:`searchskip.arch.fused.RowSlice`), so scopes, ranking, pruning, FLOP counting and
LoRA see the same parts as in Llama. Rotary embeddings may cover part of each head
(``partial_rotary_factor``, Phi-4-mini's 0.75); the partial attention rotates that part only.
The residual dropouts are inactive in eval mode (and default to 0).
"""

from __future__ import annotations

from searchskip.arch.fused import RowSlice
from searchskip.arch.llama import LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    """Phi-3: Llama's geometry with fused q/k/v and gate/up linears."""

    name = "phi3"
    description = "Phi3ForCausalLM (Phi-3, Phi-3.5, Phi-4-mini)"
    text_model_types = ("phi3",)
    causal_lms = ("Phi3ForCausalLM",)
    layer_parts = ("input_layernorm", "self_attn.qkv_proj", "self_attn.o_proj", "post_attention_layernorm",
                   "mlp.gate_up_proj", "mlp.down_proj", "resid_attn_dropout", "resid_mlp_dropout")
    layout = "Phi-3"

    def attn_linears(self, layer):
        a = layer.self_attn
        heads, kv_heads, head_dim = self.attn_geometry(layer)
        q, kv = heads * head_dim, kv_heads * head_dim
        return {"q": RowSlice(a.qkv_proj, 0, q), "k": RowSlice(a.qkv_proj, q, q + kv),
                "v": RowSlice(a.qkv_proj, q + kv, q + 2 * kv), "o": a.o_proj}

    def mlp_linears(self, layer):
        m = layer.mlp
        half = m.gate_up_proj.out_features // 2
        return {"gate": RowSlice(m.gate_up_proj, 0, half), "up": RowSlice(m.gate_up_proj, half, 2 * half),
                "down": m.down_proj}

    def attn_geometry(self, layer):
        a = layer.self_attn
        heads = a.o_proj.in_features // a.head_dim
        kv_heads = (a.qkv_proj.out_features - heads * a.head_dim) // (2 * a.head_dim)
        return heads, kv_heads, a.head_dim

    def attn_delta(self, layer, hidden_states, use_cache=False, **kwargs):
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), use_cache=use_cache, **kwargs)
        return layer.resid_attn_dropout(out)

    def mlp_delta(self, layer, hidden_states):
        return layer.resid_mlp_dropout(layer.mlp(layer.post_attention_layernorm(hidden_states)))
