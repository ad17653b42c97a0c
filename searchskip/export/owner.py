"""Which existing path a folder write may replace: never one searchskip did not write.

:func:`~searchskip.export.atomic.atomic_directory` replaces whole folders (an export, a fine-tuned
model, a fine-tune checkpoint). Before it writes anything, and again right before it swaps the new
folder in, it asks :func:`check_replaceable` about the path; a refusal is a :class:`ReplaceRefused`
(exit code 2), and then nothing is written or replaced.

**How searchskip recognises its own folders.** Every folder ``atomic_directory`` writes holds a
``manifest.json`` listing its files (sha256 and size) and naming its *kind* (``export``,
``fine-tuned model``, ``checkpoint``). Nothing else counts: not a folder's name, not a study's files.
A manifest without a kind (written before manifests named one) counts as any kind.

**The rule**, for the path a folder is to be written to:

* nothing there, or an empty folder: written;
* a symbolic link (wherever it points), a file, a folder without a readable ``manifest.json`` (a
  user's folder, a study folder, a study's ``export/`` folder) or whose manifest names another kind
  (an export never replaces a fine-tuned model): refused;
* a searchskip folder of the same kind: replaced, unless it holds paths its manifest does not list
  (what a user added), which are named in the refusal. The files its manifest lists are
  searchskip's own and are replaced even if edited since;
* *kept entries*: a writer names the top-level entries that later steps add to its folders, with
  the paths each is made from (an export: ``finetune/``, made from ``model/``). Manifests do not
  list them. On a replace, :func:`carry_kept` carries them into the new folder as hard links
  (nothing is copied, and at every moment of the swap the target holds them) when those paths
  are unchanged (the same sha256 in the old and the new manifest), and refuses otherwise.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from searchskip.errors import SearchSkipError
from searchskip.export.manifest import MANIFEST, read_manifest

__all__ = ["Keep", "Occupant", "ReplaceRefused", "RULE", "carry_kept", "check_replaceable", "stale_kept_error"]

Keep = Mapping[str, Sequence[str]]
"""Kept entries: top-level name -> the paths (relative, POSIX) it is made from."""

RULE = ("searchskip replaces only folders it wrote itself (they hold its manifest.json) and never deletes "
        "anything it did not write")


class ReplaceRefused(SearchSkipError):
    """The path a folder is to be written to holds something searchskip may not replace."""


@dataclass(frozen=True)
class Occupant:
    """What is at a target path that :func:`check_replaceable` allowed: ``manifest`` is ``None``
    when the path is missing or an empty folder; ``kept`` lists the kept entries present."""

    path: Path
    manifest: dict | None = None
    kept: tuple[str, ...] = ()


def _refuse(target: Path, what: str, remedy: str = "choose a new or empty folder") -> ReplaceRefused:
    return ReplaceRefused(f"{target}: {what}. {RULE}, so nothing was written or replaced: {remedy}.")


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _unlisted(folder: Path, listed: set[str], kept: set[str]) -> list[str]:
    """Paths under ``folder`` that the manifest does not list, outside the kept entries; a folder
    holding no listed file is named once (``notes/``), not file by file."""
    parents = {"/".join(rel.split("/")[:i]) for rel in listed for i in range(1, rel.count("/") + 1)}
    found: list[str] = []

    def walk(rel_dir: str) -> None:
        for entry in sorted(os.scandir(folder / rel_dir), key=lambda e: e.name):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if (not rel_dir and (entry.name == MANIFEST or entry.name in kept)) or (rel in listed and not is_dir):
                continue
            if is_dir and rel in parents:
                walk(rel)
            else:
                found.append(rel + ("/" if is_dir else ""))

    walk("")
    return found


def check_replaceable(target: str | Path, *, kind: str | None, keep: Keep | None = None) -> Occupant:
    """Check that a folder of ``kind`` may be written at ``target`` (see the module doc for the rule).

    Returns the :class:`Occupant`; raises :class:`ReplaceRefused` naming ``target``, what is there
    and the rule. Reads only; writes nothing."""
    target = Path(target)
    keep = keep or {}
    if target.is_symlink():
        raise _refuse(target, f"is a symbolic link (to {os.readlink(target)})", "give a new or empty folder, not a link")
    if not os.path.lexists(target):
        return Occupant(target)
    if not target.is_dir():
        what = "is a file, not a folder" if target.is_file() else "is not a folder"
        raise _refuse(target, what)
    entries = sorted(os.listdir(target))
    if not entries:
        return Occupant(target)
    manifest = read_manifest(target)
    if manifest is None:
        what = (f"is a folder searchskip did not write (its {MANIFEST} is not one searchskip wrote)"
                if MANIFEST in entries else
                f"is a folder searchskip did not write (no {MANIFEST}; it holds {_some(entries)})")
        raise _refuse(target, what)
    old_kind = manifest.get("kind")
    if kind is not None and old_kind is not None and old_kind != kind:
        raise _refuse(target, f"is a searchskip folder of kind {old_kind!r}, which a folder of kind {kind!r} never "
                              "replaces", "write it to another folder")
    # Only the writer's own kept entries are carried over; anything else is named, never deleted.
    added = _unlisted(target, set(manifest["files"]), set(keep))
    if added:
        raise _refuse(target, f"holds {len(added)} path(s) the {old_kind or kind or 'folder'} did not write: "
                              f"{_some(added)}", f"move them away first, or write the {kind or 'folder'} elsewhere")
    return Occupant(target, manifest, tuple(name for name in sorted(keep) if os.path.lexists(target / name)))


def stale_kept_error(target: str | Path, name: str, sources: Sequence[str], kind: str | None) -> ReplaceRefused:
    """The refusal for a kept entry ``name`` whose ``sources`` the new folder changes."""
    target = Path(target)
    made_from = ", ".join(f"{s}/" if (target / s).is_dir() else s for s in sources)
    return _refuse(target, f"holds {name}/, which was made from its {made_from}; the new {kind or 'folder'} "
                           f"changes {made_from} (another plan or model), and replacing the folder would leave "
                           f"{name}/ beside something it was not made from",
                   f"write the {kind or 'folder'} to another folder, or move {target / name} away first")


def _entries(manifest: dict, sources: Sequence[str]) -> dict:
    return {rel: entry for rel, entry in manifest.get("files", {}).items()
            if any(rel == s or rel.startswith(f"{s}/") for s in sources)}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # a file system without hard links (or at its link limit): a real copy
        shutil.copy2(src, dst, follow_symlinks=False)


def carry_kept(occupant: Occupant, new_folder: Path, new_manifest: dict, keep: Keep) -> list[str]:
    """Carry ``occupant``'s kept entries into ``new_folder`` (hard links; copies where links fail).

    Raises :func:`stale_kept_error` if the paths a kept entry was made from differ between the
    occupant's manifest and ``new_manifest``. Returns the names carried."""
    for name in occupant.kept:
        if _entries(occupant.manifest or {}, keep[name]) != _entries(new_manifest, keep[name]):
            raise stale_kept_error(occupant.path, name, keep[name], new_manifest.get("kind"))
    for name in occupant.kept:
        source, dest = occupant.path / name, new_folder / name
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(source), str(dest))
    return list(occupant.kept)
