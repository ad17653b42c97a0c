"""What searchskip's vLLM decoders share: :class:`SearchSkipDecoderLayer` and :class:`PlannedDecoder`.

Skipped sublayers are not built, their weights not loaded, their compute not run, and no KV cache is
kept for a layer without attention. vLLM's decoder layers (Llama, Mistral, Qwen2) pass
``(hidden_states, residual)``: the stream is their sum (``residual`` is ``None`` before the first
layer), each sublayer returns only its update and the next norm adds it in place (a fused add +
RMSNorm). Every branch below keeps that contract, also where the first layer has no attention or
every layer is skipped (then the final norm gets no residual). A family's module
(:mod:`~searchskip.vllm_plugin.llama`, :mod:`~searchskip.vllm_plugin.mistral`,
:mod:`~searchskip.vllm_plugin.qwen2`) says how its attention and MLP are built.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from vllm.model_executor.layers.layernorm import RMSNorm

from searchskip.vllm_plugin.plan import WITHOUT_ATTENTION, WITHOUT_FFN, LayerPlan, read_plan

__all__ = ["PlannedDecoder", "SearchSkipDecoderLayer"]


def _layer_index(prefix: str) -> int:
    return int(prefix.rsplit(".", 1)[1])


class SearchSkipDecoderLayer(nn.Module):
    """A Llama decoder layer running ``op`` (``keep``, ``skip_attn``, ``skip_ffn``, ``skip_block``,
    ``parallel_attn_ffn``; ``parallel_blocks`` is the model's: its layers run ``keep``), its FFN
    ``ffn_width`` channels wide (default: the config's); the sublayers it keeps are built by the
    decoder's ``make_attention(prefix)`` and ``make_mlp(prefix, width)``."""

    def __init__(self, config: Any, prefix: str, op: str, make_attention: Callable[[str], nn.Module],
                 make_mlp: Callable[[str, int], nn.Module], ffn_width: int | None = None) -> None:
        super().__init__()
        self.op = "keep" if op == "parallel_blocks" else op
        hidden = config.hidden_size
        if self.op not in WITHOUT_ATTENTION:
            self.self_attn = make_attention(f"{prefix}.self_attn")
            self.input_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)
        if self.op not in WITHOUT_FFN:
            self.mlp = make_mlp(f"{prefix}.mlp", ffn_width or config.intermediate_size)
            self.post_attention_layernorm = RMSNorm(hidden, eps=config.rms_norm_eps)

    @staticmethod
    def _norm(norm: RMSNorm, h: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(stream), stream)`` where the stream is ``h + residual`` (``h`` without one)."""
        if residual is None:
            return norm(h), h
        return norm(h, residual)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        op = self.op
        if op == "skip_block":
            return hidden_states, residual
        if op == "skip_attn":
            h, residual = self._norm(self.post_attention_layernorm, hidden_states, residual)
            return self.mlp(h), residual
        h, residual = self._norm(self.input_layernorm, hidden_states, residual)
        if op == "parallel_attn_ffn":  # x + attn(n1(x)) + ffn(n2(x)): the FFN reads the layer input too
            ffn_in = self.post_attention_layernorm(residual.clone())
            return self.self_attn(positions=positions, hidden_states=h) + self.mlp(ffn_in), residual
        h = self.self_attn(positions=positions, hidden_states=h)
        if op == "skip_ffn":
            return h, residual
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class PlannedDecoder:
    """Mixin for a vLLM decoder model (before its class: ``class M(PlannedDecoder, LlamaModel)``):
    layers that follow the export's plan, read from the served folder. A family implements
    :meth:`make_attention` and :meth:`make_mlp`; its ``__init__`` passes :meth:`planned_layers`'
    factory to the base model as its layer type and then sets ``self.plan``."""

    plan: LayerPlan

    @classmethod
    def make_attention(cls, vllm_config: Any, config: Any, prefix: str) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def make_mlp(cls, vllm_config: Any, config: Any, prefix: str, width: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def planned_layers(cls, vllm_config: Any) -> tuple[LayerPlan, Callable[[str], nn.Module]]:
        """``(the served export's plan, prefix -> its decoder layer)``."""
        config = vllm_config.model_config.hf_config.get_text_config()
        if vllm_config.parallel_config.pipeline_parallel_size != 1:
            raise ValueError("searchskip's vLLM plugin runs without pipeline parallelism (pipeline_parallel_size 1)")
        plan = read_plan(vllm_config.model_config.model, config.num_hidden_layers, config.intermediate_size)

        def layer(prefix: str) -> nn.Module:
            i = _layer_index(prefix)
            return SearchSkipDecoderLayer(
                config, prefix, plan.ops[i], lambda p: cls.make_attention(vllm_config, config, p),
                lambda p, width: cls.make_mlp(vllm_config, config, p, width),
                plan.ffn_widths[i] if plan.ffn_widths else None)

        return plan, layer

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any,
                inputs_embeds: torch.Tensor | None = None, **layer_kwargs: Any) -> torch.Tensor:
        h = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual: torch.Tensor | None = None
        i, ops = 0, self.plan.ops
        while i < len(ops):
            if ops[i] == "parallel_blocks":  # layers i and i+1 both read the stream x
                x = h if residual is None else h + residual
                a_h, a_r = self.layers[i](positions, x.clone(), None, **layer_kwargs)
                b_h, b_r = self.layers[i + 1](positions, x.clone(), None, **layer_kwargs)
                update = (a_h + a_r - x) + (b_h + b_r - x)
                h, residual = x + (update / 2 if i in self.plan.average else update), None
                i += 2
                continue
            h, residual = self.layers[i](positions, h, residual, **layer_kwargs)
            i += 1
        return self.norm(h) if residual is None else self.norm(h, residual)[0]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM's loading, without the tensors of the sublayers the plan does not build, and each
        FFN cut to its own width (:class:`ValueError` if a channel cut off is not zero: the folder's
        weights do not match its ``ffn_widths``)."""
        dropped = []
        for i in range(len(self.plan.ops)):
            if not self.plan.builds_attention(i):
                dropped += [f"layers.{i}.self_attn.", f"layers.{i}.input_layernorm."]
            if not self.plan.builds_ffn(i):
                dropped += [f"layers.{i}.mlp.", f"layers.{i}.post_attention_layernorm."]
        prefixes = tuple(dropped)
        return super().load_weights(self._cut(name, w) for name, w in weights if not name.startswith(prefixes))

    def _cut(self, name: str, w: torch.Tensor) -> tuple[str, torch.Tensor]:
        """``(name, w)`` with an FFN tensor's padding channels removed (they come after the layer's own)."""
        widths = self.plan.ffn_widths
        parts = name.split(".")
        if widths is None or len(parts) < 5 or parts[0] != "layers" or parts[2] != "mlp":
            return name, w
        width, sub = widths[int(parts[1])], parts[3]
        dim = 1 if sub == "down_proj" and parts[4] == "weight" else 0
        if sub not in ("gate_proj", "up_proj", "down_proj") or (sub == "down_proj" and dim == 0) or w.shape[dim] == width:
            return name, w
        if torch.count_nonzero(w.narrow(dim, width, w.shape[dim] - width)):
            raise ValueError(f"{name}: channels from {width} on are not zero, but searchskip_export.json's ffn_widths "
                             f"says layer {parts[1]} keeps {width}: the weights were changed after the export")
        return name, w.narrow(dim, 0, width).contiguous()


