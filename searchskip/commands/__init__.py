"""One module per command-line verb; see :mod:`searchskip.cli` for the contract.

Every verb module exposes ``register(subparsers)``: it adds its parser with
``subparsers.add_parser(...)`` and sets ``func`` via ``set_defaults(func=run)``, where
``run(args)`` returns an exit code (or ``None`` for 0) and raises
:class:`~searchskip.errors.SearchSkipError` for anything the user can fix.

The helpers below print through rich without markup, emoji or wrapping, so messages
with brackets (``data.splits.test[0]``) or long dotted keys come out verbatim. An error line
longer than :data:`MAX_LINE` characters (a huge value or key echoed from a file) is shortened
by :func:`clip` to its start and its end, so the file, the key, the rule and any hint remain.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any, Callable

from rich.console import Console
from rich.text import Text


MAX_LINE = 1000
"""Most characters :func:`print_error` prints on one line."""


def clip(line: str, limit: int = MAX_LINE) -> str:
    """``line`` when it has at most ``limit`` characters; else its start and end around a marker
    saying how many characters were left out (the result has about ``limit`` characters)."""
    if len(line) <= limit:
        return line
    head = (limit * 3) // 5
    tail = limit - head
    left_out = len(line) - head - tail
    return f"{line[:head]} [... {left_out} characters left out ...] {line[len(line) - tail:]}"


def _console(stderr: bool) -> Console:
    # Built per call: sys.stdout/sys.stderr may be replaced (tests, redirection).
    return Console(stderr=stderr, soft_wrap=True, highlight=False, emoji=False, markup=False)


def print_out(message: str, style: str | None = None) -> None:
    """Print a line to standard output."""
    _console(stderr=False).print(Text(message, style=style or ""))


def print_error(message: str, style: str | None = "red") -> None:
    """Print a message to standard error (red on a terminal), each line shortened by :func:`clip`."""
    text = "\n".join(clip(line) for line in message.split("\n"))
    _console(stderr=True).print(Text(text, style=style or ""))


def option_type(name: str, tp: type, *rules: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` for a numeric option that sets what a YAML key sets: the text is read as
    ``tp`` (``int`` or ``float``) and held to the same type rule as that key (a number must be finite)
    and to ``rules``, the key's own rule factories (:func:`~searchskip.config.loader.at_least`,
    :func:`~searchskip.config.loader.above`) made for ``name``. A broken rule is argparse's usage
    error: one message, exit code 2."""
    from searchskip.config.typed import build

    def parse(text: str) -> Any:
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if tp is int else 'a number'}, "
                                             f"but got {text!r}") from None
        _, problems = build(tp, value, None)
        broken = [p.rule for p in problems]
        if not broken:
            broken = [text for rule in rules for _, text in rule(SimpleNamespace(**{name: value}))]
        if broken:
            raise argparse.ArgumentTypeError("; ".join(broken))
        return value

    parse.__name__ = name
    return parse
