"""vLLM's LLaVA-NeXT whose language model is the plugin's decoder
(:func:`searchskip.vllm_plugin.llava.use_plugin_decoder`); its anyres vision side is vLLM's own."""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration

from searchskip.vllm_plugin.llava import use_plugin_decoder

__all__ = ["SearchSkipLlavaNextForConditionalGeneration"]


class SearchSkipLlavaNextForConditionalGeneration(LlavaNextForConditionalGeneration):
    """LLaVA-NeXT with a searchskip plan in its decoder (read from the served export's folder)."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        use_plugin_decoder(vllm_config, "LLaVA-NeXT")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
