"""Search spaces, version 1: which decisions about a plan the search makes.

A space file says which :class:`~searchskip.plan.Plan` s a search may try. A search suggests
one plan per trial with optuna's define-by-run API (:meth:`Space.suggest`); every decision
is an optuna parameter with a stable name, so a study can be resumed and known plans can be
enqueued (:meth:`Space.params_for`). Two kinds of space exist, chosen by ``kind``.

**kind: per_layer** (the default): a free choice of op for every searchable decoder layer::

    version: 1
    kind: per_layer                        # optional, per_layer is the default
    layers: {from: 0, to: -1}              # searchable layers, both ends inclusive (the default:
                                           # every layer; the search learns which ones are vital);
                                           # negative counts from the end (-1 is the last layer);
                                           # or a list such as [2, 4, -3]
    ops: [keep, skip_block, skip_attn, skip_ffn, parallel_attn_ffn]   # choices of every searchable layer
    scope: [all, generated]                # one token scope for all the plan's ops: a list is
                                           # searched, a string is fixed (default: all)
    average: false                         # parallel_blocks averages the two blocks (only with
                                           # parallel_blocks among the ops)
    prune:                                 # optional; see below
    visual_tokens:                         # optional; see below
    early_exit:                            # optional; see below

Layers outside ``layers`` always keep their computation. With ``parallel_blocks`` among the
ops, layers are decided in increasing order: when layer ``i`` takes ``parallel_blocks``,
layer ``i + 1`` is its partner and keeps (its parameter is not suggested in that trial, a
conditional parameter); ``parallel_blocks`` is offered at layer ``i`` only when ``i + 1`` is
searchable too, so the partner always lies inside ``layers``.

**kind: paper**: the seed paper's interval plans, :meth:`Plan.from_pattern
<searchskip.plan.Plan.from_pattern>` (op ``mode`` on every layer ``i`` with
``start_layer < i < end_layer`` and ``i % skip_interval == 0``)::

    version: 1
    kind: paper
    mode: [skip_block, skip_attn, skip_ffn, parallel_attn_ffn, parallel_blocks]
    skip_interval: {low: 2, high: 4}       # an integer, a list of integers or {low, high, step}
    start_layer: {low: 0, high: -4, step: 4}   # likewise (default 0); exclusive bound
    end_layer: null                        # likewise; exclusive bound; null (default): num_layers
    scope: [all, generated]
    average: true                          # parallel_blocks averages the two blocks (the paper's variant)
    prune:                                 # optional; see below
    visual_tokens:                         # optional; see below
    early_exit:                            # optional; see below

``start_layer`` and ``end_layer`` may be negative, counted from the end (``-4`` is
``num_layers - 4``), so that one space fits models of any depth. A range ``{low, high,
step}`` of integers offers ``low, low + step, ...`` up to ``high`` (``step`` defaults to 1).

**prune** (both kinds; pruning applies to every layer, whatever ``layers`` says)::

    prune:
      method: [none, magnitude, wanda]     # none: no pruning in that trial
      structure: [unstructured, "2:4", ffn_channels]   # quote "2:4" (YAML reads 2:4 as 124)
      sparsity: {low: 0.1, high: 0.7, step: 0.1}       # a number, a list of numbers or {low, high, step}
      targets: [attn, ffn]                 # fixed, not searched; ffn_channels always prunes [ffn]
      calibration: {samples: 128, seed: 0} # fixed, for wanda (optional)

``structure: "2:4"`` keeps 2 of every 4 weights, so its sparsity is 0.5 and ``sparsity`` is
suggested only for the other structures (another conditional parameter). ``sparsity`` is
required unless every structure is ``"2:4"`` (then it must be left out). Sparsity ranges
need a ``step``: every space is finite, so that equal plans are met again and their scores
reused, and so that :meth:`Space.size` and :meth:`Space.grid` exist.

**visual_tokens** and **early_exit** (both kinds; optional), the plan keys of the same names::

    visual_tokens:
      keep: [1.0, 0.5, 0.25, 0.0]          # a number, a list of numbers or {low, high, step}, in [0, 1];
                                           # 1.0: no token dropping in that trial
      after_layer: {low: 1, high: -2}      # an integer, a list or {low, high, step}; negative counts from
                                           # the end; resolved, 0 <= after_layer < num_layers
      rank: [attention, uniform]           # a string or a list (default: attention)
    early_exit:
      layer: [none, -3, -2]                # none: no early exit in that trial; integers (negative count
                                           # from the end; resolved, 0 <= layer < num_layers - 1) or a range
      scope: generated                     # optional, fixed: generated is the only scope of early_exit

``keep`` must offer a value below 1 and ``layer`` a layer besides ``none`` (else the section
never changes a plan). ``after_layer`` and ``rank`` are not suggested after ``keep: 1.0``
(conditional parameters, like ``prune.sparsity`` after ``method: none``).

**Token keys after layer ops.** Every suggested plan is valid, and a parameter's choices are the
same in every trial, so conflicts between the token keys and the layer ops are resolved by
fixed rules, as functions of the parameters. The layer ops (and ``scope``, then ``prune``) are
suggested first, then ``visual_tokens.keep``, ``visual_tokens.after_layer``,
``visual_tokens.rank`` and ``early_exit.layer``, in that order:

1. *Pairs straddling a boundary move it.* A ``parallel_blocks`` pair at layers ``p, p + 1``
   must see the same tokens in both layers. When the suggested ``after_layer`` is ``p + 1``,
   the plan drops tokens from ``p + 2`` instead; when the suggested exit layer is ``p``,
   generated tokens exit after ``p + 1`` instead. When the moved boundary leaves the model
   (``after_layer`` reaching ``num_layers``, or the exit layer ``num_layers - 1``, where
   exiting is no exit) the plan has no ``visual_tokens`` / no ``early_exit`` in that trial.
   Only a suggested ``after_layer == num_layers - 1`` or exit layer ``num_layers - 2`` can
   move out of the model.
2. *rank needs attention over the prompt, and tokens to rank.* ``rank: attention`` ranks image
   tokens by the attention of layer ``after_layer - 1`` (the moved ``after_layer``). When there
   is no such layer (``after_layer`` 0), when that layer skips its attention for prompt positions
   (``skip_block`` or ``skip_attn`` with a scope other than ``generated``), or when ``keep`` is 0
   (every image token goes, so nothing is ranked, and plans store ``rank: uniform`` then),
   ``visual_tokens.rank`` is not suggested in that trial and the plan uses ``rank: uniform``,
   whatever ``rank`` offers.

So different parameters may give the same plan; :meth:`Space.size` counts distinct plans, and
:meth:`Space.params_for` returns the first parameters (in the order of the values) giving one.

**Choices.** A list is searched; a single value is fixed. A decision with a single possible
value (a string, a one-item list, a range with ``low == high``) is not an optuna parameter.

**Parameter names** (stable: they depend only on the space and the layer count):
``layer_03.op`` (layer index, at least two digits), ``scope``, ``paper.mode``,
``paper.skip_interval``, ``paper.start_layer``, ``paper.end_layer``, ``prune.method``,
``prune.structure``, ``prune.sparsity``, ``visual_tokens.keep``, ``visual_tokens.after_layer``,
``visual_tokens.rank``, ``early_exit.layer``. Layer values (``paper.start_layer``,
``visual_tokens.after_layer``, ``early_exit.layer``...) are resolved layer indices, never negative.
Integer ranges use ``trial.suggest_int``, number ranges (sparsity, keep)
``trial.suggest_float(..., step=...)``, everything else ``trial.suggest_categorical``.

**Conditional parameters and samplers.** ``layer_XX.op`` of a ``parallel_blocks`` partner,
``prune.structure`` and ``prune.sparsity`` after ``method: none``, ``prune.sparsity``
after ``"2:4"``, ``visual_tokens.after_layer`` and ``visual_tokens.rank`` after ``keep: 1.0``,
``visual_tokens.rank`` where rule 2 above applies (or where rule 1 left the token dropping out)
are not suggested; TPE and the random sampler handle that. optuna's
``GridSampler`` cannot discover parameters by itself: it needs the grid form,
``GridSampler(space.grid(num_layers))``, which lists every parameter the space may suggest
with all its values. Grid points that differ only in a parameter the trial did not use give
the same plan, so a full grid visits every one of the :meth:`Space.size` distinct plans,
some more than once.

**Checks.** :meth:`Space.load` / :meth:`Space.from_dict` check the structure and raise one
:class:`~searchskip.errors.ConfigError` listing every problem with its dotted key
(``prune.sparsity.high``, ``ops[2]``, ``visual_tokens.keep[1]``). What depends on the model's
layer count (negative indices, ``from <= to``, ``start_layer < end_layer``,
``visual_tokens.after_layer`` and ``early_exit.layer`` within the model) is checked by :meth:`Space.check`,
which :meth:`Space.suggest` and the other methods taking ``num_layers`` call first.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterator, Literal, Mapping, Sequence, Union

from searchskip.config.typed import did_you_mean as _did_you_mean, build
from searchskip.config.yaml_io import read_yaml
from searchskip.errors import ConfigError, Problem
from searchskip.plan import (
    KEEP,
    OPS,
    PARALLEL_BLOCKS,
    PRUNE_STRUCTURES,
    PRUNE_TARGETS,
    RANK_ATTENTION,
    RANK_UNIFORM,
    SCOPE_ALL,
    EXIT_SCOPES,
    CalibrationSpec,
    EarlyExitSpec,
    ExitScope,
    LayerOp,
    OpName,
    Plan,
    PruneSpec,
    PruneStructure,
    PruneTarget,
    ScopeName,
    VisualRank,
    VisualTokensSpec,
    skips_prompt_attention,
)
from searchskip.plan.file_form import _CHECKS as _PLAN_CHECKS, _targets_listed
from searchskip.plan.names import _SEXAGESIMAL_2_4

if TYPE_CHECKING:  # optuna is imported only where a trial is replayed (keeps `searchskip validate` fast)
    import optuna

__all__ = [
    "SPACE_VERSION", "SPACE_KINDS", "SPACE_KEYS", "NO_PRUNE", "PRUNE_CHOICES",
    "PARAM_SCOPE", "PARAM_MODE", "PARAM_SKIP_INTERVAL", "PARAM_START_LAYER", "PARAM_END_LAYER",
    "PARAM_PRUNE_METHOD", "PARAM_PRUNE_STRUCTURE", "PARAM_PRUNE_SPARSITY", "layer_param",
    "NO_EXIT", "PARAM_VISUAL_KEEP", "PARAM_VISUAL_AFTER_LAYER", "PARAM_VISUAL_RANK", "PARAM_EXIT_LAYER",
    "IntRange", "FloatRange", "LayerRange", "PruneChoices", "VisualTokensChoices", "EarlyExitChoices",
    "Space", "PerLayerSpace", "PaperSpace",
]

SPACE_VERSION = 1
"""The space format this module reads."""

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


# --------------------------------------------------------------------------------------
# The file form, built and checked by searchskip.config.typed.build
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _IntRangeFile:
    low: int
    high: int
    step: int = 1


@dataclass(frozen=True, kw_only=True)
class _FloatRangeFile:
    low: float
    high: float
    step: float


IntChoiceFile = Union[int, list[int], _IntRangeFile]
FloatChoiceFile = Union[float, list[float], _FloatRangeFile]


@dataclass(frozen=True, kw_only=True)
class _PruneSpaceFile:
    method: PruneChoice | list[PruneChoice]
    structure: PruneStructure | list[PruneStructure] = "unstructured"
    sparsity: FloatChoiceFile | None = None
    targets: tuple[PruneTarget, ...] = PRUNE_TARGETS
    calibration: CalibrationSpec | None = None


@dataclass(frozen=True, kw_only=True)
class _VisualTokensSpaceFile:
    keep: FloatChoiceFile
    after_layer: IntChoiceFile
    rank: VisualRank | list[VisualRank] = RANK_ATTENTION


@dataclass(frozen=True, kw_only=True)
class _EarlyExitSpaceFile:
    layer: Union[NoExit, int, list[Union[NoExit, int]], _IntRangeFile]
    scope: ExitScope = EXIT_SCOPES[0]


@dataclass(frozen=True, kw_only=True)
class _PerLayerFile:
    version: int
    kind: SpaceKind = "per_layer"
    layers: Mapping[str, int] | list[int] = field(default_factory=lambda: {"from": 1, "to": -2})
    ops: OpName | list[OpName]
    scope: ScopeName | list[ScopeName] = SCOPE_ALL
    average: bool = False
    prune: _PruneSpaceFile | None = None
    visual_tokens: _VisualTokensSpaceFile | None = None
    early_exit: _EarlyExitSpaceFile | None = None


@dataclass(frozen=True, kw_only=True)
class _PaperFile:
    version: int
    kind: SpaceKind
    mode: OpName | list[OpName]
    skip_interval: IntChoiceFile
    start_layer: IntChoiceFile = 0
    end_layer: IntChoiceFile | None = None
    scope: ScopeName | list[ScopeName] = SCOPE_ALL
    average: bool = False
    prune: _PruneSpaceFile | None = None
    visual_tokens: _VisualTokensSpaceFile | None = None
    early_exit: _EarlyExitSpaceFile | None = None


SPACE_KEYS = frozenset(f.name for cls in (_PerLayerFile, _PaperFile) for f in dataclasses.fields(cls))
"""The top-level keys of a space file (of either kind)."""


# ---- rules (see searchskip.config.typed: each yields (relative dotted key, rule)) --------


def _items(name: str, value: Any) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of a choice written as one value or as a list."""
    if isinstance(value, list):
        return [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [(name, value)]


def _list_shape(name: str, value: Any, what: str = "choice") -> Iterator[tuple[str, str]]:
    if not isinstance(value, list):
        return
    if not value:
        yield name, f"must list at least one {what}, but got an empty list"
    for item, count in collections.Counter(map(repr, value)).items():
        if count > 1:
            yield name, f"must list each {what} once, but {item} appears {count} times"


def _version(space: Any) -> Iterator[tuple[str, str]]:
    if space.version != SPACE_VERSION:
        yield "version", (f"`version == {SPACE_VERSION}` must hold (this searchskip reads space version "
                          f"{SPACE_VERSION}), but got version={space.version}")


def _scope_list(space: Any) -> Iterator[tuple[str, str]]:
    yield from _list_shape("scope", space.scope, "scope")


def _op_list(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("ops", space.ops, "op")


def _average_needs_pairs(name: str, ops: Any, average: bool) -> Iterator[tuple[str, str]]:
    ops = ops if isinstance(ops, list) else [ops]
    if average and PARALLEL_BLOCKS not in ops:
        yield "average", (f"applies only to op 'parallel_blocks' (it averages the two blocks' outputs), "
                          f"but {name} does not offer it")


def _average_ops(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    yield from _average_needs_pairs("ops", space.ops, space.average)


def _average_mode(space: _PaperFile) -> Iterator[tuple[str, str]]:
    yield from _average_needs_pairs("mode", space.mode, space.average)


def _layer_keys(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    layers = space.layers
    if isinstance(layers, list):
        yield from _list_shape("layers", layers, "layer")
        return
    for name in layers:
        if name not in _LAYER_RANGE_KEYS:
            guess = _did_you_mean(name, _LAYER_RANGE_KEYS)
            yield f"layers.{name}", ("is not a known setting here" + (f"; did you mean {guess!r}?" if guess else "")
                                     + f" (known here: {', '.join(_LAYER_RANGE_KEYS)})")


def _layer_order(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    layers = space.layers
    if isinstance(layers, list):
        return
    first, last = layers.get("from", 1), layers.get("to", -2)
    if (first < 0) == (last < 0) and first > last:  # mixed signs are compared once the layer count is known
        yield "layers", f"`from <= to` must hold (both ends are inclusive), but got from={first}, to={last}"


def _mode_changes(space: _PaperFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("mode", space.mode, "op")
    for key, value in _items("mode", space.mode):
        if value == KEEP:
            yield key, ("must be an op that changes the layers (the paper's mode), "
                        f"one of {', '.join(repr(o) for o in OPS if o != KEEP)}, but got 'keep'")


def _choice_values(name: str, choice: Any) -> list[tuple[str, str, Any]]:
    """``(dotted key, name in the rule, value)`` of a choice as written in a file: the ends of a
    range (of integers or numbers), or each value."""
    if isinstance(choice, (_IntRangeFile, _FloatRangeFile)):
        return [(f"{name}.low", "low", choice.low), (f"{name}.high", "high", choice.high)]
    return [(key, name, v) for key, v in _items(name, choice)]


def _skip_interval(space: _PaperFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("skip_interval", space.skip_interval, "value")
    for key, name, value in _choice_values("skip_interval", space.skip_interval):
        if value < 1:
            yield key, f"`skip_interval >= 1` must hold, but got {name}={value}"


def _start_layer(space: _PaperFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("start_layer", space.start_layer, "value")


def _end_layer(space: _PaperFile) -> Iterator[tuple[str, str]]:
    if space.end_layer is None:
        return
    yield from _list_shape("end_layer", space.end_layer, "value")
    for key, _, value in _choice_values("end_layer", space.end_layer):
        if value == 0:
            yield key, ("`end_layer != 0` must hold (the bound is exclusive, so no layer would be chosen; "
                        "negative values count from the end), but got end_layer=0")


def _start_before_end(space: _PaperFile) -> Iterator[tuple[str, str]]:
    if space.end_layer is None:
        return
    starts, ends = _offered(space.start_layer), _offered(space.end_layer)
    if starts and ends and all(v >= 0 for v in starts + ends) and max(starts) >= min(ends):
        yield "end_layer", (f"`start_layer < end_layer` must hold for every choice of both, but got "
                            f"start_layer={max(starts)}, end_layer={min(ends)}")


def _offered(choice: Any) -> list[int]:
    """The integers a choice offers, as written (negative ones not resolved)."""
    if isinstance(choice, _IntRangeFile):
        return list(range(choice.low, choice.high + 1, choice.step)) if choice.step >= 1 else []
    return list(choice) if isinstance(choice, list) else [choice]


def _int_range(r: _IntRangeFile) -> Iterator[tuple[str, str]]:
    if r.step < 1:
        yield "step", f"`step >= 1` must hold, but got step={r.step}"
    if (r.low < 0) == (r.high < 0) and r.low > r.high:
        yield "high", f"`low <= high` must hold, but got low={r.low}, high={r.high}"


def _float_range(r: _FloatRangeFile) -> Iterator[tuple[str, str]]:
    if r.step <= 0:
        yield "step", f"`step > 0` must hold, but got step={r.step!r}"
    if r.low > r.high:
        yield "high", f"`low <= high` must hold, but got low={r.low!r}, high={r.high!r}"
    elif r.step > 0:
        count = (r.high - r.low) / r.step
        if abs(count - round(count)) > 1e-9:
            yield "step", ("`high - low` must be a multiple of `step` (the values are low, low + step, ..., high), "
                           f"but got low={r.low!r}, high={r.high!r}, step={r.step!r}")


def _prune_lists(prune: _PruneSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("method", prune.method, "method")
    yield from _list_shape("structure", prune.structure, "structure")


def _prune_sparsity_list(prune: _PruneSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("sparsity", prune.sparsity, "value")


def _prune_sparsity_needed(prune: _PruneSpaceFile) -> Iterator[tuple[str, str]]:
    methods = prune.method if isinstance(prune.method, list) else [prune.method]
    structures = prune.structure if isinstance(prune.structure, list) else [prune.structure]
    if not methods or not structures or methods == [NO_PRUNE]:
        return
    if prune.sparsity is None and any(s != _TWO_FOUR for s in structures):
        yield "sparsity", ("is required when a structure other than '2:4' is offered (a number, a list of numbers "
                           "or {low, high, step})")
    elif prune.sparsity is not None and all(s == _TWO_FOUR for s in structures):
        yield "sparsity", ("is not used: structure '2:4' keeps 2 of every 4 weights, so its sparsity is always "
                           "0.5; remove it")


def _prune_sparsity_range(prune: _PruneSpaceFile) -> Iterator[tuple[str, str]]:
    if prune.sparsity is None:
        return
    for key, name, value in _choice_values("sparsity", prune.sparsity):
        if not 0.0 <= value < 1.0:
            yield key, (f"`0 <= {name} < 1` must hold (sparsity is the fraction of weights removed), "
                        f"but got {name}={value!r}")


def _prune_calibration(prune: _PruneSpaceFile) -> Iterator[tuple[str, str]]:
    methods = prune.method if isinstance(prune.method, list) else [prune.method]
    if prune.calibration is not None and "wanda" not in methods:
        yield "calibration", ("applies only to method 'wanda' (magnitude pruning looks at the weights alone), "
                              "but prune.method does not offer it; remove it")


def _visual_keep(visual: _VisualTokensSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("keep", visual.keep, "value")
    values = _choice_values("keep", visual.keep)
    for key, name, value in values:
        if not 0.0 <= value <= 1.0:
            yield key, (f"`0 <= {name} <= 1` must hold (keep is the fraction of image tokens kept; 0 drops them all), "
                        f"but got {name}={value!r}")
    if values and all(value == _KEEP_ALL for _, _, value in values):
        yield "keep", ("must offer a value below 1: keep 1.0 keeps every image token, so after_layer and rank "
                       "would never be used; remove visual_tokens to search no token dropping")


def _visual_after_layer(visual: _VisualTokensSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("after_layer", visual.after_layer, "value")


def _visual_rank(visual: _VisualTokensSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("rank", visual.rank, "rank")


def _exit_layer(early: _EarlyExitSpaceFile) -> Iterator[tuple[str, str]]:
    yield from _list_shape("layer", early.layer, "value")
    values = _choice_values("layer", early.layer)
    if values and all(value == NO_EXIT for _, _, value in values):
        yield "layer", (f"must offer a layer besides {NO_EXIT!r}: 'none' alone never lets a token exit; "
                        "remove early_exit to search no early exit")
    for key, name, value in values:
        if value == -1:
            yield key, ("`layer != -1` must hold: -1 is the last layer, and exiting after the last layer is no "
                        f"exit (use -2 or lower, or 'none'), but got {name}=-1")


_CHECKS: dict[type, list[Any]] = {
    _PerLayerFile: [_version, _op_list, _scope_list, _average_ops, _layer_keys, _layer_order],
    _PaperFile: [_version, _mode_changes, _scope_list, _average_mode, _skip_interval, _start_layer,
                 _end_layer, _start_before_end],
    _IntRangeFile: [_int_range],
    _FloatRangeFile: [_float_range],
    _PruneSpaceFile: [_prune_lists, _prune_sparsity_list, _prune_sparsity_needed, _prune_sparsity_range,
                      _prune_calibration, _targets_listed],
    CalibrationSpec: list(_PLAN_CHECKS[CalibrationSpec]),
    _VisualTokensSpaceFile: [_visual_keep, _visual_after_layer, _visual_rank],
    _EarlyExitSpaceFile: [_exit_layer],
}


# --------------------------------------------------------------------------------------
# Public, normalised form
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntRange:
    """Integers ``low, low + step, ...`` up to ``high`` (inclusive); negative layer bounds count from the end."""

    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    """Numbers ``low, low + step, ..., high``; ``high - low`` is a multiple of ``step``."""

    low: float
    high: float
    step: float

    def values(self) -> tuple[float, ...]:
        count = round((self.high - self.low) / self.step)
        return tuple(round(self.low + k * self.step, _DECIMALS) for k in range(count + 1))

    def snap(self, value: float) -> float:
        """The value of :meth:`values` nearest ``value`` (what optuna returns may be off by rounding)."""
        values = self.values()
        k = min(max(round((value - self.low) / self.step), 0), len(values) - 1)
        return values[k]


@dataclass(frozen=True)
class LayerRange:
    """Layers ``first .. last``, both inclusive (``from`` and ``to`` in the file); negative counts from the end."""

    first: int = 0
    last: int = -1


IntChoice = Union[tuple[int, ...], IntRange]
FloatChoice = Union[tuple[float, ...], FloatRange]


@dataclass(frozen=True)
class PruneChoices:
    """The prune decisions of a space; ``methods`` may include ``'none'`` (no pruning)."""

    methods: tuple[str, ...]
    structures: tuple[str, ...] = ("unstructured",)
    sparsity: FloatChoice | None = None
    targets: tuple[str, ...] = PRUNE_TARGETS
    calibration: CalibrationSpec | None = None


@dataclass(frozen=True)
class VisualTokensChoices:
    """The ``visual_tokens`` decisions of a space; ``keep`` may offer 1.0 (no token dropping)."""

    keep: FloatChoice
    after_layer: IntChoice
    """Layer indices as written (negative ones count from the end)."""
    ranks: tuple[str, ...] = (RANK_ATTENTION,)


@dataclass(frozen=True)
class EarlyExitChoices:
    """The ``early_exit`` decision of a space: layer indices as written (negative ones count from
    the end), possibly with ``'none'`` (no early exit), or a range."""

    layers: tuple[int | str, ...] | IntRange
    scope: str = EXIT_SCOPES[0]
    """Which tokens exit (fixed, not searched: ``generated`` is the only scope)."""


@dataclass(frozen=True)
class _Decision:
    """One decision: its parameter name and possible values (a parameter only with several values)."""

    name: str
    values: tuple[Any, ...]
    int_range: tuple[int, int, int] | None = None  # suggest_int(low, high, step)
    float_range: FloatRange | None = None  # suggest_float(low, high, step)

    @property
    def is_param(self) -> bool:
        return len(self.values) > 1

    def suggest(self, trial: "optuna.trial.BaseTrial") -> Any:
        if not self.is_param:
            return self.values[0]
        if self.int_range is not None:
            low, high, step = self.int_range
            return trial.suggest_int(self.name, low, high, step=step)
        if self.float_range is not None:
            r = self.float_range
            return r.snap(trial.suggest_float(self.name, r.low, r.high, step=r.step))
        return trial.suggest_categorical(self.name, list(self.values))

    def distribution(self) -> "optuna.distributions.BaseDistribution":
        """The optuna distribution :meth:`suggest` draws this parameter from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.int_range is not None:
            low, high, step = self.int_range
            return IntDistribution(low, high, step=step)
        if self.float_range is not None:
            r = self.float_range
            return FloatDistribution(r.low, r.high, step=r.step)
        return CategoricalDistribution(list(self.values))


def _choice_decision(name: str, choice: IntChoice | FloatChoice | tuple[str, ...],
                     resolve: Any = None) -> _Decision:
    if isinstance(choice, FloatRange):
        return _Decision(name, choice.values(), float_range=choice)
    if isinstance(choice, IntRange):
        low, high = (resolve(choice.low), resolve(choice.high)) if resolve else (choice.low, choice.high)
        values = tuple(range(low, high + 1, choice.step))
        return _Decision(name, values, int_range=(low, values[-1], choice.step) if values else None)
    values = tuple(resolve(v) for v in choice) if resolve else tuple(choice)
    return _Decision(name, values)


def _plural(n: int) -> str:
    return f"{n} decoder layer{'s' if n != 1 else ''}, 0..{n - 1}"


def _resolver(num_layers: int) -> Callable[[Any], Any]:
    """Resolve a layer index as written in a space (negative counts from the end); other values pass."""
    return lambda i: i + num_layers if isinstance(i, int) and i < 0 else i


def _choice_keys(name: str, choice: IntChoice | tuple[Any, ...]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of an integer choice of the public form: a range's ends, or each value."""
    if isinstance(choice, IntRange):
        return [(f"{name}.low", choice.low), (f"{name}.high", choice.high)]
    return [(f"{name}[{i}]" if len(choice) > 1 else name, v) for i, v in enumerate(choice)]


def _offer_problems(key: str, decision: _Decision, model: str) -> list[tuple[str, str]]:
    """A layer choice must offer a layer, each one once, after resolving negative indices."""
    if not decision.values:
        return [(key, f"must offer at least one layer once resolved ({model}), but `low <= high` does not "
                      "hold there")]
    if len(set(decision.values)) < len(decision.values):
        return [(key, f"must offer each layer only once after resolving ({model}), but got "
                      f"{list(decision.values)}")]
    return []


# ---- the token keys after the layer ops (rules 1 and 2 of the module docstring) -----------------


def _after_layer_past_pairs(after_layer: int, pairs: Collection[int], num_layers: int) -> int | None:
    """Rule 1 for ``visual_tokens``: the layer tokens drop from, one later when a parallel_blocks pair
    starts at ``after_layer - 1`` (it would straddle the boundary); ``None`` when that is past the model."""
    moved = after_layer + 1 if after_layer - 1 in pairs else after_layer
    return moved if moved < num_layers else None


def _exit_past_pairs(layer: int, pairs: Collection[int], num_layers: int) -> int | None:
    """Rule 1 for ``early_exit``: the exit layer, one later when a parallel_blocks pair starts at it;
    ``None`` when that is the last layer (exiting after the last layer is no exit)."""
    moved = layer + 1 if layer in pairs else layer
    return moved if moved < num_layers - 1 else None


def _pair_starts(layers: Plan) -> frozenset[int]:
    return frozenset(i for i, op in layers.layers if op.op == PARALLEL_BLOCKS)


_Features = tuple[bool, bool]
"""What the token rules read of one layer: (a parallel_blocks pair starts there, it skips prompt attention)."""
_PLAIN: _Features = (False, False)


def _features(op: LayerOp) -> _Features:
    return op.op == PARALLEL_BLOCKS, skips_prompt_attention(op.op, op.scope)


@dataclass(frozen=True)
class _TokenCount:
    """Counts the distinct ``(visual_tokens, early_exit)`` outcomes of the token decisions on given
    layer ops, summed over many sequences of layer ops at once (:meth:`total`).

    Rules 1 and 2 make an outcome depend on two adjacent layers only: ``after_layer == t`` is an
    outcome when ``t`` is offered and no pair starts at ``t - 1``, or ``t - 1`` is offered and a pair
    starts at ``t - 2``; its ranks depend on layer ``t - 1`` (and on keep); ``after_layer == 0``
    depends on no layer. An exit after ``u`` is
    one when ``u`` is offered and no pair starts at ``u``, or ``u - 1`` is offered and a pair starts
    there. So the number of outcomes of each key is a constant plus a sum of per-layer terms, and
    :meth:`total` sums the product of both numbers over every sequence of layer ops by dynamic
    programming over the layers (the expansion of the product of two sums).
    """

    num_layers: int
    visual: tuple[_Decision, _Decision, _Decision] | None
    early: _Decision | None

    def _visual_base(self) -> int:
        """Outcomes that need no layer: no section (one outcome, none); keep 1.0 offered (none);
        ``after_layer`` 0 offered (no pair before it, and ``rank: uniform`` only) with each keep below 1."""
        if self.visual is None:
            return 1
        keep_d, after_d, _ = self.visual
        drops = sum(k != _KEEP_ALL for k in keep_d.values)
        return int(_KEEP_ALL in keep_d.values) + (drops if 0 in after_d.values else 0)

    def _exit_base(self) -> int:
        return 1 if self.early is None else int(NO_EXIT in self.early.values)

    def _visual_term(self, i: int, pair_before: bool, here: _Features) -> int:
        """Outcomes with ``after_layer == i + 1`` (and the 'no visual_tokens' outcome when only a pair
        at ``i`` pushing the offered ``after_layer == i + 1`` out of the model makes it)."""
        if self.visual is None:
            return 0
        keep_d, after_d, rank_d = self.visual
        pair, skips = here
        pairs = {layer for layer, starts in ((i - 1, pair_before), (i, pair)) if starts}
        resolved = {a: _after_layer_past_pairs(a, pairs, self.num_layers) for a in (i, i + 1) if a in after_d.values}
        if i + 1 in resolved.values():  # each keep below 1 with its ranks (one when rule 2 applies)
            count = sum(1 if skips or k == 0.0 else len(rank_d.values) for k in keep_d.values if k != _KEEP_ALL)
        else:
            count = 0
        if i + 1 in resolved and resolved[i + 1] is None and _KEEP_ALL not in keep_d.values:
            count += 1
        return count

    def _exit_term(self, i: int, pair_before: bool, here: _Features) -> int:
        """Outcomes with an exit after ``i`` (and the 'no early_exit' outcome when only a pair at ``i``
        pushing the offered exit ``i`` to the last layer makes it)."""
        if self.early is None:
            return 0
        pairs = {layer for layer, starts in ((i - 1, pair_before), (i, here[0])) if starts}
        resolved = {e: _exit_past_pairs(e, pairs, self.num_layers) for e in (i - 1, i) if e in self.early.values}
        count = int(i in resolved.values())
        if i in resolved and resolved[i] is None and not self._exit_base():
            count += 1
        return count

    def total(self, options: Sequence[Sequence[_Features]]) -> int:
        """The sum, over every sequence of layer ops, of (visual outcomes) x (exit outcomes), where
        layer ``i`` takes each op of ``options[i]`` (given by its features), or is the plain partner of
        a pair starting at ``i - 1``. ``[[f] for f in features]`` gives the count of one sequence."""
        # state: (a pair starts at the previous layer, visual term chosen, exit term chosen) -> sum of
        # the products of the terms chosen so far (the expansion of the product of two sums)
        states: dict[tuple[bool, bool, bool], int] = collections.defaultdict(int)
        for v, e in itertools.product((False, True), repeat=2):
            states[(False, v, e)] += (self._visual_base() if v else 1) * (self._exit_base() if e else 1)
        for i, choices in enumerate(options):
            after: dict[tuple[bool, bool, bool], int] = collections.defaultdict(int)
            terms = {(before, here): (self._visual_term(i, before, here), self._exit_term(i, before, here))
                     for before in (False, True) for here in ([_PLAIN] if before else choices)}
            for (pair_before, v, e), weight in states.items():
                for here in ([_PLAIN] if pair_before else choices):
                    vt, et = terms[(pair_before, here)]
                    for v2, vf in [(v, 1)] + ([(True, vt)] if not v and vt else []):
                        for e2, ef in [(e, 1)] + ([(True, et)] if not e and et else []):
                            after[(here[0], v2, e2)] += weight * vf * ef
            states = after
        return sum(weight for (_, v, e), weight in states.items() if v and e)


@dataclass(frozen=True, kw_only=True)
class Space:
    """A search space (format version :data:`SPACE_VERSION`); see the module docstring.

    Build one with :meth:`load` or :meth:`from_dict`, which check it and return a
    :class:`PerLayerSpace` or a :class:`PaperSpace`. ``file`` only labels problems.
    """

    KIND: ClassVar[str] = ""

    scopes: tuple[str, ...] = (SCOPE_ALL,)
    average: bool = False
    prune: PruneChoices | None = None
    visual_tokens: VisualTokensChoices | None = None
    early_exit: EarlyExitChoices | None = None
    file: str | None = field(default=None, compare=False)

    # ---- reading ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, file: str | None = None) -> "Space":
        """Build and check a space from parsed YAML; raise one :class:`ConfigError` listing every problem."""
        kind = data.get("kind", "per_layer") if isinstance(data, dict) else "per_layer"
        if kind not in SPACE_KINDS:  # reported by build; pick the form whose keys the file uses
            kind = "paper" if isinstance(data, dict) and any(k in data for k in _PAPER_ONLY) else "per_layer"
        form = _PaperFile if kind == "paper" else _PerLayerFile
        built, problems = build(form, data, file, checks=_CHECKS)
        problems = [_with_hint(p, kind) for p in problems]
        if problems or built is None:
            raise ConfigError(problems, file)
        return _from_built(built, file)

    @classmethod
    def load(cls, path: str | Path) -> "Space":
        """Read and check a space file; problems name the file."""
        return cls.from_dict(read_yaml(path), str(path))

    # ---- what subclasses provide --------------------------------------------------------
    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        return []

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        raise NotImplementedError

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def _unpruned_plans(self, num_layers: int) -> int:
        """How many distinct plans the layer decisions (ops and scope) and the token decisions give (no prune)."""
        raise NotImplementedError

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        raise NotImplementedError

    def _grid_decisions(self, num_layers: int) -> list[_Decision]:
        """The decisions of the layers and the scope, in the order they are suggested."""
        return self._layer_decisions(num_layers)

    # ---- checks against the model ---------------------------------------------------------
    def check(self, num_layers: int) -> "Space":
        """Check the space against a model with ``num_layers`` decoder layers; return the space.

        Raises :class:`ConfigError` naming the file, the key and the layer count.
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, but got {num_layers!r}")
        problems = _cached_problems(self, num_layers)
        if problems:
            raise ConfigError([Problem(self.file, key, rule) for key, rule in problems], self.file)
        return self

    def _scope_decision(self) -> _Decision:
        return _Decision(PARAM_SCOPE, self.scopes)

    def _token_problems(self, num_layers: int) -> list[tuple[str, str]]:
        """``visual_tokens.after_layer`` and ``early_exit.layer`` within the model, once resolved."""
        n = num_layers
        resolve = _resolver(n)
        model = f"the model has {_plural(n)}; negative values count from the end"
        problems = []
        if self.visual_tokens is not None:
            for key, value in _choice_keys(PARAM_VISUAL_AFTER_LAYER, self.visual_tokens.after_layer):
                if not 0 <= resolve(value) < n:
                    problems.append((key, f"`0 <= after_layer < num_layers` must hold once resolved ({model}), "
                                          f"but got after_layer={value}"))
        if self.early_exit is not None:
            for key, value in _choice_keys(PARAM_EXIT_LAYER, self.early_exit.layers):
                if value != NO_EXIT and not 0 <= resolve(value) < n - 1:
                    problems.append((key, f"`0 <= layer < num_layers - 1` must hold once resolved (exiting after "
                                          f"the last layer is no exit; {model}), but got layer={value}"))
        if problems:
            return problems
        visual, early = self._visual_decisions(n), self._exit_decision(n)
        for decision in ([visual[1]] if visual else []) + ([early] if early else []):
            problems += _offer_problems(decision.name, decision, model)
        return problems

    def _visual_decisions(self, num_layers: int) -> tuple[_Decision, _Decision, _Decision] | None:
        """``(keep, after_layer, rank)``, or ``None`` without ``visual_tokens``."""
        v = self.visual_tokens
        if v is None:
            return None
        return (_choice_decision(PARAM_VISUAL_KEEP, v.keep),
                _choice_decision(PARAM_VISUAL_AFTER_LAYER, v.after_layer, _resolver(num_layers)),
                _Decision(PARAM_VISUAL_RANK, v.ranks))

    def _exit_decision(self, num_layers: int) -> _Decision | None:
        e = self.early_exit
        return None if e is None else _choice_decision(PARAM_EXIT_LAYER, e.layers, _resolver(num_layers))

    def _token_count(self, num_layers: int) -> _TokenCount:
        return _TokenCount(num_layers, self._visual_decisions(num_layers), self._exit_decision(num_layers))

    # ---- suggesting -----------------------------------------------------------------------
    def suggest(self, trial: "optuna.trial.BaseTrial", num_layers: int) -> Plan:
        """The plan of one trial, its decisions suggested through ``trial`` (define-by-run).

        The plan is checked against the model (:meth:`Plan.validate`).
        """
        self.check(num_layers)
        layers = self._suggest_layers(trial, num_layers)
        prune = self._suggest_prune(trial)
        visual = self._suggest_visual(trial, layers, num_layers)
        early = self._suggest_exit(trial, layers, num_layers)
        return Plan(layers=layers.layers, scope=layers.scope, prune=prune, visual_tokens=visual,
                    early_exit=early).validate(num_layers, file=self.file)

    def _prune_decisions(self) -> tuple[_Decision, _Decision, _Decision | None]:
        p = self.prune
        assert p is not None
        sparsity = _choice_decision(PARAM_PRUNE_SPARSITY, p.sparsity) if p.sparsity is not None else None
        return (_Decision(PARAM_PRUNE_METHOD, p.methods), _Decision(PARAM_PRUNE_STRUCTURE, p.structures), sparsity)

    def _suggest_prune(self, trial: Any) -> PruneSpec | None:
        if self.prune is None:
            return None
        method_d, structure_d, sparsity_d = self._prune_decisions()
        method = method_d.suggest(trial)
        if method == NO_PRUNE:
            return None
        structure = structure_d.suggest(trial)
        if structure == _TWO_FOUR:
            sparsity = _TWO_FOUR_SPARSITY
        else:
            assert sparsity_d is not None
            sparsity = sparsity_d.suggest(trial)
        return self._prune_spec(method, structure, sparsity)

    def _prune_spec(self, method: str, structure: str, sparsity: float) -> PruneSpec:
        p = self.prune
        assert p is not None
        return PruneSpec(method=method, structure=structure, sparsity=sparsity,
                         targets=("ffn",) if structure == "ffn_channels" else p.targets,
                         calibration=p.calibration if method == "wanda" else None)

    def _prune_options(self) -> dict[PruneSpec | None, dict[str, Any]]:
        """Every distinct canonical prune (``None``: no pruning) -> the first parameters giving it."""
        return _cached_prune_options(self)

    def _suggest_visual(self, trial: Any, layers: Plan, num_layers: int) -> VisualTokensSpec | None:
        """``visual_tokens`` on the suggested layer ops ``layers``, by rules 1 and 2 of the module docstring."""
        decisions = self._visual_decisions(num_layers)
        if decisions is None:
            return None
        keep_d, after_d, rank_d = decisions
        keep = keep_d.suggest(trial)
        if keep == _KEEP_ALL:
            return None
        after = _after_layer_past_pairs(after_d.suggest(trial), _pair_starts(layers), num_layers)
        if after is None:
            return None
        before = layers.op_for(after - 1) if after >= 1 else None
        ranked = keep != 0.0 and before is not None and not skips_prompt_attention(before.op, before.scope)
        rank = rank_d.suggest(trial) if ranked else RANK_UNIFORM
        return VisualTokensSpec(after_layer=after, keep=keep, rank=rank)

    def _suggest_exit(self, trial: Any, layers: Plan, num_layers: int) -> EarlyExitSpec | None:
        """``early_exit`` on the suggested layer ops ``layers``, by rule 1 of the module docstring."""
        decision = self._exit_decision(num_layers)
        if decision is None:
            return None
        layer = decision.suggest(trial)
        if layer == NO_EXIT:
            return None
        layer = _exit_past_pairs(layer, _pair_starts(layers), num_layers)
        return None if layer is None else EarlyExitSpec(layer=layer, scope=self.early_exit.scope)

    # ---- the inverse, the grid, the size ------------------------------------------------------
    def params_for(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        """The parameters that make :meth:`suggest` return ``plan`` (for ``study.enqueue_trial``),
        or ``None`` when ``plan`` is outside the space. Where several do, the first found is returned."""
        self.check(num_layers)
        if plan.drop is not None:
            return None
        prune = self._prune_options().get(plan.prune) if self.prune is not None else ({} if plan.prune is None
                                                                                      else None)
        if prune is None:
            return None
        ops = Plan(layers=plan.layers, scope=plan.scope)
        layers = self._layer_params(ops, num_layers)
        if layers is None:
            return None
        visual = _first_params(self._visual_decisions(num_layers) or (), plan.visual_tokens,
                               lambda trial: self._suggest_visual(trial, ops, num_layers))
        early = _first_params([d for d in [self._exit_decision(num_layers)] if d is not None], plan.early_exit,
                              lambda trial: self._suggest_exit(trial, ops, num_layers))
        if visual is None or early is None:
            return None
        params = {**layers, **prune, **visual, **early}
        from optuna.trial import FixedTrial  # replay: the parameters must give exactly this plan

        try:
            replayed = self.suggest(FixedTrial(params), num_layers)
        except (ValueError, ConfigError):
            return None
        return params if replayed == plan else None

    def _param_decisions(self, num_layers: int) -> list[_Decision]:
        self.check(num_layers)
        decisions = list(self._grid_decisions(num_layers))
        if self.prune is not None:
            decisions += [d for d in self._prune_decisions() if d is not None]
        decisions += [*(self._visual_decisions(num_layers) or ()), self._exit_decision(num_layers)]
        return [d for d in decisions if d is not None and d.is_param]

    def grid(self, num_layers: int) -> dict[str, list[Any]]:
        """optuna ``GridSampler``'s ``search_space``: every parameter the space may suggest, with all its values."""
        return {d.name: list(d.values) for d in self._param_decisions(num_layers)}

    def distributions(self, num_layers: int) -> dict[str, "optuna.distributions.BaseDistribution"]:
        """Every parameter the space may suggest, in the order it is suggested, with the optuna
        distribution it is drawn from (what a sampler that proposes whole plans draws)."""
        return {d.name: d.distribution() for d in self._param_decisions(num_layers)}

    def size(self, num_layers: int) -> int:
        """How many distinct plans the space holds for a model with ``num_layers`` decoder layers."""
        self.check(num_layers)
        prunes = len(self._prune_options()) if self.prune is not None else 1
        return self._unpruned_plans(num_layers) * prunes


def _first_params(decisions: Sequence[_Decision], target: Any, run: Callable[[Any], Any]) -> dict[str, Any] | None:
    """The first parameters, over every combination of the decisions' values in order, for which
    ``run(trial)`` returns ``target``: only those ``run`` suggested. ``None`` when no combination does.
    It replays ``run`` (the rules of the module docstring) rather than inverting it."""
    from optuna.trial import FixedTrial

    params = [d for d in decisions if d.is_param]
    for values in itertools.product(*(d.values for d in params)):
        trial = FixedTrial({d.name: v for d, v in zip(params, values)})
        if run(trial) == target:
            return dict(trial.params)
    return None


@functools.lru_cache(maxsize=256)
def _cached_problems(space: Space, num_layers: int) -> tuple[tuple[str, str], ...]:
    return tuple(space._problems(num_layers)) + tuple(space._token_problems(num_layers))


@functools.lru_cache(maxsize=64)
def _cached_prune_options(space: Space) -> dict[PruneSpec | None, dict[str, Any]]:
    method_d, structure_d, sparsity_d = space._prune_decisions()
    options: dict[PruneSpec | None, dict[str, Any]] = {}

    def add(spec: PruneSpec | None, params: dict[str, Any]) -> None:
        canonical = Plan(prune=spec).prune if spec is not None else None
        options.setdefault(canonical, params)

    def named(decision: _Decision | None, value: Any) -> dict[str, Any]:
        return {decision.name: value} if decision is not None and decision.is_param else {}

    for method in method_d.values:
        if method == NO_PRUNE:
            add(None, named(method_d, method))
            continue
        for structure in structure_d.values:
            if structure == _TWO_FOUR:
                add(space._prune_spec(method, structure, _TWO_FOUR_SPARSITY),
                    {**named(method_d, method), **named(structure_d, structure)})
                continue
            assert sparsity_d is not None
            for sparsity in sparsity_d.values:
                add(space._prune_spec(method, structure, sparsity),
                    {**named(method_d, method), **named(structure_d, structure), **named(sparsity_d, sparsity)})
    return options


@dataclass(frozen=True, kw_only=True)
class PerLayerSpace(Space):
    """``kind: per_layer``: an op among ``ops`` for every layer of ``layers``, one ``scope`` for all."""

    KIND: ClassVar[str] = "per_layer"

    layers: LayerRange | tuple[int, ...] = LayerRange()
    ops: tuple[str, ...] = ()

    def searchable_layers(self, num_layers: int) -> tuple[int, ...]:
        """The searchable layer indices, increasing, with negative ones resolved."""
        self.check(num_layers)
        return self._resolved(num_layers)

    def _resolved(self, num_layers: int) -> tuple[int, ...]:
        at = _resolver(num_layers)
        if isinstance(self.layers, LayerRange):
            return tuple(range(at(self.layers.first), at(self.layers.last) + 1))
        return tuple(sorted({at(i) for i in self.layers}))

    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        problems = []
        model = f"the model has {_plural(num_layers)}; negative values count from the end"

        def in_range(key: str, name: str, value: int) -> bool:
            if not -num_layers <= value < num_layers:
                problems.append((key, f"`-num_layers <= {name} < num_layers` must hold ({model}), "
                                      f"but got {name}={value}"))
                return False
            return True

        if isinstance(self.layers, LayerRange):
            first, last = self.layers.first, self.layers.last
            if in_range("layers.from", "from", first) & in_range("layers.to", "to", last):
                a, b = first % num_layers, last % num_layers
                if a > b:
                    problems.append(("layers", f"`from <= to` must hold once resolved ({model}), but got "
                                               f"from={first} (layer {a}), to={last} (layer {b})"))
        else:
            seen: dict[int, int] = {}
            for index, value in enumerate(self.layers):
                if in_range(f"layers[{index}]", "layer", value):
                    resolved = value % num_layers
                    if resolved in seen:
                        problems.append((f"layers[{index}]", f"must name each layer once ({model}), but layer "
                                                             f"{resolved} is also listed as {seen[resolved]}"))
                    seen.setdefault(resolved, value)
        if problems:
            return problems
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if not decision.values:
                problems.append(("ops", f"layer {layer} has no op to choose from: 'parallel_blocks' needs its "
                                        f"partner layer {layer + 1} among the searchable layers ({model}); "
                                        "add 'keep' to ops"))
        return problems

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        layers = self._resolved(num_layers)
        searchable = set(layers)
        out = []
        for layer in layers:
            values = tuple(op for op in self.ops if op != PARALLEL_BLOCKS or layer + 1 in searchable)
            out.append(_Decision(layer_param(layer), values))
        return out

    def _grid_decisions(self, num_layers: int) -> list[_Decision]:
        return [*self._layer_decisions(num_layers), self._scope_decision()]

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        chosen: dict[int, LayerOp] = {}
        partner = None
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if layer == partner:  # the partner of a parallel_blocks pair keeps; no parameter this trial
                continue
            op = decision.suggest(trial)
            if op != KEEP:
                chosen[layer] = LayerOp(op, average=self.average and op == PARALLEL_BLOCKS)
            partner = layer + 1 if op == PARALLEL_BLOCKS else None
        scope = self._scope_decision().suggest(trial)
        return Plan(layers=chosen, scope=scope)

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        ops = {i: plan.op_for(i) for i, _ in plan.layers}
        scopes = {op.scope for op in ops.values()}
        if len(scopes) > 1:
            return None
        params: dict[str, Any] = {}
        partner = None
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if layer == partner:
                partner = None
                continue
            op = ops.pop(layer, None)
            name = op.op if op is not None else KEEP
            if name not in decision.values:
                return None
            if op is not None and op.average != (self.average and name == PARALLEL_BLOCKS):
                return None
            if decision.is_param:
                params[decision.name] = name
            partner = layer + 1 if name == PARALLEL_BLOCKS else None
        if ops:  # an op on a layer outside the space
            return None
        scope_d = self._scope_decision()
        scope = scopes.pop() if scopes else scope_d.values[0]
        if scope not in scope_d.values:
            return None
        if scope_d.is_param:
            params[scope_d.name] = scope
        return params

    def _unpruned_plans(self, num_layers: int) -> int:
        count = self._token_count(num_layers)
        decisions = dict(zip(self._resolved(num_layers), self._layer_decisions(num_layers)))
        # every layer keeps: the same layer plan whatever the scope, so counted once
        dense = count.total([[_PLAIN]] * num_layers) if KEEP in self.ops else 0
        total = dense
        for scope in self.scopes:  # sequences of ops (a pair covers two layers), each with its token outcomes
            options = [[_features(LayerOp(op, scope)) for op in decisions[i].values] if i in decisions else [_PLAIN]
                       for i in range(num_layers)]
            total += count.total(options) - dense
        return total


@dataclass(frozen=True, kw_only=True)
class PaperSpace(Space):
    """``kind: paper``: :meth:`Plan.from_pattern` plans, one parameter per argument of it."""

    KIND: ClassVar[str] = "paper"

    modes: tuple[str, ...] = ()
    skip_interval: IntChoice = (1,)
    start_layer: IntChoice = (0,)
    end_layer: IntChoice | None = None

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        at = _resolver(num_layers)
        end = (_Decision(PARAM_END_LAYER, (num_layers,)) if self.end_layer is None
               else _choice_decision(PARAM_END_LAYER, self.end_layer, at))
        return [_Decision(PARAM_MODE, self.modes), _choice_decision(PARAM_SKIP_INTERVAL, self.skip_interval),
                _choice_decision(PARAM_START_LAYER, self.start_layer, at), end, self._scope_decision()]

    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        problems = []
        model = f"the model has {_plural(num_layers)}; negative values count from the end"

        for key, value in _choice_keys("start_layer", self.start_layer):
            if not -num_layers <= value < num_layers:
                problems.append((key, f"`-num_layers <= start_layer < num_layers` must hold ({model}), "
                                      f"but got start_layer={value}"))
        if self.end_layer is not None:
            for key, value in _choice_keys("end_layer", self.end_layer):
                if not -num_layers < value <= num_layers:
                    problems.append((key, f"`-num_layers < end_layer <= num_layers` must hold ({model}), "
                                          f"but got end_layer={value}"))
        if problems:
            return problems
        _, _, start, end, _ = self._layer_decisions(num_layers)
        for key, d in (("start_layer", start), ("end_layer", end)):
            problems += _offer_problems(key, d, model)
        if not problems and max(start.values) >= min(end.values):
            problems.append(("end_layer", f"`start_layer < end_layer` must hold for every choice of both once "
                                          f"resolved ({model}), but got start_layer={max(start.values)}, "
                                          f"end_layer={min(end.values)}"))
        return problems

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        mode, interval, start, end, scope = (d.suggest(trial) for d in self._layer_decisions(num_layers))
        return self._pattern(mode, interval, start, end, scope, num_layers)

    def _pattern(self, mode: str, interval: int, start: int, end: int, scope: str, num_layers: int) -> Plan:
        return Plan.from_pattern(interval, start, end, mode, scope, num_layers,
                                 average=self.average and mode == PARALLEL_BLOCKS)

    def _table(self, num_layers: int) -> dict[Plan, dict[str, Any]]:
        return _cached_paper_table(self, num_layers)

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        params = self._table(num_layers).get(plan)
        return None if params is None else dict(params)

    def _unpruned_plans(self, num_layers: int) -> int:
        table = self._table(num_layers)
        if self.visual_tokens is None and self.early_exit is None:
            return len(table)  # no token decision: one plan per interval plan
        count = self._token_count(num_layers)
        return sum(count.total([[_features(plan.op_for(i))] for i in range(num_layers)]) for plan in table)


@functools.lru_cache(maxsize=64)
def _cached_paper_table(space: PaperSpace, num_layers: int) -> dict[Plan, dict[str, Any]]:
    """Every distinct interval plan (no prune) -> the first parameters giving it."""
    decisions = space._layer_decisions(num_layers)
    table: dict[Plan, dict[str, Any]] = {}
    for values in itertools.product(*(d.values for d in decisions)):
        plan = space._pattern(*values, num_layers)
        if plan not in table:
            table[plan] = {d.name: v for d, v in zip(decisions, values) if d.is_param}
    return table


# --------------------------------------------------------------------------------------
# File form -> public form
# --------------------------------------------------------------------------------------


def _strings(value: str | list[str]) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def _int_choice(value: Any) -> IntChoice:
    if isinstance(value, _IntRangeFile):
        return IntRange(value.low, value.high, value.step)
    return tuple(value) if isinstance(value, list) else (value,)


def _float_choice(value: Any) -> FloatChoice:
    if isinstance(value, _FloatRangeFile):
        return FloatRange(value.low, value.high, value.step)
    values = value if isinstance(value, list) else [value]
    return tuple(round(float(v), _DECIMALS) for v in values)


def _from_built(built: _PerLayerFile | _PaperFile, file: str | None) -> Space:
    prune = None
    if built.prune is not None:
        p = built.prune
        prune = PruneChoices(methods=_strings(p.method), structures=_strings(p.structure),
                             sparsity=None if p.sparsity is None else _float_choice(p.sparsity),
                             targets=tuple(t for t in PRUNE_TARGETS if t in p.targets), calibration=p.calibration)
    visual = None
    if built.visual_tokens is not None:
        v = built.visual_tokens
        visual = VisualTokensChoices(keep=_float_choice(v.keep), after_layer=_int_choice(v.after_layer),
                                     ranks=_strings(v.rank))
    early = None
    if built.early_exit is not None:
        early = EarlyExitChoices(layers=_int_choice(built.early_exit.layer), scope=built.early_exit.scope)
    common = dict(scopes=_strings(built.scope), average=built.average, prune=prune, visual_tokens=visual,
                  early_exit=early, file=file)
    if isinstance(built, _PaperFile):
        return PaperSpace(modes=_strings(built.mode), skip_interval=_int_choice(built.skip_interval),
                          start_layer=_int_choice(built.start_layer),
                          end_layer=None if built.end_layer is None else _int_choice(built.end_layer), **common)
    layers: LayerRange | tuple[int, ...]
    if isinstance(built.layers, list):
        layers = tuple(built.layers)
    else:
        layers = LayerRange(built.layers.get("from", 1), built.layers.get("to", -2))
    return PerLayerSpace(layers=layers, ops=_strings(built.ops), **common)


def _with_hint(problem: Problem, kind: str) -> Problem:
    """Say where a setting of the other kind belongs, and how YAML read an unquoted 2:4."""
    rule = problem.rule
    unknown = rule.startswith("is not a known setting here")
    if unknown and kind == "per_layer" and problem.key in _PAPER_ONLY:
        rule += "; it is a setting of `kind: paper` spaces: add `kind: paper` to use it"
    elif unknown and kind == "paper" and problem.key in _PER_LAYER_ONLY:
        rule += "; it is a setting of `kind: per_layer` spaces (paper spaces choose layers by start_layer, " \
                "end_layer and skip_interval)"
    if problem.key.startswith("prune.structure") and f"integer {_SEXAGESIMAL_2_4}" in rule:
        rule += "; YAML reads an unquoted 2:4 as the base-60 number 124: quote it, \"2:4\""
    return problem if rule == problem.rule else dataclasses.replace(problem, rule=rule)


assert set(PRUNE_CHOICES) - {NO_PRUNE} == {"magnitude", "wanda"}
assert set(PRUNE_STRUCTURES) == {"unstructured", "2:4", "ffn_channels"}
