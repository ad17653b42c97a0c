"""The ``searchskip`` command line (also ``python -m searchskip``).

Each verb lives in its own module ``searchskip/commands/<module>.py`` exposing
``register(subparsers)``, which adds the verb's parser and sets ``func`` (a callable
taking the parsed arguments and returning an exit code, or ``None`` for 0) with
``parser.set_defaults(func=...)``. :data:`VERBS` lists those modules, in help order.

Adding a verb:

1. write ``searchskip/commands/<module>.py`` with ``register(subparsers)``; keep heavy
   imports (torch, transformers, datasets) inside the function that runs the verb, so
   that ``searchskip --help`` and ``searchskip validate`` stay fast;
2. add ``"<module>"`` to :data:`VERBS`.

Exit codes: 0 success; 2 any :class:`~searchskip.errors.SearchSkipError` (message only,
no traceback) and argparse usage errors; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

from searchskip import __version__
from searchskip.commands import print_error
from searchskip.errors import SearchSkipError

VERBS: tuple[str, ...] = ("validate", "eval", "flops", "search", "resume", "ls", "export", "finetune")
"""Modules under :mod:`searchskip.commands`, one per verb, in the order ``--help`` lists them."""

USAGE_ERROR = 2
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every verb of :data:`VERBS` registered."""
    parser = argparse.ArgumentParser(
        prog="searchskip",
        description="Search which computations of a multimodal LLM to skip under a FLOP budget.",
    )
    parser.add_argument("--version", action="version", version=f"searchskip {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for module in VERBS:
        importlib.import_module(f"searchskip.commands.{module}").register(subparsers)
    return parser


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else USAGE_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: usage errors exit 2, --help and --version exit 0
            return _exit_code(e.code)
        func = getattr(args, "func", None)
        if func is None:
            print_error(parser.format_usage().rstrip(), style=None)
            print_error("error: no command given; see `searchskip --help` for the commands")
            return USAGE_ERROR
        return _exit_code(func(args))
    except SearchSkipError as e:
        print_error(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:  # on a line of its own: the terminal's "^C" echo has no line end
        print_error("\ninterrupted")
        return INTERRUPTED
