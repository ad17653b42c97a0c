"""The parts of a plan: a layer's op (:class:`LayerOp`), ``drop`` (:class:`DropSpec`), ``prune``
(:class:`PruneSpec` with its :class:`CalibrationSpec`), ``visual_tokens`` (:class:`VisualTokensSpec`)
and ``early_exit`` (:class:`EarlyExitSpec`) as frozen dataclasses, and the small rules that the
runtime, the FLOP count and the plan checks share (:func:`skips_prompt_attention`,
:func:`effective_rank`, :func:`kept_visual_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from searchskip.errors import ConfigError, Problem
from searchskip.plan.names import (
    OPS, PRUNE_TARGETS, RANK_ATTENTION, RANK_UNIFORM, SCOPE_GENERATED, SCOPES, SKIP_ATTN, SKIP_BLOCK, ExitScope,
    OpName, PruneMethod, PruneStructure, PruneTarget, ScopeName, VisualRank, _choice_rule,
)


@dataclass(frozen=True)
class LayerOp:
    """What one decoder layer does: ``op`` for the tokens of ``scope``.

    ``scope=None`` means the plan's default scope (in a :class:`Plan`'s canonical ``layers``,
    an op's scope is set only when it differs from ``plan.scope``; :meth:`Plan.op_for`
    always fills it in). ``average`` only applies to ``parallel_blocks``.
    """

    op: OpName
    scope: ScopeName | None = None
    average: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.op not in OPS:
            problems.append(Problem(None, "op", _choice_rule(self.op, OPS)))
        if self.scope is not None and self.scope not in SCOPES:
            problems.append(Problem(None, "scope", _choice_rule(self.scope, SCOPES)))
        if not isinstance(self.average, bool):
            problems.append(Problem(None, "average", f"must be true or false, but got {self.average!r}"))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class DropSpec:
    """Remove decoder layers ``start .. end - 1`` (half-open, like ``range(start, end)``)."""

    start: int
    end: int

    @property
    def layers(self) -> range:
        return range(self.start, self.end)


@dataclass(frozen=True)
class CalibrationSpec:
    """Samples that ``wanda`` pruning feeds through the model to measure input activations."""

    samples: int = 128
    """How many examples (of the job's train split) to run."""
    seed: int = 0
    """Seed of the choice of examples."""


@dataclass(frozen=True, kw_only=True)
class PruneSpec:
    """Weight pruning of the decoder's linear layers.

    ``sparsity`` is one fraction for every layer, or (canonically) a tuple of
    ``(layer, fraction)`` pairs sorted by layer; a mapping given here is turned into such a
    tuple. Use :meth:`sparsity_for` rather than reading it directly.
    """

    method: PruneMethod
    structure: PruneStructure = "unstructured"
    sparsity: float | tuple[tuple[int, float], ...]
    targets: tuple[PruneTarget, ...] = PRUNE_TARGETS
    calibration: CalibrationSpec | None = None
    """Set for ``wanda`` (defaults filled in when part of a plan), ``None`` for ``magnitude``."""

    def __post_init__(self) -> None:  # only container shapes; values are checked by Plan
        if isinstance(self.sparsity, Mapping):
            pairs = list(self.sparsity.items())
            try:
                pairs.sort()
            except TypeError:
                pass
            object.__setattr__(self, "sparsity", tuple(pairs))
        elif isinstance(self.sparsity, list):
            object.__setattr__(self, "sparsity", tuple(tuple(p) if isinstance(p, list) else p for p in self.sparsity))
        if isinstance(self.targets, (list, str)):
            targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
            object.__setattr__(self, "targets", targets)

    @property
    def per_layer(self) -> bool:
        """Whether ``sparsity`` is a per-layer map rather than one fraction."""
        return isinstance(self.sparsity, tuple)

    def sparsity_for(self, layer: int) -> float:
        """The fraction of weights pruned in ``layer`` (0.0 for a layer a per-layer map leaves out)."""
        if isinstance(self.sparsity, tuple):
            return dict(self.sparsity).get(layer, 0.0)
        return float(self.sparsity)


@dataclass(frozen=True)
class VisualTokensSpec:
    """From decoder layer ``after_layer`` on, only a fraction ``keep`` of the image tokens stays
    in the sequence (FastV-style token dropping; ``keep: 0`` drops them all, like the seed
    paper's ``exit`` mode). Layers ``after_layer ..`` neither compute nor cache the dropped
    positions; a dropped position leaves the decoder with its hidden state at ``after_layer``.

    ``rank``: ``attention`` keeps the image tokens that received the most attention (mean
    over heads) from the last prompt token at layer ``after_layer - 1`` (FastV); ``uniform``
    keeps an evenly spaced subset. Every row of a batch keeps
    :func:`kept_visual_tokens` ``(image tokens, keep)`` of its image tokens.
    """

    after_layer: int
    keep: float
    rank: VisualRank = RANK_ATTENTION

    def reduces(self, layer: int) -> bool:
        """Whether ``layer`` sees the kept image tokens only."""
        return layer >= self.after_layer

    @property
    def rank_layer(self) -> int | None:
        """The layer whose attention ranks the image tokens (``None`` unless ``rank: attention``)."""
        return self.after_layer - 1 if self.rank == RANK_ATTENTION else None


@dataclass(frozen=True)
class EarlyExitSpec:
    """Generated tokens leave the decoder after layer ``layer``, through the final norm and
    ``lm_head``. Layers after it are skipped for them, so later generated tokens do not see
    K/V of generated positions there either: those layers run for the prompt only (their KV
    cache holds the prompt). ``scope`` is ``generated`` (all positions exiting is ``drop``)."""

    layer: int
    scope: ExitScope = "generated"

    def exits_before(self, layer: int) -> bool:
        """Whether the exiting tokens have left the decoder before ``layer``."""
        return layer > self.layer


def skips_prompt_attention(op: str, scope: str) -> bool:
    """Whether op ``op`` with scope ``scope`` skips a layer's attention for prompt positions (so
    ``visual_tokens`` with ``rank: attention`` cannot rank by that layer)."""
    return op in (SKIP_BLOCK, SKIP_ATTN) and scope != SCOPE_GENERATED


def effective_rank(keep: Any, rank: Any) -> Any:
    """``rank``, except ``uniform`` when ``keep`` is 0: nothing is kept, so nothing is ranked."""
    return RANK_UNIFORM if keep == 0 else rank


def kept_visual_tokens(image_tokens: int, keep: float) -> int:
    """Image tokens ``visual_tokens`` keeps out of ``image_tokens``: ``round(keep * image_tokens)``
    (Python rounding, ties to even). The runtime and the FLOP count share this rule."""
    return min(image_tokens, max(0, round(keep * image_tokens)))
