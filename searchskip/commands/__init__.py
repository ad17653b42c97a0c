"""One module per command-line verb; see :mod:`searchskip.cli` for the contract.

Every verb module exposes ``register(subparsers)``: it adds its parser with
``subparsers.add_parser(...)`` and sets ``func`` via ``set_defaults(func=run)``, where
``run(args)`` returns an exit code (or ``None`` for 0) and raises
:class:`~searchskip.errors.SearchSkipError` for anything the user can fix.

The helpers below print through rich without markup, emoji or wrapping, so messages
with brackets (``data.splits.test[0]``) or long dotted keys come out verbatim.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def _console(stderr: bool) -> Console:
    # Built per call: sys.stdout/sys.stderr may be replaced (tests, redirection).
    return Console(stderr=stderr, soft_wrap=True, highlight=False, emoji=False, markup=False)


def print_out(message: str, style: str | None = None) -> None:
    """Print a line to standard output."""
    _console(stderr=False).print(Text(message, style=style or ""))


def print_error(message: str, style: str | None = "red") -> None:
    """Print a line to standard error (red on a terminal)."""
    _console(stderr=True).print(Text(message, style=style or ""))
