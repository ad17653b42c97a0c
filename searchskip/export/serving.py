"""Who can serve an export: plain loaders and stock vLLM, searchskip's vLLM plugin, or only
searchskip (``metrics.json: serving``, the report's serving line, ``export --target vllm``).

A plain export (:mod:`searchskip.export.bake`) runs in any loader, stock vLLM included (zeroed
sublayers still cost their FLOPs there). searchskip's vLLM plugin (:mod:`searchskip.vllm_plugin`)
serves LLaVA and LLaVA-NeXT over Llama, Mistral and Qwen2 decoders with ops for all tokens (:data:`PLUGIN_MODELS`), skipping the
planned sublayers' compute; what it cannot serve is listed by plan part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from searchskip.plan import Plan

__all__ = ["PLUGIN_MODELS", "Serving", "serving_of"]

PLUGIN_MODELS = {"llava": ("llama", "mistral", "qwen2"), "llava_next": ("llama", "mistral", "qwen2")}
"""``config.model_type`` -> the decoder ``model_type`` s the vLLM plugin serves inside it."""


@dataclass(frozen=True)
class Serving:
    plain: bool
    """Plain ``from_pretrained`` and stock vLLM run the planned model."""
    problems: tuple[str, ...]
    """What keeps searchskip's vLLM plugin from serving it (empty: it serves it)."""

    def to_dict(self) -> dict:
        return {"plain_transformers_and_stock_vllm": self.plain, "vllm_plugin": not self.problems,
                "vllm_plugin_problems": list(self.problems)}

    def line(self) -> str:
        """One sentence for the report."""
        where = "plain transformers and stock vLLM (zeroed sublayers still computed)" if self.plain else \
            "searchskip.load_compressed"
        if self.problems:
            return f"serves with {where}; not with searchskip's vLLM plugin: {'; '.join(self.problems)}"
        return f"serves with {where}, and with searchskip's vLLM plugin (planned sublayers skipped)"


def serving_of(config: Any, runtime_plan: Plan | None, num_layers: int) -> Serving:
    """The :class:`Serving` of an export whose model has ``config`` and ``num_layers`` decoder layers
    (after the export removes layers) and keeps ``runtime_plan`` (renumbered to them)."""
    from searchskip.export.bake import bakeable
    from searchskip.vllm_plugin.plan import layer_plan

    text = getattr(config, "text_config", None) or config
    decoders = PLUGIN_MODELS.get(getattr(config, "model_type", None), ())
    problems = []
    if getattr(text, "model_type", None) not in decoders:
        served = ", ".join(f"{top} over {'/'.join(inner)}" for top, inner in PLUGIN_MODELS.items())
        problems.append(f"it serves {served}, not {config.model_type} over {getattr(text, 'model_type', '?')}")
    data = json.loads(runtime_plan.to_json()) if runtime_plan is not None else None
    problems += layer_plan(data, num_layers)[1]
    return Serving(plain=bakeable(runtime_plan, num_layers), problems=tuple(problems))
