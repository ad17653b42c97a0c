"""vLLM's Mistral decoder with a searchskip plan: :class:`~searchskip.vllm_plugin.llama.SearchSkipLlamaModel`
over Mistral's own attention and MLP (vLLM's ``MistralAttention`` adds Llama-4 attention scaling
when the config asks for it)."""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.mistral import MistralAttention, MistralForCausalLM, MistralMLP

from searchskip.vllm_plugin.llama import SearchSkipLlamaModel

__all__ = ["SearchSkipMistralForCausalLM", "SearchSkipMistralModel"]


class SearchSkipMistralModel(SearchSkipLlamaModel):
    """The plan's layers, built from Mistral's sublayers."""

    ATTENTION = MistralAttention
    MLP = MistralMLP


class SearchSkipMistralForCausalLM(MistralForCausalLM):
    """vLLM's ``MistralForCausalLM`` over :class:`SearchSkipMistralModel`."""

    def _init_model(self, vllm_config: Any, prefix: str = "", layer_type: Any = None) -> SearchSkipMistralModel:
        return SearchSkipMistralModel(vllm_config=vllm_config, prefix=prefix)
