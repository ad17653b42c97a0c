"""The runtime plan of an export as vLLM can run it: one op per decoder layer, for every token.

Read from the export's ``searchskip_export.json`` with the standard library only (the plugin runs in
vLLM's virtualenv, without searchskip's dependencies). vLLM hands the decoder the prompt's
embeddings with the image's already merged in and no mark of which positions are which, so only
ops for all tokens can be served; anything else is a :class:`ValueError` naming the plan part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXPORT_FILE", "WHY", "LayerPlan", "SERVED_OPS", "WITHOUT_ATTENTION", "WITHOUT_FFN", "layer_plan", "read_plan"]

EXPORT_FILE = "searchskip_export.json"
WHY = ("vLLM hands the decoder the prompt with the image merged in and no mark of which positions are image, "
       "prompt or generated tokens, so it serves ops for all tokens only (no token scopes, visual_tokens or "
       "early_exit); load such an export with searchskip.load_compressed")
"""Why a plan part cannot be served, said once after the parts."""
SERVED_OPS = ("keep", "skip_attn", "skip_ffn", "skip_block", "parallel_attn_ffn", "parallel_blocks")
WITHOUT_ATTENTION = ("skip_attn", "skip_block")
"""Ops whose layer builds no attention (nor its input norm)."""
WITHOUT_FFN = ("skip_ffn", "skip_block")
"""Ops whose layer builds no FFN (nor its norm)."""


@dataclass(frozen=True)
class LayerPlan:
    """What the decoder runs: ``ops[i]`` for layer ``i`` (``parallel_blocks`` at ``i`` pairs it with
    ``i + 1``, which is ``keep``); ``average[i]`` for a pair whose updates are halved."""

    ops: tuple[str, ...]
    average: frozenset[int] = frozenset()
    ffn_widths: tuple[int, ...] | None = None
    """Each layer's own FFN channels when ``ffn_channels`` pruning left them uneven (the saved
    weights pad them with zero channels after its own); ``None``: the config's width."""

    def builds_attention(self, i: int) -> bool:
        return self.ops[i] not in WITHOUT_ATTENTION

    def builds_ffn(self, i: int) -> bool:
        return self.ops[i] not in WITHOUT_FFN


def read_plan(folder: str | Path, num_layers: int, ffn_size: int | None = None) -> LayerPlan:
    """The :class:`LayerPlan` of the model folder ``folder`` (every layer ``keep`` without a runtime
    plan); :class:`ValueError` naming every plan part vLLM cannot run, or ``ffn_widths`` that do
    not fit ``num_layers`` layers of at most ``ffn_size`` channels."""
    path = Path(folder) / EXPORT_FILE
    info = json.loads(path.read_text()) if path.is_file() else {}
    plan, problems = layer_plan(info.get("runtime_plan"), num_layers)
    if problems:
        raise ValueError(f"{path}: runtime_plan: {'; '.join(problems)}: {WHY}")
    widths = info.get("ffn_widths")
    if widths is None:
        return plan
    ok = (isinstance(widths, list) and len(widths) == num_layers
          and all(type(w) is int and 0 < w <= (ffn_size or w) for w in widths))
    if not ok:
        raise ValueError(f"{path}: ffn_widths: must list {num_layers} channel counts (one per decoder layer) from 1 "
                         f"to the config's {ffn_size}, but got {widths!r}")
    return LayerPlan(ops=plan.ops, average=plan.average, ffn_widths=tuple(widths))


def layer_plan(runtime_plan: dict | None, num_layers: int) -> tuple[LayerPlan, list[str]]:
    """``(the LayerPlan of a runtime plan's JSON form, the problems of the parts vLLM cannot run)``:
    what :func:`read_plan` serves, and what ``searchskip export --target vllm`` refuses."""
    plan = runtime_plan or {}
    problems = [f"{key}" for key in ("visual_tokens", "early_exit", "drop", "prune") if plan.get(key) is not None]
    default_scope = plan.get("scope", "all")
    ops = ["keep"] * num_layers
    average: set[int] = set()
    for key, entry in sorted((plan.get("layers") or {}).items(), key=lambda kv: int(kv[0])):
        i = int(key)
        op, scope = (entry, default_scope) if isinstance(entry, str) else (entry["op"], entry.get("scope", default_scope))
        if not 0 <= i < num_layers:
            problems.append(f"layers.{i}: the model has {num_layers} decoder layers")
        elif op not in SERVED_OPS:
            problems.append(f"layers.{i}: op {op!r} is not one vLLM can serve ({', '.join(SERVED_OPS)})")
        elif op != "keep" and scope != "all":
            problems.append(f"layers.{i}: {op} for {scope!r} tokens")
        elif op == "parallel_blocks" and i + 1 >= num_layers:
            problems.append(f"layers.{i}: parallel_blocks needs layer {i + 1}")
        else:
            ops[i] = op
            if op == "parallel_blocks" and isinstance(entry, dict) and entry.get("average"):
                average.add(i)
    return LayerPlan(ops=tuple(ops), average=frozenset(average)), problems
