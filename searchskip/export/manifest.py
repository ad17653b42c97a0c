"""``manifest.json``: the sha256 and size of every file of a folder searchskip wrote.

:func:`~searchskip.export.atomic.atomic_directory` seals every folder it writes (exports,
fine-tuned models, fine-tune checkpoints) with one; :mod:`searchskip.export.owner` recognises
searchskip's folders by it. The form::

    {"version": 1, "kind": "export", "kept": ["finetune"],
     "files": {"model/model.safetensors": {"sha256": "<hex>", "bytes": 123}, ...}}

Paths are relative to the folder, in POSIX form and sorted; the manifest does not list itself
or what is under the ``kept`` entries (top-level entries that later steps add, such as an
export's ``finetune/``). ``kind`` and ``kept`` are there only when the writer gave them.
:func:`verify_manifest` lists the problems of a folder against its manifest and
:func:`check_manifest` raises :class:`ManifestError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from searchskip.errors import SearchSkipError

__all__ = ["MANIFEST", "ManifestError", "check_manifest", "fsync_fd", "read_manifest", "verify_manifest",
           "write_manifest"]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

_CHUNK = 1 << 20  # hash files 1 MiB at a time: model weights can be gigabytes


class ManifestError(SearchSkipError, ValueError):
    """A folder's ``manifest.json`` is missing or unreadable, or its files do not match it."""

    def __init__(self, message: str, *, folder: str | Path | None = None, problems: Iterable[str] = ()):
        super().__init__(message)
        self.folder = folder
        self.problems: list[str] = list(problems)


def fsync_fd(fd: int) -> None:
    """fsync an open file or folder; nothing where the file system refuses (some do)."""
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _hash_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    """sha256 (hex) and size in bytes of a file, read in chunks; fsync it first if asked."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        if fsync:
            fsync_fd(f.fileno())
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def _list_files(folder: Path, kept: Iterable[str] = ()) -> list[str]:
    """Every file under ``folder`` as a sorted relative POSIX path, except the top manifest and
    what is under the top-level entries ``kept``."""
    skipped = {MANIFEST, *kept}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skipped]
        dirnames.sort()
        for filename in filenames:
            rel = (rel_dir / filename).as_posix()
            if rel not in skipped:
                found.append(rel)
    return sorted(found)


def _manifest_dict(folder: Path, *, fsync: bool, kind: str | None, kept: Iterable[str],
                   on_hashed: Callable[[], None] | None) -> dict:
    kept = sorted(kept)
    files = {}
    for rel in _list_files(folder, kept):
        sha, size = _hash_file(folder / rel, fsync=fsync)
        files[rel] = {"sha256": sha, "bytes": size}
        if on_hashed is not None:
            on_hashed()
    manifest: dict = {"version": MANIFEST_VERSION, "files": files}
    if kind is not None:
        manifest["kind"] = kind
    if kept:
        manifest["kept"] = kept
    return manifest


def write_manifest(folder: str | Path, *, kind: str | None = None, kept: Iterable[str] = (), fsync: bool = False,
                   on_hashed: Callable[[], None] | None = None) -> dict:
    """Write ``folder/manifest.json`` listing the sha256 and size of every other file under ``folder``.

    Paths are relative to ``folder`` in POSIX form (``model/config.json``); keys are sorted
    and the JSON is indented by 2. The manifest does not list itself (only the top-level
    ``manifest.json`` is left out). Files are hashed in 1 MiB chunks. Returns the manifest
    as a dict: ``{"version": 1, "files": {path: {"sha256": hex, "bytes": n}}}``, plus
    ``"kind": kind`` when given (what the folder is, see :mod:`searchskip.export.owner`) and
    ``"kept": [names]`` when given: top-level entries that later steps add (an export's
    ``finetune/``), not listed and not checked by :func:`verify_manifest`.

    The manifest is written to a partial file and renamed into place. ``fsync``: every file
    (while it is hashed) and the manifest are fsynced; ``on_hashed``: called after each file
    is hashed (:mod:`searchskip.export.atomic` counts its steps with it).
    """
    folder = Path(folder)
    manifest = _manifest_dict(folder, fsync=fsync, kind=kind, kept=kept, on_hashed=on_hashed)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    partial = folder / f".{MANIFEST}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            fsync_fd(f.fileno())
        os.replace(partial, folder / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return manifest


def _load_manifest(folder: Path) -> tuple[dict | None, list[str], set[str]]:
    """The manifest (None if missing or unusable), its problems, and its entries that are invalid."""
    path = folder / MANIFEST
    if not path.is_file():
        return None, [f"{MANIFEST}: missing"], set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [f"{MANIFEST}: unreadable ({exc})"], set()
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        problem = f"{MANIFEST}: unreadable (expected version {MANIFEST_VERSION}, found {version!r})"
        return None, [problem], set()
    files = data.get("files")
    if not isinstance(files, dict):
        return None, [f"{MANIFEST}: unreadable ('files' is not a mapping)"], set()
    kept = data.get("kept", [])
    if not (isinstance(kept, list) and all(isinstance(k, str) and k and "/" not in k and k != MANIFEST
                                           for k in kept)):
        return None, [f"{MANIFEST}: unreadable ('kept' is not a list of top-level names)"], set()
    if not isinstance(data.get("kind", ""), str):
        return None, [f"{MANIFEST}: unreadable ('kind' is not text)"], set()
    problems = []
    invalid = set()
    for rel, entry in files.items():
        pure = PurePosixPath(rel)
        if (not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel or rel == MANIFEST
                or pure.as_posix() != rel):
            problems.append(f"{rel!r}: not a valid relative path in {MANIFEST}")
            invalid.add(rel)
        elif (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
              or not isinstance(entry.get("bytes"), int) or isinstance(entry.get("bytes"), bool)):
            problems.append(f"{rel}: entry in {MANIFEST} needs 'sha256' (text) and 'bytes' (integer)")
            invalid.add(rel)
    return data, problems, invalid


def read_manifest(folder: str | Path) -> dict | None:
    """``folder``'s ``manifest.json`` as a dict if it is one searchskip wrote and every entry is
    valid, else ``None`` (missing, unreadable, another format). Reads only the manifest."""
    manifest, problems, _invalid = _load_manifest(Path(folder))
    return manifest if not problems else None


def verify_manifest(folder: str | Path) -> list[str]:
    """Check ``folder`` against its ``manifest.json``; return the problems found (empty: all good).

    Each problem is one line naming the relative path it is about: the manifest is missing
    or unreadable; a listed file is missing, or its size or sha256 differs; a file is there
    that the manifest does not list. A file whose size differs is not hashed. What is under
    the manifest's ``kept`` entries (an export's ``finetune/``) is not checked.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: {'not a folder' if os.path.lexists(folder) else 'missing'}"]
    manifest, problems, invalid = _load_manifest(folder)
    if manifest is None:
        return problems
    listed: dict = manifest["files"]
    present = set(_list_files(folder, manifest.get("kept", ())))
    for rel in sorted(listed):
        if rel in invalid:
            continue
        entry = listed[rel]
        path = folder / rel
        if rel not in present:
            problems.append(f"{rel}: missing")
            continue
        try:
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(f"{rel}: size {size} bytes, manifest says {entry['bytes']}")
                continue
            sha, _ = _hash_file(path)
        except OSError as exc:
            problems.append(f"{rel}: unreadable ({exc})")
            continue
        if sha != entry["sha256"]:
            problems.append(f"{rel}: sha256 {sha} differs from the manifest's {entry['sha256']}")
    for rel in sorted(present - set(listed)):
        problems.append(f"{rel}: not listed in {MANIFEST}")
    return problems


def check_manifest(folder: str | Path) -> None:
    """Raise :class:`ManifestError` naming ``folder`` and listing every problem, unless it verifies."""
    problems = verify_manifest(folder)
    if problems:
        lines = [f"{folder}: does not match its {MANIFEST} ({len(problems)} problem(s)):"]
        lines += [f"  - {p}" for p in problems]
        raise ManifestError("\n".join(lines), folder=folder, problems=problems)
