"""OPT decoders (``OPTForCausalLM``; also inside LLaVA when transformers builds that).

Pre-norm OPT (``do_layer_norm_before=True``: 125m, 1.3b, 2.7b, 6.7b, ...) decomposes as::

    h = h + dropout(self_attn(self_attn_layer_norm(h), cache=..., position_ids=...,
                              attention_mask=..., **kwargs)[0])
    h = h + dropout(fc2(act(fc1(final_layer_norm(h)))))

Post-norm OPT (``do_layer_norm_before=False``: opt-350m) normalises *after* each residual
add, so a sublayer's effect is not an additive update of the stream: it is refused.

Differences from Llama that matter for skipping: learned absolute position embeddings
(added before layer 0; no ``position_embeddings`` kwarg, no rotary), the layer does *not*
forward ``use_cache`` to its attention, biases on every linear (``enable_bias``), dropout
after each sublayer (identity in eval), queries scaled before the attention call, and the
FFN runs on a ``(batch*seq, hidden)`` view.
"""

from __future__ import annotations

from typing import Any

from torch.nn import functional as F

from searchskip.arch.base import ArchAdapter, class_names
from searchskip.errors import ModelError

_POST_NORM = (
    "OPT with do_layer_norm_before=False (post-norm, e.g. facebook/opt-350m) is not supported: its layer "
    "normalises after each residual add, so attention and FFN cannot be skipped or run in parallel as "
    "additive residual updates"
)


class OPTAdapter(ArchAdapter):
    """Pre-norm OPT decoders (LayerNorm, fc1/fc2 FFN, learned positions)."""

    name = "opt"
    description = "OPTForCausalLM (pre-norm OPT; post-norm opt-350m is refused)"
    text_model_types = ("opt",)
    mlp_in_keys = ("fc1",)
    mlp_out_key = "fc2"

    def matches(self, model: Any) -> bool:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type == "opt" and "OPTForCausalLM" in class_names(model)

    def validate_text_config(self, text_config: Any) -> None:
        if not getattr(text_config, "do_layer_norm_before", True):
            raise ModelError(_POST_NORM)

    def language_model(self, model):
        return model.model.decoder

    def decoder_stack(self, base_model):
        return base_model.decoder  # OPTModel -> OPTDecoder

    # per layer ------------------------------------------------------------
    def _check(self, layer) -> None:
        if not layer.do_layer_norm_before:
            raise ModelError(_POST_NORM)

    def attention(self, layer):
        return layer.self_attn

    def attn_norm(self, layer):
        return layer.self_attn_layer_norm

    def mlp_norm(self, layer):
        return layer.final_layer_norm

    def attn_linears(self, layer):
        a = layer.self_attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.out_proj}

    def mlp_linears(self, layer):
        return {"fc1": layer.fc1, "fc2": layer.fc2}

    def attn_geometry(self, layer):
        a = layer.self_attn
        heads = a.q_proj.out_features // a.head_dim
        return heads, heads, a.head_dim

    def attn_delta(self, layer, hidden_states, use_cache=False, **kwargs):
        # Mirrors OPTDecoderLayer.forward (pre-norm branch); like the layer, use_cache is not
        # passed on to the attention, and the rest (mask, position ids, the KV cache under the
        # name the installed transformers uses) goes on by the names the layer received.
        self._check(layer)
        out, _ = layer.self_attn(hidden_states=layer.self_attn_layer_norm(hidden_states), **kwargs)
        return F.dropout(out, p=layer.dropout, training=layer.training)

    def mlp_delta(self, layer, hidden_states):
        self._check(layer)
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        x = layer.final_layer_norm(x)
        x = layer.fc1(x)
        x = layer.activation_fn(x)
        x = layer.fc2(x)
        x = F.dropout(x, p=layer.dropout, training=layer.training)
        return x.view(shape)
