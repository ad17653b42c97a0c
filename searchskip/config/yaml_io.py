"""Read configuration YAML safely and strictly.

Only safe loading is ever used: :class:`StrictSafeLoader` is a :class:`yaml.SafeLoader`
that additionally refuses, before anything is constructed,

* duplicate mapping keys (plain YAML silently keeps the last one),
* tags outside plain YAML (``!!python/object/apply:...`` and any custom ``!tag``),
* aliases that contain themselves, or that expand to an absurd number of values.

It reads numbers with an exponent but no dot (``1e-9``, ``-2E5``) as numbers, as YAML 1.2
does (YAML 1.1, and so plain PyYAML, reads them as strings).

:func:`read_yaml` turns every failure (missing file, a FIFO, device, folder or other file that
is not a regular one, a file over :data:`MAX_FILE_BYTES`, binary or non-UTF-8 content, a control
character, empty file, syntax error, the checks above, a top level that is not a mapping) into
a :class:`ConfigError` whose problems name the file, the dotted key where known, and the rule.
It never blocks on a FIFO and never reads more than :data:`MAX_FILE_BYTES` + 1 bytes.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from searchskip.errors import ConfigError, Problem

__all__ = ["MAX_FILE_BYTES", "MAX_VALUES", "StrictSafeLoader", "StrictYAMLError", "describe", "path_state",
           "read_config_bytes", "read_yaml", "parse_yaml_text"]

MAX_VALUES = 200_000
"""Most values a document may expand to once aliases are followed (guards against alias bombs)."""

MAX_FILE_BYTES = 1 << 20
"""Most bytes a configuration file (job, space, plan) may hold: 1 MiB, far above any real one."""

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
    :meth:`construct_document`, and raise :class:`StrictYAMLError`. Plain scalars such as
    ``1e-9`` are numbers (YAML 1.2), not strings.
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


# YAML 1.2 numbers with an exponent and no dot (1e-9, +2E5, .5e3), which YAML 1.1 reads as strings;
# the forms with a dot and a signed exponent are YAML 1.1 floats already. Added to this loader only.
StrictSafeLoader.add_implicit_resolver(
    _YAML_PREFIX + "float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


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


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind_of(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file (``None`` for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def path_state(path: str | Path) -> str | None:
    """Why ``path`` is not a readable regular file, as the end of a rule ("does not exist",
    "is a directory", "is a named pipe (FIFO)", ...), or ``None`` when it is a regular file.
    Never opens the file (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        return f"cannot be read: {getattr(e, 'strerror', None) or e}"
    kind = _kind_of(mode)
    return None if kind is None else f"is {kind}"


def read_config_bytes(path: str | Path, limit: int | None = None) -> bytes:
    """The bytes of the configuration file ``path``; :class:`ConfigError` unless it is a regular
    file of at most ``limit`` bytes (default :data:`MAX_FILE_BYTES`). Opened without blocking (a
    FIFO is refused, not waited on), and never more than ``limit + 1`` bytes are read, whatever
    size the file claims (``/dev/zero`` is refused, a growing file is not read forever)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    file = str(path)
    p = Path(path)
    where = "" if p.is_absolute() else f" (looked for {p.absolute()})"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _error(file, f"file does not exist{where}") from None
    except (OSError, ValueError) as e:
        raise _error(file, f"cannot be read: {getattr(e, 'strerror', None) or e}") from None
    try:
        info = os.fstat(fd)
        kind = _kind_of(info.st_mode)
        if kind is not None:
            raise _error(file, f"is {kind}, not a regular file; expected a YAML file")
        if info.st_size > limit:
            raise _too_big(file, f"{info.st_size} bytes", limit)
        chunks, size = [], 0
        while size <= limit:  # the file may grow while it is read: stop one byte past the limit
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise _too_big(file, f"more than {limit} bytes", limit)
        return b"".join(chunks)
    except OSError as e:
        raise _error(file, f"cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _too_big(file: str, size: str, limit: int) -> ConfigError:
    return _error(file, f"is {size}, larger than the {limit} bytes a configuration file may hold; "
                        "is it the right file?")


def read_yaml(path: str | Path) -> Any:
    """Read one YAML file whose top level must be a mapping; raise :class:`ConfigError` otherwise.

    Returns the plain data (dicts, lists, strings, numbers, booleans, None; dates and
    binary only where the file spells them so) for :func:`searchskip.config.loader.build`.
    The file is read by :func:`read_config_bytes` (regular files up to :data:`MAX_FILE_BYTES`).
    """
    file = str(path)
    raw = read_config_bytes(path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _error(file, "is UTF-16 text; save it as UTF-8")
    if b"\x00" in raw:
        raise _error(file, f"is binary (a NUL byte at offset {raw.index(bytes(1))}), not YAML text; is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _error(file, f"is not UTF-8 text (undecodable byte at offset {e.start}); save it as UTF-8") from None
    return parse_yaml_text(text, file)


def _reader_rule(error: yaml.reader.ReaderError, text: str) -> str:
    """A control character (or other character YAML does not allow), with its line and column."""
    position = error.position if isinstance(error.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    code = error.character if isinstance(error.character, int) else 0
    escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return (f"contains the character U+{code:04X} at line {line}, column {column}, which YAML does not allow "
            f"(a control character); remove it, or write it as the escape \"{escape}\" inside a double-quoted string")


def parse_yaml_text(text: str, file: str | None = None) -> Any:
    """Parse YAML text with the same strict rules as :func:`read_yaml` (which calls it for files);
    ``file`` labels the problems. The top level must be a mapping."""
    if not text.strip():
        raise _error(file, "is empty; expected a mapping of settings such as `name: my-job`")

    try:
        loader = StrictSafeLoader(text)  # checks every character of the text first
    except yaml.reader.ReaderError as e:
        raise _error(file, _reader_rule(e, text)) from None
    failure: ConfigError | None = None
    try:
        data = loader.get_single_data()
    except StrictYAMLError as e:
        failure = ConfigError([Problem(file, key, rule) for key, rule in e.problems])
    except yaml.MarkedYAMLError as e:
        failure = _error(file, _syntax_rule(e))
    except yaml.reader.ReaderError as e:
        failure = _error(file, _reader_rule(e, text))
    except yaml.YAMLError as e:
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
