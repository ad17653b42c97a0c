"""Compression plans, version 1: what to skip, parallelize, drop or prune in the LLM inside an MLLM.

A plan says, per decoder layer of the language model, which computation to change and for
which tokens. Like torchao's configs, a plan is a frozen, hashable dataclass that serializes
to a plain versioned dict (and to YAML or JSON), and equal plans are equal objects with the
same stable :meth:`Plan.key`. The YAML form, for a model with 32 decoder layers::

    version: 1
    scope: all                    # default token scope of the layer ops below
    layers:                       # decoder layer index -> op (a layer not listed keeps its computation)
      3: skip_block
      5: skip_ffn
      7: {op: skip_attn, scope: generated}
      9: parallel_attn_ffn
      12: parallel_blocks         # layers 12 and 13 run on the same input
      14: {op: parallel_blocks, average: true}
    drop: {start: 20, end: 24}    # remove layers 20, 21, 22 and 23
    prune:
      method: wanda               # magnitude | wanda
      structure: unstructured     # unstructured | "2:4" | ffn_channels
      sparsity: 0.3               # one ratio for every layer, or {layer: ratio}
      targets: [attn, ffn]
      calibration: {samples: 128, seed: 0}
    visual_tokens: {after_layer: 2, keep: 0.5, rank: attention}   # attention | uniform
    early_exit: {layer: 27, scope: generated}

Layer indices are those of the original model, numbered from 0, whatever ``drop`` removes.

**Ops** (:data:`OPS`), for the tokens of the op's scope:

* ``keep``: run the layer as it is (the same as leaving the layer out).
* ``skip_block``: skip the whole decoder layer; the hidden state passes through unchanged.
* ``skip_attn`` / ``skip_ffn``: skip the self-attention / the feed-forward sub-layer only.
* ``parallel_attn_ffn``: attention and FFN of the layer both read the layer's input
  (``x + attn(x) + ffn(x)``) instead of running one after the other.
* ``parallel_blocks``: layers ``i`` and ``i + 1`` both read the input of layer ``i``, and
  their residual updates are added; with ``average: true`` their outputs are averaged
  instead (the paper's variant). Layer ``i + 1`` must then have no op of its own.

**Scopes** (:data:`SCOPES`), the token positions an op applies to (the others run the layer
normally): ``all``; ``generated``: tokens produced while decoding (the prompt's prefill is
untouched); ``prompt``: the prompt's positions only; ``non_visual``: every position except
the image tokens. ``drop`` and ``prune`` change the weights, so they apply to every token.

**drop** ``{start, end}`` removes layers ``start .. end - 1`` (half-open, like ``range``).

**visual_tokens** ``{after_layer: k, keep: r, rank}``: from layer ``k`` on, only a fraction
``r`` of the image tokens stays in the sequence (``r = 0`` drops them all, as the seed paper's
``exit`` mode); ``rank: attention`` (default; needs ``k >= 1``) keeps those the last prompt
token attended to most at layer ``k - 1`` (FastV), ``uniform`` an evenly spaced subset. Later layers neither
compute nor cache the dropped positions (:mod:`searchskip.ops.tokens`).

**early_exit** ``{layer: e, scope: generated}``: generated tokens leave the decoder after
layer ``e`` (final norm, ``lm_head``); the layers after ``e`` run for the prompt only.

**prune**: ``magnitude`` (smallest weights) or ``wanda`` (weights times input activation
norms, which needs ``calibration`` samples) at ``sparsity`` (a fraction in ``[0, 1)``, or a
per-layer map; layers not in the map are not pruned) with ``structure`` ``unstructured``,
``"2:4"`` (2 of every 4 weights kept, so sparsity 0.5; quote it, YAML reads 2:4 as the
number 124) or ``ffn_channels`` (whole FFN intermediate channels, so ``targets: [ffn]``).

**Canonical form.** Plans are normalised when built, so that plans with the same behaviour
compare and hash equal however they were written:

* ``layers`` is a tuple of ``(index, LayerOp)`` sorted by index; ``keep`` entries are removed.
* ``3: skip_block`` and ``3: {op: skip_block}`` are the same op.
* Scopes are resolved per op (the op's own ``scope``, else the plan's ``scope``); the plan's
  ``scope`` becomes the most common resolved scope among the ops (ties go to the earlier
  scope in :data:`SCOPES`; ``all`` when there is no op), and an op's ``scope`` is stored
  only when it differs from that default. So ``scope: generated`` with ``3: skip_block`` is
  the same plan as ``3: {op: skip_block, scope: generated}``.
* A ``visual_tokens`` with ``keep: 1`` keeps every token and is removed; with ``keep: 0`` it
  keeps none, so there is nothing to rank and its ``rank`` is ``uniform``.
* A prune whose sparsity is 0 everywhere prunes nothing and is removed; zero entries of a
  per-layer map are removed; targets are kept in the order of :data:`PRUNE_TARGETS`;
  ``wanda`` always has a calibration (defaults filled in), ``magnitude`` never has one.

:meth:`Plan.to_dict` writes the canonical form (short ``3: skip_block`` where an op has no
scope or option), and ``Plan.from_dict(p.to_dict()) == p`` for every plan.

**Validation.** Everything that can be checked without a model is checked when a plan is
built (from a file, a dict or the constructor) and reported as one
:class:`~searchskip.errors.ConfigError` listing every problem with its dotted key
(``layers.7.scope``, ``prune.sparsity``): unknown ops, scopes and keys, wrong types, ranges,
``parallel_blocks`` pairs that overlap another op or straddle ``visual_tokens.after_layer`` /
``early_exit.layer``, ops on dropped layers, a ``rank: attention`` whose layer ``k - 1`` does not
attend over the prompt. What needs the model's layer count is checked by :meth:`Plan.validate`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Literal, Mapping

import yaml

from searchskip.config.typed import at_least, build
from searchskip.config.typed import did_you_mean as _did_you_mean
from searchskip.config.yaml_io import parse_yaml_text, read_yaml
from searchskip.errors import ConfigError, Problem

__all__ = [
    "KEEP", "SKIP_BLOCK", "SKIP_ATTN", "SKIP_FFN", "PARALLEL_ATTN_FFN", "PARALLEL_BLOCKS", "OPS",
    "SCOPE_ALL", "SCOPE_GENERATED", "SCOPE_PROMPT", "SCOPE_NON_VISUAL", "SCOPES",
    "PRUNE_METHODS", "PRUNE_STRUCTURES", "PRUNE_TARGETS", "PLAN_VERSION", "PLAN_KEYS",
    "RANK_ATTENTION", "RANK_UNIFORM", "VISUAL_RANKS", "EXIT_SCOPES", "VisualRank", "ExitScope",
    "VisualTokensSpec", "EarlyExitSpec", "kept_visual_tokens", "skips_prompt_attention", "effective_rank",
    "OpName", "ScopeName", "PruneMethod", "PruneStructure", "PruneTarget",
    "LayerOp", "DropSpec", "CalibrationSpec", "PruneSpec", "Plan",
]

# --------------------------------------------------------------------------------------
# Names (other code registers handlers against these)
# --------------------------------------------------------------------------------------

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

ScopeName = Literal["all", "generated", "prompt", "non_visual"]
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
"""The plan format this module reads and writes."""

assert OPS == (KEEP, SKIP_BLOCK, SKIP_ATTN, SKIP_FFN, PARALLEL_ATTN_FFN, PARALLEL_BLOCKS)
assert SCOPES == (SCOPE_ALL, SCOPE_GENERATED, SCOPE_PROMPT, SCOPE_NON_VISUAL)

_SEXAGESIMAL_2_4 = 2 * 60 + 4
"""What YAML 1.1 makes of an unquoted ``2:4`` (a base-60 integer)."""


# --------------------------------------------------------------------------------------
# Parts of a plan
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# The file form, built and checked by searchskip.config.typed.build
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _PruneFile:
    method: PruneMethod
    structure: PruneStructure = "unstructured"
    sparsity: float | Mapping[int, float]
    targets: tuple[PruneTarget, ...] = PRUNE_TARGETS
    calibration: CalibrationSpec | None = None


@dataclass(frozen=True, kw_only=True)
class _PlanFile:
    version: int
    scope: ScopeName = SCOPE_ALL
    layers: Mapping[int, OpName | LayerOp] = field(default_factory=dict)
    drop: DropSpec | None = None
    prune: _PruneFile | None = None
    visual_tokens: VisualTokensSpec | None = None
    early_exit: EarlyExitSpec | None = None


PLAN_KEYS = frozenset(f.name for f in dataclasses.fields(_PlanFile))
"""The top-level keys of a plan file."""


def _choice_rule(value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    rule = f"must be one of {', '.join(repr(a) for a in allowed)}, but got {value!r}"
    guess = _did_you_mean(value, allowed) if isinstance(value, str) else None
    return rule + (f"; did you mean {guess!r}?" if guess else "")


def _span(drop: DropSpec) -> str:
    last = drop.end - 1
    return f"layer {drop.start}" if last == drop.start else f"layers {drop.start}..{last}"


# ---- rules of one part (see searchskip.config.typed: each yields (relative dotted key, rule)) ----


def _version(plan: _PlanFile) -> Iterator[tuple[str, str]]:
    if plan.version != PLAN_VERSION:
        yield "version", (f"`version == {PLAN_VERSION}` must hold (this searchskip reads plan version "
                          f"{PLAN_VERSION}), but got version={plan.version}")


def _layer_op_average(op: LayerOp) -> Iterator[tuple[str, str]]:
    if op.average and op.op != PARALLEL_BLOCKS:
        yield "average", (f"applies only to op 'parallel_blocks' (it averages the two blocks' outputs), "
                          f"but the op is {op.op!r}")


def _drop_order(drop: DropSpec) -> Iterator[tuple[str, str]]:
    if drop.start >= drop.end:
        yield "end", (f"`start < end` must hold (drop removes layers start..end-1, like range(start, end)), "
                      f"but got start={drop.start}, end={drop.end}")


def _sparsities(prune: _PruneFile) -> Iterator[tuple[str, float, str]]:
    """``(relative key, fraction, what)`` for the uniform sparsity or each per-layer one."""
    if isinstance(prune.sparsity, Mapping):
        for layer in sorted(prune.sparsity):
            yield f"sparsity.{layer}", prune.sparsity[layer], f" for layer {layer}"
    else:
        yield "sparsity", prune.sparsity, ""


def _sparsity_range(prune: _PruneFile) -> Iterator[tuple[str, str]]:
    for key, value, what in _sparsities(prune):
        if not 0.0 <= value < 1.0:
            yield key, f"`0 <= sparsity < 1` must hold, but got sparsity={value!r}{what}"


def _sparsity_two_four(prune: _PruneFile) -> Iterator[tuple[str, str]]:
    if prune.structure != "2:4":
        return
    per_layer = isinstance(prune.sparsity, Mapping)
    for key, value, what in _sparsities(prune):
        if 0.0 <= value < 1.0 and value != 0.5 and not (per_layer and value == 0.0):
            allowed = "`sparsity == 0.5` (or 0 for a layer left unpruned)" if per_layer else "`sparsity == 0.5`"
            yield key, (f"structure '2:4' keeps 2 of every 4 weights, so {allowed} must hold, "
                        f"but got sparsity={value!r}{what}")


def _targets_listed(prune: _PruneFile) -> Iterator[tuple[str, str]]:
    if not prune.targets:
        yield "targets", f"must name at least one of {', '.join(map(repr, PRUNE_TARGETS))}, but got an empty list"
    for target, count in collections.Counter(prune.targets).items():
        if count > 1:
            yield "targets", f"must name each target once, but {target!r} appears {count} times"


def _targets_fit_structure(prune: _PruneFile) -> Iterator[tuple[str, str]]:
    if prune.structure == "ffn_channels" and prune.targets and set(prune.targets) != {"ffn"}:
        yield "targets", ("structure 'ffn_channels' removes channels of the FFN only, so `targets` must be "
                          f"[ffn], but got [{', '.join(prune.targets)}]")


def _calibration_needed(prune: _PruneFile) -> Iterator[tuple[str, str]]:
    if prune.method == "magnitude" and prune.calibration is not None:
        yield "calibration", ("applies only to method 'wanda' (magnitude pruning looks at the weights alone, "
                              "with no calibration data); remove it")


def _keep_range(spec: VisualTokensSpec) -> Iterator[tuple[str, str]]:
    if not 0.0 <= spec.keep <= 1.0:
        yield "keep", (f"`0 <= keep <= 1` must hold (the fraction of image tokens kept; 0 drops them all), "
                       f"but got keep={spec.keep!r}")


# ---- rules across entries, on the raw data (they yield absolute dotted keys) ---------------


@dataclass(frozen=True)
class _Sketch:
    """What the rules across entries need, read leniently from raw data that may be invalid elsewhere,
    so that one bad entry does not hide the others' problems: the op name of every well-formed layer
    entry, the drop range when well-formed, and the layers of a per-layer sparsity map."""

    ops: dict[int, str]
    drop: DropSpec | None
    pruned: tuple[int, ...]
    scopes: dict[int, str] = field(default_factory=dict)
    """Resolved scope of every well-formed layer entry (its own, else the plan's)."""
    after_layer: int | None = None
    """``visual_tokens.after_layer`` when well-formed."""
    rank: str | None = None
    """``visual_tokens.rank`` (its default filled in) when ``after_layer`` is well-formed."""
    exit_layer: int | None = None
    """``early_exit.layer`` when well-formed."""


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sketch(data: dict) -> _Sketch:
    ops: dict[int, str] = {}
    scopes: dict[int, str] = {}
    default_scope = data.get("scope", SCOPE_ALL)
    layers = data.get("layers")
    if isinstance(layers, dict):
        for index, entry in layers.items():
            name = entry.get("op") if isinstance(entry, dict) else entry
            if _is_index(index) and index >= 0 and isinstance(name, str) and name in OPS:
                ops[index] = name
                own = entry.get("scope") if isinstance(entry, dict) else None
                scopes[index] = own if own is not None else default_scope
    visual = data.get("visual_tokens")
    after = visual.get("after_layer") if isinstance(visual, dict) else None
    after = after if _is_index(after) and after >= 0 else None
    rank = effective_rank(visual.get("keep"), visual.get("rank", RANK_ATTENTION)) if after is not None else None
    early = data.get("early_exit")
    exit_layer = early.get("layer") if isinstance(early, dict) else None
    exit_layer = exit_layer if _is_index(exit_layer) and exit_layer >= 0 else None
    drop = data.get("drop")
    start, end = (drop.get("start"), drop.get("end")) if isinstance(drop, dict) else (None, None)
    well_formed = _is_index(start) and _is_index(end) and 0 <= start < end
    prune = data.get("prune")
    sparsity = prune.get("sparsity") if isinstance(prune, dict) else None
    pruned = tuple(sorted(k for k in sparsity if _is_index(k) and k >= 0)) if isinstance(sparsity, dict) else ()
    return _Sketch(ops, DropSpec(start, end) if well_formed else None, pruned, scopes, after, rank, exit_layer)


def _negative_layers(data: dict) -> Iterator[tuple[str, str]]:
    prune = data.get("prune")
    for key, mapping in (("layers", data.get("layers")),
                         ("prune.sparsity", prune.get("sparsity") if isinstance(prune, dict) else None)):
        if isinstance(mapping, dict):
            for k in mapping:
                if _is_index(k) and k < 0:
                    yield f"{key}.{k}", ("`layer >= 0` must hold (decoder layers are numbered from 0), "
                                         f"but got layer={k}")


def _parallel_pairs(plan: _Sketch) -> Iterator[tuple[str, str]]:
    for i in sorted(plan.ops):
        if plan.ops[i] != PARALLEL_BLOCKS:
            continue
        partner = plan.ops.get(i + 1, KEEP)
        if partner == KEEP:
            continue
        what = ("is itself the start of another parallel_blocks pair (pairs cannot overlap)"
                if partner == PARALLEL_BLOCKS else f"has op {partner!r}")
        yield f"layers.{i}", (f"parallel_blocks at layer {i} runs layers {i} and {i + 1} on the same input, "
                              f"so layer {i + 1} must have no op of its own, but layer {i + 1} {what}")


def _layers_vs_drop(plan: _Sketch) -> Iterator[tuple[str, str]]:
    drop = plan.drop
    if drop is None:
        return
    for i in sorted(plan.ops):
        name = plan.ops[i]
        if name == KEEP:
            continue
        if i in drop.layers:
            yield f"layers.{i}", (f"layer {i} is removed by `drop` ({_span(drop)}), so it cannot also have "
                                  f"op {name!r}; remove one of the two")
        elif name == PARALLEL_BLOCKS and i + 1 in drop.layers:
            yield f"layers.{i}", (f"parallel_blocks at layer {i} pairs it with layer {i + 1}, but layer {i + 1} "
                                  f"is removed by `drop` ({_span(drop)})")


def _prune_vs_drop(plan: _Sketch) -> Iterator[tuple[str, str]]:
    if plan.drop is None:
        return
    for i in plan.pruned:
        if i in plan.drop.layers:
            yield f"prune.sparsity.{i}", (f"layer {i} is removed by `drop` ({_span(plan.drop)}), so it cannot be "
                                          "pruned; remove it from the map")


def _token_boundaries(plan: _Sketch) -> Iterator[tuple[str, str]]:
    """A parallel_blocks pair must not straddle the layer where image tokens drop out or where
    generated tokens exit: its two layers read the same input, so they must see the same tokens."""
    for i in sorted(plan.ops):
        if plan.ops[i] != PARALLEL_BLOCKS:
            continue
        if plan.after_layer == i + 1:
            yield f"layers.{i}", (f"parallel_blocks at layer {i} runs layers {i} and {i + 1} on the same input, but "
                                  f"visual_tokens.after_layer={i + 1} drops image tokens between them; move one of the two")
        if plan.exit_layer == i:
            yield f"layers.{i}", (f"parallel_blocks at layer {i} runs layers {i} and {i + 1} on the same input, but "
                                  f"early_exit.layer={i} lets generated tokens leave between them; move one of the two")


def _rank_layer_runs(plan: _Sketch) -> Iterator[tuple[str, str]]:
    """``rank: attention`` reads the attention of layer ``after_layer - 1`` over the prompt."""
    if plan.after_layer is None or plan.rank != RANK_ATTENTION:
        return
    r = plan.after_layer - 1
    if r < 0:
        yield "visual_tokens.rank", ("rank 'attention' ranks image tokens by the attention of layer after_layer - 1, "
                                     "so `after_layer >= 1` must hold for it, but got after_layer=0; use rank: uniform")
        return
    why = None
    if plan.drop is not None and r in plan.drop.layers:
        why = f"`drop` removes it ({_span(plan.drop)})"
    elif r in plan.ops and skips_prompt_attention(plan.ops[r], plan.scopes.get(r)):
        why = f"it skips its attention for prompt positions ({plan.ops[r]} with scope {plan.scopes.get(r)!r})"
    if why:
        yield "visual_tokens.rank", (f"rank 'attention' ranks image tokens by the attention of layer {r} "
                                     f"(after_layer - 1) over the prompt, but {why}; use rank: uniform, "
                                     "or another after_layer")


_CHECKS: dict[type, list[Any]] = {
    _PlanFile: [_version],
    LayerOp: [_layer_op_average],
    DropSpec: [at_least("start", 0, " (decoder layers are numbered from 0)"), _drop_order],
    CalibrationSpec: [at_least("samples", 1), at_least("seed", 0)],
    _PruneFile: [_sparsity_range, _sparsity_two_four, _targets_listed, _targets_fit_structure,
                 _calibration_needed],
    VisualTokensSpec: [at_least("after_layer", 0, " (decoder layers are numbered from 0)"), _keep_range],
    EarlyExitSpec: [at_least("layer", 0, " (decoder layers are numbered from 0)")],
}


def _check_data(data: Any, file: str | None) -> tuple[_PlanFile | None, list[Problem]]:
    """Build and check the file form of a plan; return ``(built, problems)``.

    :func:`build` checks each part; the rules across entries (:class:`_Sketch`) run on the raw
    data, so they report even when an unrelated entry failed to build.
    """
    across: list[Problem] = []
    structure_124 = False
    if isinstance(data, dict):
        across += [Problem(file, key, rule) for key, rule in _negative_layers(data)]
        sketch = _sketch(data)
        for rule in (_parallel_pairs, _layers_vs_drop, _prune_vs_drop, _token_boundaries, _rank_layer_runs):
            across += [Problem(file, key, text) for key, text in rule(sketch)]
        prune = data.get("prune")
        structure = prune.get("structure") if isinstance(prune, dict) else None
        structure_124 = type(structure) is int and structure == _SEXAGESIMAL_2_4
    built, problems = build(_PlanFile, data, file, checks=_CHECKS)
    if structure_124:
        hint = "; YAML reads an unquoted 2:4 as the base-60 number 124: quote it, structure: \"2:4\""
        problems = [dataclasses.replace(p, rule=p.rule + hint) if p.key == "prune.structure" else p
                    for p in problems]
    problems = problems + across
    return (None if problems else built), problems


def _raw_dict(scope: Any, layers: Any, drop: Any, prune: Any, visual_tokens: Any,
              early_exit: Any) -> dict[str, Any]:
    """The file form of constructor arguments, as given (not canonical), for :func:`_check_data`."""
    data: dict[str, Any] = {"version": PLAN_VERSION, "scope": scope}
    entries: dict[Any, Any] = {}
    for index, entry in layers:
        if isinstance(entry, LayerOp):
            entry = {"op": entry.op, "scope": entry.scope, "average": entry.average}
        entries[index] = entry
    data["layers"] = entries
    if isinstance(drop, DropSpec):
        drop = {"start": drop.start, "end": drop.end}
    if drop is not None:
        data["drop"] = drop
    if isinstance(prune, PruneSpec):
        sparsity: Any = prune.sparsity
        if isinstance(sparsity, tuple):
            try:
                sparsity = {k: v for k, v in sparsity}
            except (TypeError, ValueError):
                pass
        prune_data: dict[str, Any] = {"method": prune.method, "structure": prune.structure, "sparsity": sparsity,
                                      "targets": list(prune.targets)}
        if isinstance(prune.calibration, CalibrationSpec):
            prune_data["calibration"] = {"samples": prune.calibration.samples, "seed": prune.calibration.seed}
        elif prune.calibration is not None:
            prune_data["calibration"] = prune.calibration
        prune = prune_data
    if prune is not None:
        data["prune"] = prune
    if isinstance(visual_tokens, VisualTokensSpec):
        visual_tokens = dataclasses.asdict(visual_tokens)
    if visual_tokens is not None:
        data["visual_tokens"] = visual_tokens
    if isinstance(early_exit, EarlyExitSpec):
        early_exit = dataclasses.asdict(early_exit)
    if early_exit is not None:
        data["early_exit"] = early_exit
    return data


def _layer_pairs(layers: Any) -> list[tuple[Any, Any]]:
    if isinstance(layers, Mapping):
        return list(layers.items())
    pairs = []
    for item in layers:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"Plan.layers must be a mapping {{index: op}} or (index, op) pairs, but got item {item!r}")
        pairs.append((item[0], item[1]))
    return pairs


def _canonical(built: _PlanFile) -> dict[str, Any]:
    """The canonical field values of a plan (see the module docstring)."""
    resolved: dict[int, tuple[str, str, bool]] = {}
    for index, entry in built.layers.items():
        op = LayerOp(entry) if isinstance(entry, str) else entry
        if op.op == KEEP:
            continue
        resolved[index] = (op.op, op.scope or built.scope, op.average)
    scope = SCOPE_ALL
    if resolved:
        counts = collections.Counter(s for _, s, _ in resolved.values())
        scope = max(SCOPES, key=lambda s: (counts[s], -SCOPES.index(s)))
    layers = tuple((i, LayerOp(op, None if s == scope else s, average))
                   for i, (op, s, average) in sorted(resolved.items()))
    visual = built.visual_tokens
    if visual is not None:
        visual = None if visual.keep == 1.0 else dataclasses.replace(visual, keep=float(visual.keep),
                                                                     rank=effective_rank(visual.keep, visual.rank))
    return {"layers": layers, "scope": scope, "drop": built.drop, "prune": _canonical_prune(built.prune),
            "visual_tokens": visual, "early_exit": built.early_exit}


def _canonical_prune(prune: _PruneFile | None) -> PruneSpec | None:
    if prune is None:
        return None
    sparsity: float | tuple[tuple[int, float], ...]
    if isinstance(prune.sparsity, Mapping):
        sparsity = tuple((i, float(r)) for i, r in sorted(prune.sparsity.items()) if r != 0.0)
        if not sparsity:
            return None
    else:
        sparsity = float(prune.sparsity)
        if sparsity == 0.0:
            return None
    calibration = (prune.calibration or CalibrationSpec()) if prune.method == "wanda" else None
    return PruneSpec(method=prune.method, structure=prune.structure, sparsity=sparsity,
                     targets=tuple(t for t in PRUNE_TARGETS if t in prune.targets), calibration=calibration)


# --------------------------------------------------------------------------------------
# YAML output
# --------------------------------------------------------------------------------------


class _Flow(dict):
    """A mapping written on one line (``{op: skip_attn, scope: generated}``)."""


class _FlowList(list):
    """A list written on one line (``[attn, ffn]``)."""


class _PlanDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_PlanDumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_PlanDumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _flow(value: Any) -> Any:
    if isinstance(value, dict):
        return _Flow(value)
    if isinstance(value, list):
        return _FlowList(value)
    return value


def _json_keys(value: Any) -> Any:
    """Turn the string keys JSON gives ``layers`` and ``prune.sparsity`` back into layer indices."""
    def ints(mapping: Any) -> Any:
        if not isinstance(mapping, dict):
            return mapping
        out = {}
        for k, v in mapping.items():
            if isinstance(k, str) and k.lstrip("-").isdigit() and k.isascii() and str(int(k)) == k:
                k = int(k)
            out[k] = v
        return out

    if not isinstance(value, dict):
        return value
    value = dict(value)
    if "layers" in value:
        value["layers"] = ints(value["layers"])
    if isinstance(value.get("prune"), dict):
        value["prune"] = dict(value["prune"])
        if "sparsity" in value["prune"]:
            value["prune"]["sparsity"] = ints(value["prune"]["sparsity"])
    return value


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A compression plan (format version :data:`PLAN_VERSION`); see the module docstring.

    Construct it from a file (:meth:`load`), from parsed data (:meth:`from_dict`), from the
    paper's interval pattern (:meth:`from_pattern`) or directly: ``layers`` may then be a
    mapping ``{index: LayerOp or op name}`` or ``(index, op)`` pairs. Every form is checked
    (raising :class:`~searchskip.errors.ConfigError` with every problem) and stored canonically.
    """

    VERSION: ClassVar[int] = PLAN_VERSION

    layers: tuple[tuple[int, LayerOp], ...] = ()
    scope: ScopeName = SCOPE_ALL
    drop: DropSpec | None = None
    prune: PruneSpec | None = None
    visual_tokens: VisualTokensSpec | None = None
    early_exit: EarlyExitSpec | None = None

    def __post_init__(self) -> None:
        pairs = _layer_pairs(self.layers)
        seen: set[Any] = set()
        dupes = []
        for index, _ in pairs:
            if index in seen:
                dupes.append(Problem(None, f"layers.{index}", f"layer {index} is given more than once"))
            seen.add(index)
        built, problems = _check_data(_raw_dict(self.scope, pairs, self.drop, self.prune, self.visual_tokens,
                                                self.early_exit), None)
        if dupes or problems or built is None:
            raise ConfigError(dupes + problems)
        for name, value in _canonical(built).items():
            object.__setattr__(self, name, value)

    @classmethod
    def _from_built(cls, built: _PlanFile) -> "Plan":
        plan = cls.__new__(cls)
        for name, value in _canonical(built).items():
            object.__setattr__(plan, name, value)
        return plan

    # ---- reading ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, file: str | None = None) -> "Plan":
        """Build a plan from parsed YAML/JSON data; ``file`` only labels the problems."""
        built, problems = _check_data(data, file)
        if problems or built is None:
            raise ConfigError(problems, file)
        return cls._from_built(built)

    @classmethod
    def from_yaml_text(cls, text: str, file: str | None = None) -> "Plan":
        """Parse YAML text with the strict reader of files
        (:func:`~searchskip.config.yaml_io.parse_yaml_text`); ``file`` labels the problems."""
        return cls.from_dict(parse_yaml_text(text, file), file)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read and check a plan file; problems name the file."""
        return cls.from_dict(read_yaml(path), str(path))

    @classmethod
    def from_json(cls, text: str, file: str | None = None) -> "Plan":
        """Parse the output of :meth:`to_json` (layer indices may be JSON's string keys)."""
        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in items:
                if k in out:
                    raise ConfigError(f"is not a valid plan: the JSON key {k!r} appears twice", file)
                out[k] = v
            return out

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", file) from None
        return cls.from_dict(_json_keys(data), file)

    # ---- writing ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form: ``{"version": 1, "scope": ..., ["layers", "drop", "prune",
        "visual_tokens", "early_exit"]}`` (absent keys are left out, so plans without the token
        ops keep the keys they had before those ops existed)."""
        data: dict[str, Any] = {"version": PLAN_VERSION, "scope": self.scope}
        if self.layers:
            data["layers"] = {i: self._entry(op) for i, op in self.layers}
        if self.drop is not None:
            data["drop"] = {"start": self.drop.start, "end": self.drop.end}
        if self.prune is not None:
            p = self.prune
            prune: dict[str, Any] = {
                "method": p.method,
                "structure": p.structure,
                "sparsity": dict(p.sparsity) if isinstance(p.sparsity, tuple) else p.sparsity,
                "targets": list(p.targets),
            }
            if p.calibration is not None:
                prune["calibration"] = {"samples": p.calibration.samples, "seed": p.calibration.seed}
            data["prune"] = prune
        if self.visual_tokens is not None:
            data["visual_tokens"] = dataclasses.asdict(self.visual_tokens)
        if self.early_exit is not None:
            data["early_exit"] = dataclasses.asdict(self.early_exit)
        return data

    @staticmethod
    def _entry(op: LayerOp) -> str | dict[str, Any]:
        if op.scope is None and not op.average:
            return op.op
        entry: dict[str, Any] = {"op": op.op}
        if op.scope is not None:
            entry["scope"] = op.scope
        if op.average:
            entry["average"] = True
        return entry

    def to_yaml(self) -> str:
        """The human YAML form (short ``3: skip_block`` entries, small mappings on one line)."""
        data = self.to_dict()
        if "layers" in data:
            data["layers"] = {i: _flow(entry) for i, entry in data["layers"].items()}
        if "drop" in data:
            data["drop"] = _flow(data["drop"])
        if "prune" in data:
            data["prune"] = {k: _flow(v) for k, v in data["prune"].items()}
        for key in ("visual_tokens", "early_exit"):
            if key in data:
                data[key] = _flow(data[key])
        return yaml.dump(data, Dumper=_PlanDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)

    def to_json(self, indent: int | None = None) -> str:
        """JSON of :meth:`to_dict` (layer indices become string keys; :meth:`from_json` reads them back)."""
        return json.dumps(self.to_dict(), indent=indent)

    def key(self) -> str:
        """A stable content hash (16 hex digits of the SHA-256 of the canonical JSON), equal across processes."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    # ---- questions later code asks ------------------------------------------------------
    @functools.cached_property
    def _ops(self) -> dict[int, LayerOp]:
        return dict(self.layers)

    def op_for(self, layer: int) -> LayerOp:
        """The op of ``layer`` with its scope filled in (``keep`` when the plan does not change it).

        Layer ``i + 1`` of a ``parallel_blocks`` pair at ``i`` is ``keep`` here: the op at ``i``
        covers both. A dropped layer is ``keep`` here too; ask :meth:`dropped_layers` first.
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"a decoder layer index is an integer >= 0, but got {layer!r}")
        op = self._ops.get(layer)
        if op is None:
            return LayerOp(KEEP, self.scope)
        return op if op.scope is not None else dataclasses.replace(op, scope=self.scope)

    @property
    def is_empty(self) -> bool:
        """Whether the plan changes nothing (the dense model)."""
        return (not self.layers and self.drop is None and self.prune is None and self.visual_tokens is None
                and self.early_exit is None)

    def dropped_layers(self) -> set[int]:
        """The layer indices ``drop`` removes (empty when there is no ``drop``)."""
        return set(self.drop.layers) if self.drop is not None else set()

    def describe(self) -> list[str]:
        """Short lines for reports, in layer order: ``3: skip_block``, ``7: skip_attn [generated]``,
        ``12+13: parallel_blocks (average)``, ``20-23: dropped``, then ``prune: ...``. Empty for an empty plan."""
        lines: list[tuple[int, str]] = []
        for i, op in self.layers:
            scope = op.scope or self.scope
            where = f"{i}+{i + 1}" if op.op == PARALLEL_BLOCKS else str(i)
            text = f"{where}: {op.op}" + (" (average)" if op.average else "")
            lines.append((i, text + (f" [{scope}]" if scope != SCOPE_ALL else "")))
        if self.drop is not None:
            last = self.drop.end - 1
            where = str(self.drop.start) if last == self.drop.start else f"{self.drop.start}-{last}"
            lines.append((self.drop.start, f"{where}: dropped"))
        out = [text for _, text in sorted(lines, key=lambda item: item[0])]
        if self.prune is not None:
            p = self.prune
            if isinstance(p.sparsity, tuple):
                amount = "per-layer " + ", ".join(f"{i}: {r:.0%}" for i, r in p.sparsity)
            else:
                amount = f"{p.sparsity:.0%}"
            out.append(f"prune: {p.method} {p.structure} {amount} of {'+'.join(p.targets)}")
        if self.visual_tokens is not None:
            v = self.visual_tokens
            out.append(f"visual tokens: {v.keep:.0%} kept from layer {v.after_layer} ({v.rank})")
        if self.early_exit is not None:
            out.append(f"early exit: {self.early_exit.scope} tokens after layer {self.early_exit.layer}")
        return out

    # ---- checks that need the model ------------------------------------------------------
    def validate(self, num_layers: int, *, file: str | None = None) -> "Plan":
        """Check the plan against a model with ``num_layers`` decoder layers; return the plan.

        Raises :class:`~searchskip.errors.ConfigError` listing every layer index out of range,
        a ``parallel_blocks`` without a partner layer, and a ``drop`` that reaches past the
        last layer or removes all of them. ``file`` only labels the problems.
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, but got {num_layers!r}")
        model = f"the model has {num_layers} decoder layer{'s' if num_layers != 1 else ''}, 0..{num_layers - 1}"
        problems: list[Problem] = []

        def add(key: str, rule: str) -> None:
            problems.append(Problem(file, key, rule))

        for i, op in self.layers:
            if i >= num_layers:
                add(f"layers.{i}", f"`layer < num_layers` must hold ({model}), but got layer={i}")
            elif op.op == PARALLEL_BLOCKS and i + 1 >= num_layers:
                add(f"layers.{i}", f"parallel_blocks pairs layer {i} with layer {i + 1}, but layer {i} is the "
                                   f"last one ({model})")
        if self.drop is not None:
            if self.drop.end > num_layers:
                add("drop.end", f"`end <= num_layers` must hold ({model}), but got end={self.drop.end}")
            elif self.drop.start == 0 and self.drop.end == num_layers:
                add("drop", f"must leave at least one layer, but it removes all of them ({model})")
        if self.prune is not None and isinstance(self.prune.sparsity, tuple):
            for i, _ in self.prune.sparsity:
                if i >= num_layers:
                    add(f"prune.sparsity.{i}", f"`layer < num_layers` must hold ({model}), but got layer={i}")
        if self.visual_tokens is not None and self.visual_tokens.after_layer >= num_layers:
            add("visual_tokens.after_layer", f"`after_layer < num_layers` must hold ({model}), "
                                             f"but got after_layer={self.visual_tokens.after_layer}")
        if self.early_exit is not None and self.early_exit.layer >= num_layers - 1:
            add("early_exit.layer", f"`layer < num_layers - 1` must hold (exiting after the last layer is no exit; "
                                    f"{model}), but got layer={self.early_exit.layer}")
        if problems:
            raise ConfigError(problems, file)
        return self

    # ---- the paper's interval plans ---------------------------------------------------
    @classmethod
    def from_pattern(
        cls,
        skip_interval: int,
        start_layer: int,
        end_layer: int,
        mode: str,
        scope: str = SCOPE_ALL,
        num_layers: int | None = None,
        *,
        average: bool = False,
    ) -> "Plan":
        """The seed paper's interval plan: op ``mode`` on every layer ``i`` with
        ``start_layer < i < end_layer`` and ``i % skip_interval == 0`` (both bounds exclusive).

        With ``num_layers``, only the model's layers are candidates (``end_layer`` past the
        last layer is allowed, as in the paper's loop over the existing layers) and the plan
        is checked with :meth:`validate`. For ``parallel_blocks`` (``average`` picks the averaging
        variant), candidates are taken in increasing order and a candidate is left out when
        it is already the partner of the previous pair, or when its partner ``i + 1`` is
        past the model's last layer; the partner may lie at or past ``end_layer`` otherwise.
        """
        problems: list[Problem] = []

        def integer(name: str, value: Any) -> bool:
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(Problem(None, name, f"must be an integer, but got {value!r}"))
                return False
            return True

        if integer("skip_interval", skip_interval) and skip_interval < 1:
            problems.append(Problem(None, "skip_interval",
                                    f"`skip_interval >= 1` must hold, but got skip_interval={skip_interval}"))
        if integer("start_layer", start_layer) & integer("end_layer", end_layer) and start_layer >= end_layer:
            problems.append(Problem(None, "end_layer", f"`start_layer < end_layer` must hold, but got "
                                                       f"start_layer={start_layer}, end_layer={end_layer}"))
        if num_layers is not None and integer("num_layers", num_layers) and num_layers < 1:
            problems.append(Problem(None, "num_layers",
                                    f"`num_layers >= 1` must hold, but got num_layers={num_layers}"))
        changing = [op for op in OPS if op != KEEP]
        if mode not in changing:
            problems.append(Problem(None, "mode", _choice_rule(mode, changing)))
        if scope not in SCOPES:
            problems.append(Problem(None, "scope", _choice_rule(scope, SCOPES)))
        if average and mode != PARALLEL_BLOCKS:
            problems.append(Problem(None, "average", f"applies only to mode 'parallel_blocks', but got mode={mode!r}"))
        if problems:
            raise ConfigError(problems)

        stop = end_layer if num_layers is None else min(end_layer, num_layers)
        chosen: dict[int, LayerOp] = {}
        taken: set[int] = set()
        for i in range(max(start_layer + 1, 0), stop):
            if i % skip_interval != 0:
                continue
            if mode == PARALLEL_BLOCKS:
                if i in taken or (num_layers is not None and i + 1 >= num_layers):
                    continue
                taken.update((i, i + 1))
            chosen[i] = LayerOp(mode, average=average)
        plan = cls(layers=chosen, scope=scope)
        return plan.validate(num_layers) if num_layers is not None else plan
