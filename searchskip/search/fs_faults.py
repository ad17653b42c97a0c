"""A search on a file system that refuses its writes (read-only, full, over quota, no permission):
one message and exit code 2, never a traceback, and nothing already recorded lost.

What keeps the study whole is where it is written: the journal's appends are whole records or
nothing (:func:`~searchskip.search.storage.append_records`), ``run.json`` and the job copy are
replaced in one rename (:mod:`searchskip.search.study_files`), and a journal repair removes its
partial copies. :func:`study_writes` turns the fault itself into a
:class:`~searchskip.errors.FileSystemError` that names the path, the system's reason, what was
kept and how to go on. optuna raises ``AssertionError("Should not reach.")`` over a write that
fails while it records a trial's end (optuna 5.1, ``study/_optimize.py``); the fault is then found
in that error's context.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from searchskip.errors import FileSystemError, SearchSkipError

__all__ = ["FAULTS", "fault_in", "study_writes"]

FAULTS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM})
"""errno values of the file-system faults a user fixes (space, a writable folder, permissions)."""

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def fault_in(exc: BaseException | None) -> OSError | None:
    """The first :class:`OSError` with an errno of :data:`FAULTS` in ``exc`` and its causes/contexts."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FAULTS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _message(fault: OSError, folder: Path) -> str:
    from searchskip.search.storage import JOURNAL_FILE
    from searchskip.search.study import RUN_FILE

    path = fault.filename or folder
    started = (folder / RUN_FILE).is_file()
    again = f"continue with `searchskip resume {folder}`" if started else "run the search again"
    if fault.errno in _FULL:
        kept = (f"Every trial recorded before is kept (the journal {JOURNAL_FILE} holds only whole records)"
                if (folder / JOURNAL_FILE).is_file() else "Nothing half-written is left")
        return f"{path}: could not be written: {fault.strerror}. {kept}; free some space, then {again}."
    if fault.errno == errno.EROFS:
        return (f"{path}: could not be written: {fault.strerror}. Give the job an `outputs:` folder (or --outputs) "
                f"on a writable file system, or make this one writable and {again}.")
    return (f"{path}: {fault.strerror}. Check the permissions of {folder}, or give the job another `outputs:` "
            f"folder (or --outputs), then {again}.")


@contextlib.contextmanager
def study_writes(folder: str | Path) -> Iterator[None]:
    """Run a search of the study in ``folder``; a file-system fault (:data:`FAULTS`) raised in the
    block, even under another error, leaves it as one :class:`~searchskip.errors.FileSystemError`."""
    try:
        yield
    except SearchSkipError:
        raise
    except Exception as exc:
        fault = fault_in(exc)
        if fault is None:
            raise
        if isinstance(fault, SearchSkipError):
            raise fault from None
        raise FileSystemError(_message(fault, Path(folder)), fault) from None
