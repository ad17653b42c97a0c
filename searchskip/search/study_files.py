"""The small files of a study folder that ``searchskip resume`` reads: ``run.json`` (the first run's
working directory, the study's name, storage and trial target) and ``job.yaml`` (the job copy).

Both are written atomically (:func:`write_atomic`: a temporary file beside the target, fsynced,
then renamed over it), so a kill or a full disk leaves the old file or the new one, never a torn
one; :func:`read_run_info` refuses a damaged ``run.json`` with one message naming it (exit code 2).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from searchskip.errors import ConfigError, Problem

__all__ = ["write_atomic", "read_run_info", "write_run_info"]


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace the file ``path`` by ``data`` in one rename: written to ``.<name>.tmp-<pid>`` beside it
    and fsynced first. On any failure (a full disk, a read-only file system) the temporary file is
    removed and ``path`` is as it was; an :class:`OSError` then names ``path``, not the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The JSON object of the ``run.json`` at ``path``; a :class:`ConfigError` naming the file when it
    is damaged (not JSON, or not an object)."""
    path = Path(path)
    advice = ("searchskip writes it in one rename, so something else changed it; delete it and run "
              "`searchskip search JOB` again from the directory the study was first searched from (it "
              "records that directory, against which `searchskip resume` resolves the job's paths)")
    try:
        info = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(str(path), "", f"is damaged, not valid JSON ({e}); {advice}")]) from None
    if not isinstance(info, dict):
        raise ConfigError([Problem(str(path), "", f"is damaged: it must hold a JSON object, but holds "
                                                  f"{type(info).__name__}; {advice}")])
    return info


def write_run_info(path: str | Path, info: dict[str, Any]) -> None:
    """Write ``info`` as the ``run.json`` at ``path``, atomically (:func:`write_atomic`)."""
    write_atomic(path, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
