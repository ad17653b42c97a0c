"""vLLM's LLaVA whose language model is the plugin's decoder (:data:`DECODERS`).

vLLM builds a LLaVA's language model from ``text_config.architectures``; :func:`use_plugin_decoder`
points it at the plugin's decoder before vLLM's LLaVA builds itself. The vision tower, projector,
processor and weight names are vLLM's own. LLaVA-NeXT: :mod:`searchskip.vllm_plugin.llava_next`.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.llava import LlavaForConditionalGeneration

__all__ = ["DECODERS", "SearchSkipLlavaForConditionalGeneration", "use_plugin_decoder"]

DECODERS = {"llama": "SearchSkipLlamaForCausalLM", "mistral": "SearchSkipMistralForCausalLM",
            "qwen2": "SearchSkipQwen2ForCausalLM"}
"""Text ``model_type`` -> the plugin's decoder class."""


def use_plugin_decoder(vllm_config: Any, wrapper: str) -> None:
    """Make the served config's language model the plugin's decoder for its ``model_type``;
    :class:`ValueError` naming the decoder when the plugin has none for it."""
    text = vllm_config.model_config.hf_config.text_config
    decoder = DECODERS.get(getattr(text, "model_type", None))
    if decoder is None:
        raise ValueError(f"searchskip's vLLM plugin serves {wrapper} over {', '.join(DECODERS)} decoders; this "
                         f"model's is {getattr(text, 'model_type', '?')!r}")
    text.architectures = [decoder]


class SearchSkipLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with a searchskip plan in its decoder (read from the served export's folder)."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        use_plugin_decoder(vllm_config, "LLaVA")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
