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


def in_job(job_file: str, err: Exception, key: str = "") -> Exception:
    """``err`` (a :class:`~searchskip.errors.SearchSkipError` raised while loading what a job names:
    its model or data) again, its message prefixed with the job file and, when the message does
    not start with a dotted key of its own, with ``key``; so the one line a user sees names the
    file, the key and the rule. ConfigError problems without a file get ``job_file``."""
    from searchskip.errors import ConfigError, Problem

    if isinstance(err, ConfigError):
        problems = [p if p.file else Problem(job_file, p.key or key, p.rule) for p in err.problems]
        return ConfigError(problems)
    message = str(err)
    head = message.split(":", 1)[0]
    if key and not (head.startswith(("model.", "data.")) or head == key):
        message = f"{key}: {message}"
    if not message.startswith(f"{job_file}: "):
        message = f"{job_file}: {message}"
    new = type(err)(message)
    return new
