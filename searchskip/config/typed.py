"""Build typed, frozen config dataclasses from parsed YAML, collecting every problem: :func:`build`.

:func:`build` reads a dataclass's type annotations and converts nested dicts into instances. It
knows nested dataclasses, ``X | None``, ``Literal[...]``, ``int`` (a boolean is not an integer),
``float`` (integers accepted, NaN/inf refused), ``str``, ``bool``, ``Mapping[str, X]``/``dict``,
``Mapping[int, X]`` (integer keys such as layer indices), ``list[X]``, ``tuple[X, ...]`` and
``Any``. In a union of several options, a mapping, list or string value that only one option can
take (``float | Mapping[int, float]``) is reported with that option's detailed problems. Unknown
keys get a did-you-mean suggestion, required fields (no default) must be present, and fields
with ``metadata={"internal": True}`` cannot be set from a file. Jobs
(:mod:`searchskip.config.loader`), plans (:mod:`searchskip.plan`) and search spaces
(:mod:`searchskip.search.space`) are all built by it; it imports none of them.

Rules a type cannot express are *checks*, passed as ``checks={Class: [rule, ...]}`` (one list
per dataclass, at any depth). A rule receives the built instance and yields ``(relative dotted
key, rule text)`` pairs; :func:`build` prefixes the instance's own dotted key. When some fields
of an instance failed to build, its rules still run on a partial view that holds the fields that
did build (and the defaults of those left out); a rule that reads a failed field is skipped.
:func:`at_least` and :func:`above` make the common numeric rules, phrased like optuna's: the
rule first, then the values (``size >= 1`` must hold, but got ``size=-3``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from searchskip.config.yaml_io import StrictSafeLoader, describe
from searchskip.errors import Problem

__all__ = ["Check", "Checks", "build", "at_least", "above", "did_you_mean"]

T = TypeVar("T")

Check = Callable[[Any], Iterable[tuple[str, str]]]
"""A rule: takes a built instance (or a partial view of one), yields ``(relative dotted key, rule text)``."""

Checks = Mapping[type, Union[Check, Sequence[Check]]]
"""Rules per dataclass, for :func:`build`."""

_INVALID: Any = object()
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence)


# --------------------------------------------------------------------------------------
# Generic builder
# --------------------------------------------------------------------------------------


def build(
    cls: type[T],
    data: Any,
    file: str | None,
    key_prefix: str = "",
    *,
    checks: Checks | None = None,
) -> tuple[T | None, list[Problem]]:
    """Build ``cls`` from plain ``data`` (as read from YAML); return ``(instance, problems)``.

    The instance is ``None`` whenever ``problems`` is non-empty. ``file`` and ``key_prefix``
    only label the problems (``key_prefix="search"`` when ``data`` is a section of a larger file).
    ``checks`` maps dataclasses (at any depth) to their rules; see the module docstring.
    """
    builder = _Builder(cls, file, key_prefix, checks or {})
    value = builder.convert(cls, data, key_prefix)
    if builder.problems or value is _INVALID:
        return None, builder.problems
    return value, builder.problems


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    """How a type is named in a rule: ``an integer``, ``a string``, ``a mapping``..."""
    if tp is Any:
        return "any value"
    if _is_dataclass_type(tp):
        return "a mapping of settings"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp in _MAPPINGS or origin in _MAPPINGS:
        return "a mapping"
    if tp in _SEQUENCES or origin in _SEQUENCES or tp is tuple or origin is tuple:
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, repr(tp))


def _show(value: Any) -> str:
    """A literal value as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:
        return lowered[word.lower()]
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    if hits:
        return lowered[hits[0]]
    prefixed = [c for c in candidates if len(word) >= 2 and c.lower().startswith(word.lower())]
    return prefixed[0] if len(prefixed) == 1 else None


def _field_paths(cls: type, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """``(field name, dotted path)`` of every public field reachable from ``cls``."""
    if depth > 8:
        return
    for f in _public_fields(cls):
        path = _join(prefix, f.name)
        yield f.name, path
        tp = _hints(cls)[f.name]
        for arg in (tp, *typing.get_args(tp)):
            if _is_dataclass_type(arg):
                yield from _field_paths(arg, path, depth + 1)


class _Unavailable(Exception):
    """A rule read a field that failed to build (deliberately not an AttributeError)."""


class _Partial:
    """Read-only stand-in for an instance whose fields did not all build: failed fields raise."""

    def __init__(self, cls: type, values: dict[str, Any]):
        self.__dict__["_cls"] = cls
        self.__dict__["_values"] = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["_values"]
        if name in values:
            return values[name]
        raise _Unavailable(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __repr__(self) -> str:
        return f"partial {self.__dict__['_cls'].__name__}({self.__dict__['_values']!r})"


class _Builder:
    def __init__(self, root: type, file: str | None, root_key: str, checks: Checks):
        self.root = root
        self.root_key = root_key
        self.file = file
        self.checks = checks
        self.problems: list[Problem] = []

    def problem(self, key: str, rule: str) -> Any:
        self.problems.append(Problem(self.file, key, rule))
        return _INVALID

    def mismatch(self, key: str, expected: str, value: Any, nullable: bool, hint: str = "") -> Any:
        expected += " or null" if nullable else ""
        return self.problem(key, f"must be {expected}, but got {describe(value)}{hint}")

    # ---- dispatch -----------------------------------------------------------------
    def convert(self, tp: Any, value: Any, key: str, nullable: bool = False) -> Any:
        if tp is Any or tp is object:
            return value
        if _is_dataclass_type(tp):
            return self.dataclass(tp, value, key, nullable)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (Union, types.UnionType):
            return self.union(args, value, key)
        if origin is Literal:
            return self.literal(args, value, key, nullable)
        if tp in _MAPPINGS or origin in _MAPPINGS:
            key_type = args[0] if len(args) == 2 else str
            return self.mapping(args[1] if len(args) == 2 else Any, value, key, nullable, key_type)
        if tp in _SEQUENCES or origin in _SEQUENCES:
            return self.sequence(args[0] if args else Any, value, key, nullable)
        if tp is tuple or origin is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                items = self.sequence(args[0] if args else Any, value, key, nullable)
                return items if items is _INVALID else tuple(items)
            raise TypeError(f"build() supports only tuple[X, ...], not {tp!r}")
        if tp is type(None):
            return None if value is None else self.mismatch(key, "null", value, False)
        if tp in (bool, int, float, str):
            return self.scalar(tp, value, key, nullable)
        raise TypeError(f"build() cannot build a field annotated {tp!r} (at {key or 'top level'})")

    # ---- structured values -----------------------------------------------------------
    def dataclass(self, cls: type, value: Any, key: str, nullable: bool) -> Any:
        if not isinstance(value, dict):
            hint = "; leave the key out to use the defaults" if value is None and key else ""
            return self.mismatch(key, "a mapping of settings", value, nullable, hint)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        public = [f.name for f in _public_fields(cls)]
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        failed: set[str] = set()
        ok = True
        for name, item in value.items():
            if not isinstance(name, str):
                self.bad_key(key, name)
                ok = False
                continue
            sub = _join(key, name)
            field = fields.get(name)
            if field is None:
                self.unknown_key(sub, name, public)
                ok = False
            elif field.metadata.get("internal"):
                self.problem(sub, "is set by searchskip itself and cannot be set in a file; remove it")
                ok = False
            else:
                converted = self.convert(hints[name], item, sub)
                if converted is _INVALID:
                    failed.add(name)
                else:
                    kwargs[name] = converted
        for name in public:
            f = fields[name]
            if name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.problem(_join(key, name), "is required but missing")
                failed.add(name)
        if ok and not failed:
            try:
                instance = cls(**kwargs)
            except (TypeError, ValueError) as e:  # a __post_init__ refusing the values
                return self.problem(key, str(e))
            self.run_checks(cls, instance, key)
            return instance
        view = dict(kwargs)
        for f in dataclasses.fields(cls):
            if f.name not in view and f.name not in failed:
                if f.default is not dataclasses.MISSING:
                    view[f.name] = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    view[f.name] = f.default_factory()
        self.run_checks(cls, _Partial(cls, view), key)
        return _INVALID

    def run_checks(self, cls: type, obj: Any, key: str) -> None:
        rules = self.checks.get(cls)
        if rules is None:
            return
        for rule in [rules] if callable(rules) else rules:
            try:
                found = list(rule(obj))
            except _Unavailable:  # the rule reads a field that failed to build
                continue
            except (OSError, ValueError) as e:  # a path the file system cannot look up (too long, a NUL byte)
                found = [("", f"names a path that cannot be looked up: {getattr(e, 'strerror', None) or e}"
                              + (f" ({e.filename!r})" if getattr(e, "filename", None) else ""))]
            for rel, text in found:
                self.problem(_join(key, rel) if rel else key, text)

    def bad_key(self, key: str, name: Any, expected: str = "strings") -> Any:
        hint = ""
        if expected == "strings" and isinstance(name, bool):
            hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans; quote the key)"
        elif expected == "strings" and name is None:
            hint = " (YAML reads an unquoted `null` or `~` as null; quote the key)"
        elif expected == "integers" and isinstance(name, str) and re.fullmatch(r"\s*[-+]?\d+\s*", name):
            hint = " (remove the quotes to write a number)"
        where = key or "the top level"
        return self.problem(key, f"keys must be {expected}, but {where} has the key {describe(name)}{hint}")

    def unknown_key(self, sub: str, name: str, allowed: list[str]) -> Any:
        rule = "is not a known setting here"
        guess = _did_you_mean(name, allowed)
        if guess is not None:
            rule += f"; did you mean {guess!r}?"
        else:
            elsewhere = [p for n, p in _field_paths(self.root, self.root_key) if n == name]
            if elsewhere:
                rule += f"; did you mean {elsewhere[0]!r}?"
        rule += f" (known here: {', '.join(allowed)})"
        return self.problem(sub, rule)

    def mapping(self, value_type: Any, value: Any, key: str, nullable: bool, key_type: Any = str) -> Any:
        """A mapping with string keys; with integer keys (no booleans) when annotated ``Mapping[int, X]``."""
        if not isinstance(value, dict):
            return self.mismatch(key, "a mapping", value, nullable)
        int_keys = key_type is int
        out: dict[Any, Any] = {}
        ok = True
        for name, item in value.items():
            if int_keys and (not isinstance(name, int) or isinstance(name, bool)):
                self.bad_key(key, name, "integers")
                ok = False
                continue
            if not int_keys and not isinstance(name, str):
                self.bad_key(key, name)
                ok = False
                continue
            converted = self.convert(value_type, item, _join(key, name))
            if converted is _INVALID:
                ok = False
            else:
                out[name] = converted
        return out if ok else _INVALID

    def sequence(self, item_type: Any, value: Any, key: str, nullable: bool) -> Any:
        if not isinstance(value, list):
            return self.mismatch(key, "a list", value, nullable)
        out = [self.convert(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
        return _INVALID if any(item is _INVALID for item in out) else out

    def union(self, args: tuple[Any, ...], value: Any, key: str) -> Any:
        none_type = type(None)
        if value is None and none_type in args:
            return None
        options = [a for a in args if a is not none_type]
        nullable = len(options) < len(args)
        if len(options) == 1:
            return self.convert(options[0], value, key, nullable)
        shaped = [o for o in options if _takes_shape_of(o, value)]
        if len(shaped) == 1:  # only one option can take a value of this shape: report its problems in detail
            return self.convert(shaped[0], value, key, nullable)
        for option in options:  # first option that builds without a problem wins
            trial = _Builder(self.root, self.file, self.root_key, self.checks)
            converted = trial.convert(option, value, key)
            if not trial.problems:
                return converted
        return self.mismatch(key, " or ".join(_type_name(a) for a in options), value, nullable)

    # ---- scalars -----------------------------------------------------------------------
    def literal(self, allowed: tuple[Any, ...], value: Any, key: str, nullable: bool) -> Any:
        for option in allowed:
            if type(option) is type(value) and option == value:
                return value
        rule = f"must be one of {', '.join(_show(a) for a in allowed)}"
        rule += " or null" if nullable else ""
        rule += f", but got {describe(value)}"
        texts = [a for a in allowed if isinstance(a, str)]
        if isinstance(value, str) and texts:
            guess = _did_you_mean(value, texts)
            if guess is not None:
                rule += f"; did you mean {guess!r}?"
        return self.problem(key, rule)

    def scalar(self, tp: type, value: Any, key: str, nullable: bool) -> Any:
        if tp is bool:
            return value if isinstance(value, bool) else self.mismatch(key, "true or false", value, nullable)
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            return self.mismatch(key, "an integer", value, nullable, _quote_hint(value, int))
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return self.mismatch(key, "a number", value, nullable, _quote_hint(value, float))
            if not math.isfinite(value):
                return self.mismatch(key, "a finite number", value, nullable)
            return float(value)
        # str
        if isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, (bool, int, float)):
            hint = "; quote it if you meant the text (YAML reads unquoted numbers, yes/no and true/false otherwise)"
        return self.mismatch(key, "a string", value, nullable, hint)


def _takes_shape_of(tp: Any, value: Any) -> bool:
    """Whether a union option is the one meant for a mapping, list or string ``value`` (False for other values)."""
    origin = typing.get_origin(tp)
    if isinstance(value, float) and not math.isfinite(value):  # NaN/inf: the number option says "finite"
        return tp is float
    if isinstance(value, dict):
        return _is_dataclass_type(tp) or tp in _MAPPINGS or origin in _MAPPINGS
    if isinstance(value, list):
        return tp in _SEQUENCES or origin in _SEQUENCES or tp is tuple or origin is tuple
    if isinstance(value, str):
        return tp is str or (origin is Literal and any(isinstance(a, str) for a in typing.get_args(tp)))
    return False


def _quote_hint(value: Any, tp: type) -> str:
    """For a string where a number is expected: "remove the quotes" when the text would be a number
    in YAML without them (so it was quoted), else how YAML spells the number (``inf`` is text)."""
    if not isinstance(value, str):
        return ""
    try:
        tp(value)
    except ValueError:
        return ""
    unquoted = _plain_scalar(value)
    if isinstance(unquoted, (int, float)) and not isinstance(unquoted, bool):
        return "; remove the quotes to write a number"
    return "; YAML reads this as text, not as a number (numbers are written like 3, 0.5, 1e-9 or .inf)"


def _plain_scalar(text: str) -> Any:
    """What YAML reads ``text`` as when it is written unquoted (``None`` when it cannot)."""
    try:
        return yaml.load(text, Loader=StrictSafeLoader)
    except yaml.YAMLError:
        return None


def at_least(name: str, low: int, note: str = ""):
    """A rule for :func:`build`'s ``checks``: field ``name`` must be >= ``low`` (``None`` passes).

    The message states the rule, then the value, optuna style:
    "`size >= 1` must hold, but got size=-3"; ``note`` goes after the rule.
    """

    def rule(obj: Any) -> Iterator[tuple[str, str]]:
        value = getattr(obj, name)
        if value is not None and value < low:
            yield name, f"`{name} >= {low}` must hold{note}, but got {name}={value}"

    rule.__name__ = f"at_least_{name}_{low}"
    return rule


def above(name: str, low: float, note: str = ""):
    """A rule for :func:`build`'s ``checks``: field ``name`` must be > ``low`` (``None`` passes; NaN
    fails). The message is optuna style, like :func:`at_least`'s: "`timeout_s > 0` must hold, but got
    timeout_s=-5.0"."""

    def rule(obj: Any) -> Iterator[tuple[str, str]]:
        value = getattr(obj, name)
        if value is not None and not value > low:
            yield name, f"`{name} > {low}` must hold{note}, but got {name}={value!r}"

    rule.__name__ = f"above_{name}_{low}"
    return rule


did_you_mean = _did_you_mean
"""Public name of the did-you-mean helper (plans and spaces suggest keys and ops with it)."""
