"""Read configuration YAML safely and strictly.

Only safe loading is ever used: :class:`StrictSafeLoader` is a :class:`yaml.SafeLoader`
that additionally refuses, before anything is constructed,

* duplicate mapping keys (plain YAML silently keeps the last one),
* tags outside plain YAML (``!!python/object/apply:...`` and any custom ``!tag``),
* aliases that contain themselves, or that expand to an absurd number of values.

:func:`read_yaml` turns every failure (missing file, empty file, syntax error, the
checks above, a top level that is not a mapping) into a :class:`ConfigError` whose
problems name the file, the dotted key where known, and the rule.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from searchskip.errors import ConfigError, Problem

__all__ = ["MAX_VALUES", "StrictSafeLoader", "StrictYAMLError", "describe", "read_yaml"]

MAX_VALUES = 200_000
"""Most values a document may expand to once aliases are followed (guards against alias bombs)."""

_YAML_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _YAML_PREFIX + "merge"
_PLAIN = "mappings, lists, strings, numbers, booleans and null"


class StrictYAMLError(yaml.YAMLError):
    """Raised by :class:`StrictSafeLoader`; ``problems`` holds ``(dotted key, rule)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {r}" if k else r for k, r in problems))


class StrictSafeLoader(yaml.SafeLoader):
    """A :class:`yaml.SafeLoader` that checks the composed node tree before constructing it.

    Works with ``yaml.load(text, Loader=StrictSafeLoader)`` too: the checks run in
    :meth:`construct_document`, and raise :class:`StrictYAMLError`.
    """

    def construct_document(self, node: Node) -> Any:
        problems = self.find_problems(node)
        if problems:
            raise StrictYAMLError(problems)
        return super().construct_document(node)

    def find_problems(self, root: Node) -> list[tuple[str, str]]:
        """Every duplicate key, non-plain tag and recursive alias below ``root``, with dotted keys."""
        problems: list[tuple[str, str]] = []
        sizes: dict[int, int] = {}  # expanded size of each node already walked (aliases share nodes)
        open_nodes: set[int] = set()

        def walk(node: Node, path: str) -> int:
            ident = id(node)
            if ident in sizes:
                return sizes[ident]
            if ident in open_nodes:
                problems.append((path, f"an alias at line {_line(node)} refers to a value that contains it; "
                                       "recursive YAML values are not accepted"))
                return 1
            if node.tag not in self.yaml_constructors or node.tag is None:
                problems.append((path, f"{_tag_rule(node.tag)} (line {_line(node)})"))
            open_nodes.add(ident)
            size = 1
            if isinstance(node, MappingNode):
                first_seen: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == _MERGE_TAG:  # `<<: *base` merges another mapping, keys may repeat
                        size += walk(value_node, path)
                        continue
                    label = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
                    sub = f"{path}.{label}" if path else label
                    size += walk(key_node, sub)
                    if isinstance(key_node, ScalarNode) and key_node.tag in self.yaml_constructors:
                        same = self._key_identity(key_node)
                        line = _line(key_node)
                        if same in first_seen:
                            problems.append((sub, f"duplicate key {label!r}: it appears at line {first_seen[same]} "
                                                  f"and again at line {line}; YAML would silently keep only the "
                                                  "last value, so remove or rename one"))
                        else:
                            first_seen[same] = line
                    size += walk(value_node, sub)
            elif isinstance(node, SequenceNode):
                for index, item in enumerate(node.value):
                    size += walk(item, f"{path}[{index}]")
            open_nodes.discard(ident)
            sizes[ident] = size
            return size

        total = walk(root, "")
        if total > MAX_VALUES:
            problems.append(("", f"the document expands to {total} values through YAML aliases, more than the "
                                 f"{MAX_VALUES} a configuration file may hold (an alias bomb?)"))
        return problems

    def _key_identity(self, key_node: ScalarNode) -> Any:
        """The key as the constructed dict would see it (so `1` and `01` collide, like they would there)."""
        try:
            key = self.construct_object(key_node)
            hash(key)
            return ("value", key)
        except Exception:  # a key that cannot be constructed is reported during construction
            return ("text", key_node.tag, key_node.value)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _tag_rule(tag: str | None) -> str:
    short = "!!" + tag[len(_YAML_PREFIX):] if tag and tag.startswith(_YAML_PREFIX) else str(tag)
    if tag and "python/" in tag:
        return (f"tag {short} is refused: only plain YAML ({_PLAIN}) is accepted, "
                "and Python object tags are never constructed")
    return f"unknown tag {short}: only plain YAML ({_PLAIN}) is accepted"


def describe(value: Any) -> str:
    """A value as a user wrote it in YAML: ``string 'x'``, ``integer 3``, ``boolean true``, ``null``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        if math.isnan(value):
            return "number .nan"
        if math.isinf(value):
            return "number .inf" if value > 0 else "number -.inf"
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bytes):
        return "binary data"
    return f"{type(value).__name__} {value!r}"


def _syntax_rule(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown position"
    what = error.problem or error.context or "syntax error"
    if error.problem and error.context:
        context = error.context
        if error.context_mark and error.problem_mark and error.context_mark.line != error.problem_mark.line:
            context += f" started at line {error.context_mark.line + 1}"
        what += f" ({context})"
    rule = f"invalid YAML at {where}: {what}"
    if "\\t" in rule or "\t" in rule or " tab" in rule:
        rule += "; YAML does not allow tab characters for indentation, indent with spaces"
    return rule


def _error(file: str | None, rule: str, key: str = "") -> ConfigError:
    return ConfigError([Problem(file, key, rule)])


def read_yaml(path: str | Path) -> Any:
    """Read one YAML file whose top level must be a mapping; raise :class:`ConfigError` otherwise.

    Returns the plain data (dicts, lists, strings, numbers, booleans, None; dates and
    binary only where the file spells them so) for :func:`searchskip.config.loader.build`.
    """
    file = str(path)
    p = Path(path)
    where = "" if p.is_absolute() else f" (looked for {p.absolute()})"
    if p.is_dir():
        raise _error(file, "is a directory; expected a YAML file")
    if not p.exists():
        raise _error(file, f"file does not exist{where}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise _error(file, f"cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _error(file, f"is not UTF-8 text (undecodable byte at offset {e.start}); save it as UTF-8") from None
    return parse_yaml_text(text, file)


def parse_yaml_text(text: str, file: str | None = None) -> Any:
    """Parse YAML text with the same strict rules as :func:`read_yaml` (which calls it for files);
    ``file`` labels the problems. The top level must be a mapping."""
    if not text.strip():
        raise _error(file, "is empty; expected a mapping of settings such as `name: my-job`")

    loader = StrictSafeLoader(text)
    failure: ConfigError | None = None
    try:
        data = loader.get_single_data()
    except StrictYAMLError as e:
        failure = ConfigError([Problem(file, key, rule) for key, rule in e.problems])
    except yaml.MarkedYAMLError as e:
        failure = _error(file, _syntax_rule(e))
    except yaml.YAMLError as e:  # reader errors (control characters) carry a position, not a mark
        failure = _error(file, f"is not valid YAML: {e}")
    except RecursionError:
        failure = _error(file, "is nested too deeply to be a configuration file")
    except (ValueError, TypeError, OverflowError) as e:  # e.g. `!!int abc`, `!!float x`
        failure = _error(file, f"has a value YAML cannot convert: {e}")
    finally:
        loader.dispose()
    if failure is not None:
        raise failure
    if data is None:
        raise _error(file, "contains no settings (only comments or null); expected a mapping such as `name: my-job`")
    if not isinstance(data, dict):
        raise _error(file, f"the top level must be a mapping of settings (`key: value` lines), but got {describe(data)}")
    return data
