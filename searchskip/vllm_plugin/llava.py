"""vLLM's LLaVA whose language model is :class:`~searchskip.vllm_plugin.llama.SearchSkipLlamaForCausalLM`.

vLLM builds a LLaVA's language model from ``text_config.architectures``; this class points it at the
plugin's decoder before vLLM's LLaVA builds itself. The vision tower, projector, processor and
weight names are vLLM's own.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.llava import LlavaForConditionalGeneration

__all__ = ["DECODERS", "SearchSkipLlavaForConditionalGeneration"]

DECODERS = {"llama": "SearchSkipLlamaForCausalLM"}
"""Text ``model_type`` -> the plugin's decoder class."""


class SearchSkipLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with a searchskip plan in its decoder (read from the served export's folder)."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        text = vllm_config.model_config.hf_config.text_config
        decoder = DECODERS.get(getattr(text, "model_type", None))
        if decoder is None:
            raise ValueError(f"searchskip's vLLM plugin serves LLaVA over {', '.join(DECODERS)} decoders; this "
                             f"model's is {getattr(text, 'model_type', '?')!r}")
        text.architectures = [decoder]
        super().__init__(vllm_config=vllm_config, prefix=prefix)
