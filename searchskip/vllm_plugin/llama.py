"""vLLM's Llama decoder with a searchskip plan (:class:`~searchskip.vllm_plugin.decoder.PlannedDecoder`)."""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel

from searchskip.vllm_plugin.decoder import PlannedDecoder

__all__ = ["SearchSkipLlamaForCausalLM", "SearchSkipLlamaModel"]


class SearchSkipLlamaModel(PlannedDecoder, LlamaModel):
    """vLLM's ``LlamaModel`` whose layers follow the export's plan; :attr:`ATTENTION` and
    :attr:`MLP` are the sublayer classes (a Mistral's: :mod:`searchskip.vllm_plugin.mistral`)."""

    ATTENTION: type = LlamaAttention
    MLP: type = LlamaMLP

    def __init__(self, *, vllm_config: Any, prefix: str = "", **_: Any) -> None:
        plan, layer = self.planned_layers(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         layer_type=lambda *, vllm_config, prefix: layer(prefix))
        self.plan = plan

    @classmethod
    def make_attention(cls, vllm_config: Any, config: Any, prefix: str) -> Any:
        """As vLLM's ``LlamaDecoderLayer`` builds it."""
        bias = getattr(config, "attention_bias", False) or getattr(config, "bias", False)
        return cls.ATTENTION(
            config=config, hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
            max_position_embeddings=getattr(config, "max_position_embeddings", 8192),
            quant_config=vllm_config.quant_config, bias=getattr(config, "qkv_bias", bias), bias_o_proj=bias,
            cache_config=vllm_config.cache_config, prefix=prefix)

    @classmethod
    def make_mlp(cls, vllm_config: Any, config: Any, prefix: str, width: int) -> Any:
        return cls.MLP(hidden_size=config.hidden_size, intermediate_size=width, hidden_act=config.hidden_act,
                       quant_config=vllm_config.quant_config, bias=getattr(config, "mlp_bias", False), prefix=prefix)


class SearchSkipLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's ``LlamaForCausalLM`` over :class:`SearchSkipLlamaModel`."""

    def _init_model(self, vllm_config: Any, prefix: str = "", layer_type: Any = None) -> SearchSkipLlamaModel:
        return SearchSkipLlamaModel(vllm_config=vllm_config, prefix=prefix)
