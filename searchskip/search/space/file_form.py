"""The file form of a space: the dataclasses :func:`searchskip.config.typed.build` reads a space
file into (one per kind, :class:`_PerLayerFile` and :class:`_PaperFile`), the rules that check
them (:data:`_CHECKS`, each problem with its dotted key), the hints added to problems
(:func:`_with_hint`), and the conversion of the choices every kind shares to the public form
(:func:`_shared_choices`); each kind's module builds the rest of its space.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Union

from searchskip.config.typed import did_you_mean as _did_you_mean
from searchskip.errors import Problem
from searchskip.plan import (
    KEEP,
    OPS,
    SCOPES,
    PARALLEL_BLOCKS,
    PRUNE_TARGETS,
    RANK_ATTENTION,
    SCOPE_ALL,
    EXIT_SCOPES,
    CalibrationSpec,
    ExitScope,
    OpName,
    PruneStructure,
    PruneTarget,
    ScopeName,
    VisualRank,
)
from searchskip.plan.file_form import _CHECKS as _PLAN_CHECKS, _targets_listed
from searchskip.plan.names import _SEXAGESIMAL_2_4, _choice_rule
from searchskip.search.space.choices import (
    EarlyExitChoices,
    FloatChoice,
    FloatRange,
    IntChoice,
    IntRange,
    PruneChoices,
    VisualTokensChoices,
)
from searchskip.search.space.names import (
    _DECIMALS,
    _KEEP_ALL,
    _LAYER_RANGE_KEYS,
    _PAPER_ONLY,
    _PER_LAYER_ONLY,
    _TWO_FOUR,
    NO_EXIT,
    NO_PRUNE,
    SCOPE_SEP,
    SPACE_VERSION,
    NoExit,
    PruneChoice,
    SpaceKind,
    split_op_choice,
)


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
    ops: str | list[str]
    """Op names, each optionally with its own scope: ``skip_block@visual`` (checked by :func:`_op_choices`)."""
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


def _op_choices(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    """Each entry is an op, or ``op@scope``: an op other than keep, with a token scope of its own."""
    for key, value in _items("ops", space.ops):
        op, scope = split_op_choice(value)
        if op not in OPS:
            yield key, _choice_rule(op, OPS) + (f" (in {value!r}; an op may carry its own scope: op{SCOPE_SEP}scope)"
                                                if scope is not None else "")
        elif op == KEEP and scope is not None:
            yield key, f"'keep' takes no scope (it runs the layer as it is), but got {value!r}; write 'keep'"
        elif scope is not None and scope not in SCOPES:
            yield key, f"the scope after '{SCOPE_SEP}' in {value!r} " + _choice_rule(scope, SCOPES)


def _op_scopes_once(space: _PerLayerFile) -> Iterator[tuple[str, str]]:
    """No (op, scope) is offered twice: as ``op`` under a ``scope`` value and as ``op@scope``."""
    scopes = space.scope if isinstance(space.scope, list) else [space.scope]
    bare = {value for _, value in _items("ops", space.ops) if split_op_choice(value)[1] is None}
    for key, value in _items("ops", space.ops):
        op, scope = split_op_choice(value)
        if scope is not None and op in bare and scope in scopes:
            yield key, (f"offers {op} with scope {scope!r} twice: as {op!r} (with scope {scope!r} among `scope`) and "
                        f"as {value!r}; remove one")


def _average_needs_pairs(name: str, ops: Any, average: bool) -> Iterator[tuple[str, str]]:
    ops = ops if isinstance(ops, list) else [ops]
    if average and PARALLEL_BLOCKS not in {split_op_choice(op)[0] for op in ops if isinstance(op, str)}:
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
    _PerLayerFile: [_version, _op_list, _op_choices, _op_scopes_once, _scope_list, _average_ops, _layer_keys, _layer_order],
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


# ---- file form -> public form -----------------------------------------------------------


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


def _shared_choices(built: _PerLayerFile | _PaperFile, file: str | None) -> dict[str, Any]:
    """The keyword arguments every kind of :class:`~searchskip.search.space.Space` takes, from
    either file form: ``scopes``, ``average``, the prune, visual_tokens and early_exit choices, ``file``."""
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
    return dict(scopes=_strings(built.scope), average=built.average, prune=prune, visual_tokens=visual,
                early_exit=early, file=file)


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

