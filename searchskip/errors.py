"""The one place where searchskip's exception types live.

Every error a user can cause (bad YAML, a missing file, an unsupported model,
data without the needed columns, an invalid plan) is a :class:`SearchSkipError`.
The command line prints its message and exits with code 2, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input: where (file and dotted key) and which rule it breaks."""

    file: str | None
    key: str
    rule: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.rule}"


class SearchSkipError(Exception):
    """Base class of every error caused by user input; the CLI maps it to exit code 2."""

    exit_code = 2


class ConfigError(SearchSkipError, ValueError):
    """One or more problems in a configuration file (job, space or plan), reported together."""

    def __init__(self, problems: Iterable[Problem] | str, file: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(file, "", problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class DataError(SearchSkipError, ValueError):
    """A dataset cannot be loaded or does not fit the VQA schema."""


class ModelError(SearchSkipError, ValueError):
    """A model cannot be loaded safely, or its family is not supported."""


class OfflineError(SearchSkipError, OSError):
    """Something needed the network (a hub model or dataset) and none was reachable."""


class FileSystemError(SearchSkipError, OSError):
    """The file system refused a write or a read (read-only, disk full, no permission, ...).

    The message names the path, the system's reason and what was kept; ``errno`` and ``filename``
    are those of the underlying :class:`OSError`."""

    def __init__(self, message: str, cause: OSError | None = None):
        super().__init__(message)
        self.message = message
        if cause is not None:
            self.errno, self.filename = cause.errno, cause.filename

    def __str__(self) -> str:
        return self.message


def in_job(job_file: str, err: Exception, key: str = "") -> Exception:
    """``err`` (a :class:`~searchskip.errors.SearchSkipError` raised while loading what a job names:
    its model or data) again, its message prefixed with the job file and, when the message does
    not start with a dotted key of its own, with ``key``; so the one line a user sees names the
    file, the key and the rule. ConfigError problems without a file get ``job_file``."""
    if isinstance(err, ConfigError):
        problems = [p if p.file else Problem(job_file, p.key or key, p.rule) for p in err.problems]
        return ConfigError(problems)
    message = str(err)
    head = message.split(":", 1)[0]
    if key and not (head.startswith(("model.", "data.")) or head == key):
        message = f"{key}: {message}"
    if not message.startswith(f"{job_file}: "):
        message = f"{job_file}: {message}"
    return type(err)(message)


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message (its type's name when it has none), at most ``limit``
    characters: what one-line messages quote of a library's multi-line error."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
