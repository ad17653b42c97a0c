"""The names a plan is written in: ops, token scopes, prune methods/structures/targets, visual-token
ranks and early-exit scopes, each as constants, a ``Literal`` type and a tuple of every value (other
code registers handlers against these), with the format version :data:`PLAN_VERSION` and the wording
of a "must be one of" problem (:func:`_choice_rule`) that the parts and :class:`Plan` share."""

from __future__ import annotations

import typing
from typing import Any, Iterable, Literal

from searchskip.config.typed import did_you_mean as _did_you_mean

KEEP = "keep"
SKIP_BLOCK = "skip_block"
SKIP_ATTN = "skip_attn"
SKIP_FFN = "skip_ffn"
PARALLEL_ATTN_FFN = "parallel_attn_ffn"
PARALLEL_BLOCKS = "parallel_blocks"

OpName = Literal["keep", "skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks"]
OPS: tuple[str, ...] = typing.get_args(OpName)
"""Every op a layer can have, ``keep`` first."""

SCOPE_ALL = "all"
SCOPE_GENERATED = "generated"
SCOPE_PROMPT = "prompt"
SCOPE_NON_VISUAL = "non_visual"
SCOPE_VISUAL = "visual"

ScopeName = Literal["all", "generated", "prompt", "non_visual", "visual"]
SCOPES: tuple[str, ...] = typing.get_args(ScopeName)
"""Every token scope, ``all`` first (the order breaks ties when choosing the canonical default)."""

PruneMethod = Literal["magnitude", "wanda"]
PruneStructure = Literal["unstructured", "2:4", "ffn_channels"]
PruneTarget = Literal["attn", "ffn"]
PRUNE_METHODS: tuple[str, ...] = typing.get_args(PruneMethod)
PRUNE_STRUCTURES: tuple[str, ...] = typing.get_args(PruneStructure)
PRUNE_TARGETS: tuple[str, ...] = typing.get_args(PruneTarget)

RANK_ATTENTION = "attention"
RANK_UNIFORM = "uniform"
VisualRank = Literal["attention", "uniform"]
VISUAL_RANKS: tuple[str, ...] = typing.get_args(VisualRank)
"""How ``visual_tokens`` chooses the image tokens it keeps."""

ExitScope = Literal["generated"]
EXIT_SCOPES: tuple[str, ...] = typing.get_args(ExitScope)
"""Which tokens ``early_exit`` lets leave the decoder early."""

PLAN_VERSION = 1
"""The plan format :mod:`searchskip.plan` reads and writes."""

assert OPS == (KEEP, SKIP_BLOCK, SKIP_ATTN, SKIP_FFN, PARALLEL_ATTN_FFN, PARALLEL_BLOCKS)
assert SCOPES == (SCOPE_ALL, SCOPE_GENERATED, SCOPE_PROMPT, SCOPE_NON_VISUAL, SCOPE_VISUAL)

_SEXAGESIMAL_2_4 = 2 * 60 + 4
"""What YAML 1.1 makes of an unquoted ``2:4`` (a base-60 integer)."""


def _choice_rule(value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    rule = f"must be one of {', '.join(repr(a) for a in allowed)}, but got {value!r}"
    guess = _did_you_mean(value, allowed) if isinstance(value, str) else None
    return rule + (f"; did you mean {guess!r}?" if guess else "")
