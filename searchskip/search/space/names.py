"""The names of a search space: the format version, the kinds, the parameter names optuna sees
(``layer_03.op``, ``prune.sparsity``, ...), the choices that mean "none" (no pruning, no early
exit, keep every image token) and the small constants the file form, the choices and the spaces
share. It imports nothing of the space package, so every module of it may read these.
"""

from __future__ import annotations

import typing
from typing import Literal

from searchskip.plan import PRUNE_STRUCTURES

SPACE_VERSION = 1
"""The space format this package reads."""

SpaceKind = Literal["per_layer", "paper"]
SPACE_KINDS: tuple[str, ...] = typing.get_args(SpaceKind)

NO_PRUNE = "none"
"""The ``prune.method`` choice that prunes nothing."""
PruneChoice = Literal["none", "magnitude", "wanda"]
PRUNE_CHOICES: tuple[str, ...] = typing.get_args(PruneChoice)

PARAM_SCOPE = "scope"
PARAM_MODE = "paper.mode"
PARAM_SKIP_INTERVAL = "paper.skip_interval"
PARAM_START_LAYER = "paper.start_layer"
PARAM_END_LAYER = "paper.end_layer"
PARAM_PRUNE_METHOD = "prune.method"
PARAM_PRUNE_STRUCTURE = "prune.structure"
PARAM_PRUNE_SPARSITY = "prune.sparsity"
PARAM_VISUAL_KEEP = "visual_tokens.keep"
PARAM_VISUAL_AFTER_LAYER = "visual_tokens.after_layer"
PARAM_VISUAL_RANK = "visual_tokens.rank"
PARAM_EXIT_LAYER = "early_exit.layer"

NO_EXIT = "none"
"""The ``early_exit.layer`` choice that lets no token exit early."""
NoExit = Literal["none"]
_KEEP_ALL = 1.0
"""The ``visual_tokens.keep`` choice that drops no image token."""


SCOPE_SEP = "@"
"""Joins an op and its own token scope in a per-layer space's ``ops``: ``skip_block@visual``."""


def split_op_choice(value: str) -> tuple[str, str | None]:
    """``(op, scope)`` of an ``ops`` entry: ``skip_ffn@visual`` -> ``("skip_ffn", "visual")``;
    ``skip_ffn`` -> ``("skip_ffn", None)`` (the plan-wide ``scope`` decision applies)."""
    op, sep, scope = value.partition(SCOPE_SEP)
    return (op, scope) if sep else (op, None)


def layer_param(layer: int) -> str:
    """The parameter name of a layer's op: ``layer_03.op``."""
    return f"layer_{layer:02d}.op"


_TWO_FOUR = "2:4"
_TWO_FOUR_SPARSITY = 0.5
_DECIMALS = 10
"""Sparsity values are rounded to this many decimals, so that 0.1 + 2 * 0.1 is 0.3."""
_PAPER_ONLY = ("mode", "skip_interval", "start_layer", "end_layer")
_PER_LAYER_ONLY = ("layers", "ops")
_LAYER_RANGE_KEYS = ("from", "to")


assert set(PRUNE_CHOICES) - {NO_PRUNE} == {"magnitude", "wanda"}
assert set(PRUNE_STRUCTURES) == {"unstructured", "2:4", "ffn_channels"}
