"""Atomic directory writes with a sha256 manifest, used by ``searchskip export``.

An export folder (``plan.yaml``, ``metrics.json``, ``model/``, ...) is never written in
place. :func:`atomic_directory` follows this protocol, for a target folder ``out/<name>``:

1. **Clean up and check.** :func:`cleanup_leftovers` removes what killed earlier runs left
   next to the target (see below), and restores the previous export if a run was killed in
   the middle of the swap (step 4). Then :func:`check_target` applies the rule of
   :mod:`searchskip.export.owner`: only a folder searchskip wrote (one with its manifest, of
   the same kind) is ever replaced; a file, a link, a user's or a study's folder, or a folder
   holding files a user added is refused (:class:`~searchskip.export.owner.ReplaceRefused`,
   exit code 2) before anything is written.
2. **Write.** The caller writes every file into a fresh temporary sibling
   ``out/.<name>.tmp-<pid>-<random>`` (same parent, so the same file system and the
   renames below are atomic). Nothing at ``out/<name>`` changes meanwhile.
3. **Seal.** :func:`write_manifest` writes ``manifest.json`` into the temporary folder:
   the sha256 and size of every other file, the folder's kind and its kept entries. The
   target is checked again, and its kept entries (an export's ``finetune/``) are hard-linked
   into the temporary folder (:func:`searchskip.export.owner.carry_kept`). Every file and
   folder is fsynced, so the data is on disk before any rename makes it visible.
4. **Swap.** If the target exists, the temporary folder and the target are exchanged in one
   atomic ``renameat2(RENAME_EXCHANGE)`` (Linux), so a complete target exists at every moment;
   where that is unavailable, the target is renamed to ``out/.<name>.old-<pid>-<random>`` and
   then the temporary folder to the target. The parent folder is fsynced.
5. **Discard.** The old folder is renamed to ``out/.<name>.trash-<pid>-<random>`` and
   deleted.

If the block raises (any exception, ``KeyboardInterrupt`` included) the temporary folder
is deleted, the exception propagates and the target is untouched; a file-system fault
(:class:`OSError`: disk full, read-only file system, ...) becomes a
:class:`~searchskip.errors.FileSystemError` that names the path (exit code 2). If the process is
*killed* (no Python cleanup runs), one of these states remains, and every one of them is
recovered by the next :func:`cleanup_leftovers` (which every :func:`atomic_directory`
calls first):

* killed in step 2 or 3: the target is the complete previous export; a ``.tmp-`` folder
  of a dead process is left over and gets deleted;
* killed between the two renames of step 4: the target is missing and the previous
  complete export is in a ``.old-`` folder, which is renamed back to the target;
* killed after the second rename: the target is the complete new export; the ``.old-``
  or ``.trash-`` folder is deleted.

So whenever a kill happens, the target is (after cleanup) either the whole previous export
or the whole new one, never a mix, and :func:`verify_manifest` on it reports no problem.

Leftovers are recognised by name and owned by the process id in their name: a folder of
a process that is still running (another export in progress) is left alone, tested with
``os.kill(pid, 0)``. Folders of this very process count as leftovers unless an
:func:`atomic_directory` of this process is still using them. A dead process's id that the
system has since given to an unrelated live process keeps its leftovers until that
process ends; that costs disk space, never correctness.

The manifest's format, :func:`verify_manifest` and :func:`check_manifest` are in
:mod:`searchskip.export.manifest` (re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterator

from searchskip.errors import FileSystemError, SearchSkipError, first_line
from searchskip.export.manifest import (
    MANIFEST,
    ManifestError,
    check_manifest,
    fsync_fd,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from searchskip.export.owner import Keep, Occupant, carry_kept, check_replaceable
from searchskip.proc import pid_alive

__all__ = [
    "MANIFEST",
    "ManifestError",
    "atomic_directory",
    "check_target",
    "cleanup_leftovers",
    "write_manifest",
    "read_manifest",
    "verify_manifest",
    "check_manifest",
]

_KINDS = ("tmp", "old", "trash")

# Leftover folders this process is using right now (an atomic_directory in progress, in any
# thread): cleanup_leftovers never touches them even though their pid is alive (ours).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _checkpoint(name: str) -> None:
    """Test seam: called after each step of the protocol; does nothing.

    Tests replace ``searchskip.export.atomic._checkpoint`` (looked up at call time) to count
    the steps and kill the process at one of them. Names: ``tmp-created``,
    ``manifest-hashed`` (once per file), ``manifest-written``, ``kept-linked`` (only when the
    previous folder's kept entries were carried over), ``synced``, ``exchanged`` (the one-step
    swap), or ``target-moved`` (target renamed to ``.old-``) and ``tmp-moved`` (temporary
    folder renamed to the target), ``old-trashed``, ``old-removed``.
    """


# --------------------------------------------------------------------------- file system helpers


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames) durable; a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every folder under ``folder`` (files were fsynced while hashing), deepest first."""
    for dirpath, _dirs, _files in os.walk(folder, topdown=False):
        _fsync_dir(Path(dirpath))


def _sibling(target: Path, role: str) -> Path:
    return target.parent / f".{target.name}.{role}-{os.getpid()}-{secrets.token_hex(6)}"


def _normalize(target: str | Path) -> Path:
    target = Path(os.path.abspath(os.fspath(target)))
    if not target.name:
        raise SearchSkipError(f"{target}: cannot export to the root of a file system")
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def _registered(path: Path) -> Iterator[None]:
    with _ACTIVE_LOCK:
        _ACTIVE.add(str(path))
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(str(path))


def _owner_gone(pid: int, path: Path) -> bool:
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return str(path) not in _ACTIVE
    return not pid_alive(pid)


# --------------------------------------------------------------------------- leftovers


def cleanup_leftovers(target: str | Path) -> list[Path]:
    """Recover from exports of ``target`` that were killed, and delete what they left behind.

    Looks at the siblings of ``target`` named ``.<name>.tmp-<pid>-<random>``,
    ``.<name>.old-<pid>-<random>`` and ``.<name>.trash-<pid>-<random>`` whose process
    ``<pid>`` is no longer running (a running process's folders are left alone: that
    export is still in progress):

    * ``.tmp-`` (an export killed before it was complete) and ``.trash-`` folders are deleted;
    * if ``target`` does not exist, the newest ``.old-`` folder (the previous complete
      export, renamed away just before the kill) is renamed back to ``target``;
    * the other ``.old-`` folders are deleted once ``target`` exists.

    Returns the leftover paths it deleted or restored (a restored one by its old name).
    """
    target = _normalize(target)
    parent = target.parent
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.(?P<kind>{'|'.join(_KINDS)})-(?P<pid>\d+)-[0-9a-f]+"
    )
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stale: dict[str, list[Path]] = {kind: [] for kind in _KINDS}
    live_old = False
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        path = parent / entry.name
        if _owner_gone(int(match["pid"]), path):
            stale[match["kind"]].append(path)
        elif match["kind"] == "old":
            live_old = True

    done: list[Path] = []
    for path in sorted(stale["tmp"]) + sorted(stale["trash"]):
        with contextlib.suppress(FileNotFoundError):
            _remove(path)
        done.append(path)

    olds = stale["old"]
    if not os.path.lexists(target) and olds and not live_old:
        # Killed between "target -> old" and "tmp -> target": the old folder is the previous
        # complete export. Several can only exist if the target was deleted by hand since.
        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return float("-inf")

        newest = max(olds, key=lambda p: (mtime(p), p.name))
        os.rename(newest, target)
        _fsync_dir(parent)
        olds = [p for p in olds if p != newest]
        done.append(newest)
    if os.path.lexists(target):
        for path in sorted(olds):
            with contextlib.suppress(FileNotFoundError):
                _remove(path)
            done.append(path)
    return done


# --------------------------------------------------------------------------- the protocol


def _discard(old: Path, target: Path) -> None:
    """Delete the replaced export; renamed to ``.trash-`` first so a kill mid-delete is never restored."""
    trash = _sibling(target, "trash")
    with _registered(trash):
        try:
            os.rename(old, trash)
        except OSError:
            return  # cleanup_leftovers deletes it later
        _checkpoint("old-trashed")
        with contextlib.suppress(OSError):
            _remove(trash)
    _checkpoint("old-removed")


_EXCHANGE = True
"""Swap with ``renameat2(RENAME_EXCHANGE)`` where the kernel and file system support it (Linux
3.15+: ext4, xfs, btrfs, tmpfs, ...); tests set it to ``False`` to exercise the two-rename path."""


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange the folders ``a`` and ``b`` (``renameat2(..., RENAME_EXCHANGE)``).
    ``False`` where that is unavailable (not Linux, an old kernel or libc, a file system that
    refuses it); then the caller falls back to two renames."""
    import ctypes
    import errno

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap(tmp: Path, target: Path, kind: str | None, keep: Keep) -> None:
    """Seal ``tmp`` with a manifest and rename it to ``target`` (moving the previous one away)."""
    manifest = write_manifest(tmp, kind=kind, kept=keep, fsync=True, on_hashed=lambda: _checkpoint("manifest-hashed"))
    _checkpoint("manifest-written")
    # Asked again: the target may have changed while the new folder was written (e.g. a fine-tune ran).
    occupant = check_replaceable(target, kind=kind, keep=keep)
    if carry_kept(occupant, tmp, manifest, keep):
        _checkpoint("kept-linked")
    _fsync_tree(tmp)
    _checkpoint("synced")
    parent = target.parent
    if not os.path.lexists(target):
        os.rename(tmp, target)
        _fsync_dir(parent)
        _checkpoint("tmp-moved")
        return
    if _EXCHANGE and _exchange(tmp, target):
        # One atomic step: the target is the new export and ``tmp`` holds the previous one, so there
        # is no moment without a complete target. A kill now leaves the old export under the
        # ``.tmp-`` name of a dead process, which cleanup deletes.
        _fsync_dir(parent)
        _checkpoint("exchanged")
        _discard(tmp, target)
        return
    old = _sibling(target, "old")
    with _registered(old):
        os.rename(target, old)
        _checkpoint("target-moved")
        try:
            os.rename(tmp, target)
        except BaseException:
            if not os.path.lexists(target):  # put the previous export back
                os.rename(old, target)
            raise
        _fsync_dir(parent)
        _checkpoint("tmp-moved")
        _discard(old, target)


_WRAPPED_ERRNO = re.compile(r"\(os error (\d+)\)")


def io_fault(exc: BaseException) -> OSError | None:
    """The file-system fault ``exc`` is, or ``None``: an :class:`OSError` itself (not a searchskip
    error), or a library's own error wrapping one -- safetensors' ``SafetensorError`` ("I/O error: No
    space left on device (os error 28)"), torch's ``RuntimeError`` ("PytorchStreamWriter failed
    writing file ...: file write failed")."""
    if isinstance(exc, OSError):
        return None if isinstance(exc, SearchSkipError) else exc
    if not isinstance(exc, Exception):
        return None
    text = str(exc)
    match = _WRAPPED_ERRNO.search(text)
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    if "file write failed" in text or "No space left on device" in text:
        return OSError(errno.ENOSPC if "space" in text else errno.EIO, first_line(exc, 200))
    return None


def _fault(target: Path, exc: OSError, existed: bool, tmp: Path | None = None) -> FileSystemError:
    """The one-line error for a file-system fault (read-only, disk full, ...) while writing ``target``."""
    kept = f"{target} is as it was" if existed else f"{target} was not created"
    if tmp is not None and os.path.lexists(tmp):
        kept += f"; the partial folder {tmp} is left over and the next write to {target.name} deletes it"
    else:
        kept += " and nothing half-written is left"
    return FileSystemError(f"{target}: could not be written: {exc}. Nothing was replaced: {kept}. Free some "
                           "space or choose a writable folder, then run the command again.", exc)


def check_target(target: str | Path, *, kind: str | None = None, keep: Keep | None = None) -> Occupant:
    """Everything :func:`atomic_directory` checks before it writes ``target``, so that a caller can
    fail before hours of work rather than after.

    Cleans up what killed writes of ``target`` left (:func:`cleanup_leftovers`), checks that a
    folder of ``kind`` may replace what is at ``target``
    (:func:`searchskip.export.owner.check_replaceable`; raises its ``ReplaceRefused``), creates
    the parent folders and a probe folder next to ``target`` (removed again), so a read-only
    file system or a missing permission shows now. File-system faults raise
    :class:`~searchskip.errors.FileSystemError` naming the path. Returns the occupant.
    """
    target = _normalize(target)
    existed = os.path.lexists(target)
    try:
        cleanup_leftovers(target)
        occupant = check_replaceable(target, kind=kind, keep=keep)
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = _sibling(target, "tmp")
        with _registered(probe):
            probe.mkdir()
            probe.rmdir()
    except OSError as exc:
        if isinstance(exc, SearchSkipError):
            raise
        raise _fault(target, exc, existed) from exc
    return occupant


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, kind: str | None = None, keep: Keep | None = None) -> Iterator[Path]:
    """Write a folder atomically: yield an empty temporary folder, then swap it into ``target``.

    First :func:`check_target` (cleanup of killed writes' leftovers, the rule of
    :mod:`searchskip.export.owner` on what may be replaced, parent folders), then creates
    ``.<name>.tmp-<pid>-<random>`` next to ``target`` and yields its path; write every file
    of the folder into it. When the block ends normally, :func:`write_manifest` seals it
    (naming ``kind`` and the ``keep`` entries), the rule is checked again, the kept entries of
    the previous folder are carried into the new one
    (:func:`searchskip.export.owner.carry_kept`), all files and folders are fsynced and the
    new folder is swapped into ``target``; the previous one is deleted.

    ``kind``: what the folder is (``"export"``, ...); a folder of another kind is never
    replaced. ``keep``: top-level entries that later steps add to the folder, each with the
    paths it is made from (``{"finetune": ["model"]}``); see :mod:`searchskip.export.owner`.

    If the block raises (``KeyboardInterrupt`` included), the temporary folder is deleted,
    ``target`` is left as it was and the exception propagates; an :class:`OSError` (disk full,
    read-only file system, ...) becomes a :class:`~searchskip.errors.FileSystemError` (exit
    code 2) that names the path and says what was kept. See the module docstring for what a
    killed process leaves and how the next run recovers.
    """
    occupant = check_target(target, kind=kind, keep=keep)
    target = occupant.path
    existed = os.path.lexists(target)
    tmp = _sibling(target, "tmp")
    with _registered(tmp):
        try:
            tmp.mkdir()
            _checkpoint("tmp-created")
            yield tmp
            _swap(tmp, target, kind, keep or {})
        except BaseException as exc:
            with contextlib.suppress(OSError):
                if os.path.lexists(tmp):
                    _remove(tmp)
            fault = io_fault(exc)
            if fault is not None:
                raise _fault(target, fault, existed, tmp) from exc
            raise
