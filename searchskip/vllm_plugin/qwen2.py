"""vLLM's Qwen2 decoder with a searchskip plan (:class:`~searchskip.vllm_plugin.decoder.PlannedDecoder`):
the language model of LLaVA (and LLaVA-NeXT) over Qwen2."""

from __future__ import annotations

from typing import Any
from unittest import mock

from vllm.model_executor.models import qwen2
from vllm.model_executor.models.qwen2 import Qwen2Attention, Qwen2ForCausalLM, Qwen2MLP, Qwen2Model
from vllm.transformers_utils.config import set_default_rope_theta
from vllm.v1.attention.backend import AttentionType

from searchskip.vllm_plugin.decoder import PlannedDecoder

__all__ = ["SearchSkipQwen2ForCausalLM", "SearchSkipQwen2Model"]


class SearchSkipQwen2Model(PlannedDecoder, Qwen2Model):
    """vLLM's ``Qwen2Model`` whose layers follow the export's plan."""

    def __init__(self, *, vllm_config: Any, prefix: str = "", **_: Any) -> None:
        plan, layer = self.planned_layers(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         decoder_layer_type=lambda *, config, cache_config, quant_config, prefix: layer(prefix))
        self.plan = plan

    @classmethod
    def make_attention(cls, vllm_config: Any, config: Any, prefix: str) -> Any:
        """As vLLM's ``Qwen2DecoderLayer`` builds it."""
        set_default_rope_theta(config, default_theta=1000000)
        return Qwen2Attention(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
            max_position=config.max_position_embeddings, num_kv_heads=config.num_key_value_heads,
            cache_config=vllm_config.cache_config, quant_config=vllm_config.quant_config,
            rope_parameters=config.rope_parameters, prefix=prefix,
            attn_type=AttentionType.DECODER if getattr(config, "is_causal", True) else AttentionType.ENCODER_ONLY,
            dual_chunk_attention_config=getattr(config, "dual_chunk_attention_config", None),
            qk_norm=getattr(config, "qk_norm", False), rms_norm_eps=config.rms_norm_eps)

    @classmethod
    def make_mlp(cls, vllm_config: Any, config: Any, prefix: str, width: int) -> Any:
        return Qwen2MLP(hidden_size=config.hidden_size, intermediate_size=width, hidden_act=config.hidden_act,
                        quant_config=vllm_config.quant_config, prefix=prefix)


class SearchSkipQwen2ForCausalLM(Qwen2ForCausalLM):
    """vLLM's ``Qwen2ForCausalLM`` over :class:`SearchSkipQwen2Model`. vLLM's ``__init__`` builds its
    ``Qwen2Model`` by that module name (no hook as Llama's ``_init_model``), so the name points at
    the planned model while it runs."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        with mock.patch.object(qwen2, "Qwen2Model", SearchSkipQwen2Model):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
