"""searchskip's vLLM plugin: serve an export's runtime plan in vLLM, its skipped sublayers neither
loaded nor run.

vLLM loads the ``vllm.general_plugins`` entry point ``searchskip`` (``pyproject.toml``) in every
engine process; :func:`register` adds the model classes of :data:`ARCHITECTURES` to vLLM's
registry. An export whose plan needs searchskip at runtime names ``SearchSkip<Class>`` in its
``config.json`` (:mod:`searchskip.export.held`); a plain export is served by stock vLLM and, to skip
its zeroed sublayers' compute too, can be given ``hf_overrides={"architectures":
["SearchSkipLlavaForConditionalGeneration"]}``.

Only torch, vLLM and the export's files are needed: install searchskip into vLLM's virtualenv with
``pip install --no-deps .`` (vLLM pins its own transformers; nothing of searchskip's other
dependencies is imported here). What vLLM can serve: per-layer ``skip_attn``, ``skip_ffn``,
``skip_block``, ``parallel_attn_ffn`` and ``parallel_blocks`` for all tokens, and each layer's own FFN
width after ``ffn_channels`` pruning (``ffn_widths``), in LLaVA and LLaVA-NeXT over Llama, Mistral and
Qwen2 decoders (:mod:`searchskip.vllm_plugin.plan` names the rest when the engine starts).
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "register"]

ARCHITECTURES = {
    "SearchSkipLlavaForConditionalGeneration": "searchskip.vllm_plugin.llava:SearchSkipLlavaForConditionalGeneration",
    "SearchSkipLlavaNextForConditionalGeneration":
        "searchskip.vllm_plugin.llava_next:SearchSkipLlavaNextForConditionalGeneration",
    "SearchSkipLlamaForCausalLM": "searchskip.vllm_plugin.llama:SearchSkipLlamaForCausalLM",
    "SearchSkipQwen2ForCausalLM": "searchskip.vllm_plugin.qwen2:SearchSkipQwen2ForCausalLM",
    "SearchSkipMistralForCausalLM": "searchskip.vllm_plugin.mistral:SearchSkipMistralForCausalLM",
}
"""Architecture name -> ``module:Class`` (imported lazily by vLLM, in the process that builds it)."""


def register() -> None:
    """Add :data:`ARCHITECTURES` to vLLM's model registry (idempotent: vLLM calls it in every process)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in known:
            ModelRegistry.register_model(name, target)
