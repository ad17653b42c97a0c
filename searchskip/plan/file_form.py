"""The file form of a plan and its checks: the dataclasses :func:`~searchskip.config.typed.build`
reads a plan file into (:class:`_PlanFile`, :class:`_PruneFile`; their fields are :data:`PLAN_KEYS`),
the rules of each part (:data:`_CHECKS`) and the rules across entries run on the raw data
(:class:`_Sketch`), :func:`_check_data` that applies them all, :func:`_raw_dict` that turns
constructor arguments back into the file form, and the canonicalisation (:func:`_canonical`) that
turns a checked file form into a :class:`~searchskip.plan.Plan`'s field values."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from searchskip.config.typed import at_least, build
from searchskip.errors import Problem
from searchskip.plan.names import (
    _SEXAGESIMAL_2_4, KEEP, OPS, PARALLEL_BLOCKS, PLAN_VERSION, PRUNE_TARGETS, RANK_ATTENTION, SCOPE_ALL, SCOPES,
    OpName, PruneMethod, PruneStructure, PruneTarget, ScopeName,
)
from searchskip.plan.parts import (
    CalibrationSpec, DropSpec, EarlyExitSpec, LayerOp, PruneSpec, VisualTokensSpec, effective_rank,
    skips_prompt_attention,
)


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
    """The canonical field values of a plan (see :mod:`searchskip.plan`)."""
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
