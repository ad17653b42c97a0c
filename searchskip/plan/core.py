"""The :class:`Plan` class: a frozen, canonical, hashable compression plan with its readers
(:meth:`Plan.load`, :meth:`Plan.from_dict`, :meth:`Plan.from_json`, ...), writers (:meth:`Plan.to_dict`,
:meth:`Plan.to_yaml`, :meth:`Plan.key`, ...), the questions later code asks of it, the checks that
need the model's layer count (:meth:`Plan.validate`) and the paper's interval plans
(:meth:`Plan.from_pattern`). The format is described in :mod:`searchskip.plan`."""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from searchskip.config.yaml_io import parse_yaml_text, read_yaml
from searchskip.errors import ConfigError, Problem
from searchskip.plan.file_form import _canonical, _check_data, _layer_pairs, _PlanFile, _raw_dict
from searchskip.plan.names import KEEP, OPS, PARALLEL_BLOCKS, PLAN_VERSION, SCOPE_ALL, SCOPES, ScopeName, _choice_rule
from searchskip.plan.parts import DropSpec, EarlyExitSpec, LayerOp, PruneSpec, VisualTokensSpec
from searchskip.plan.yaml_form import _flow, _json_keys, _PlanDumper


@dataclass(frozen=True)
class Plan:
    """A compression plan (format version :data:`PLAN_VERSION`); see :mod:`searchskip.plan`.

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
        built, problems = _checked(_raw_dict(self.scope, pairs, self.drop, self.prune, self.visual_tokens,
                                             self.early_exit))
        if dupes or problems or built is None:
            raise ConfigError(dupes + list(problems))
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


_PLAIN_ATOMS = (str, bool, int, type(None))


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of plain data only (``repr`` then writes it back exactly)."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _PLAIN_ATOMS:
            continue
        if t is float:
            if not math.isfinite(v):
                return False
        elif t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        elif t in (list, tuple):
            stack.extend(v)
        else:
            return False
    return True


def _checked(data: dict[str, Any]) -> tuple[Any, tuple[Problem, ...]]:
    """:func:`_check_data` of a plan built in code, remembered for plain data: a search builds the
    same plans again and again (every proposal its budget fit prices), and checking one is most
    of building it."""
    if _plain(data):
        return _checked_repr(repr(data))
    built, problems = _check_data(data, None)
    return built, tuple(problems)


@functools.lru_cache(maxsize=4096)
def _checked_repr(text: str) -> tuple[Any, tuple[Problem, ...]]:
    built, problems = _check_data(ast.literal_eval(text), None)
    return built, tuple(problems)
