"""Data sources: one module each, registered below under the name ``data.source`` uses.

A loader is ``load(spec: DataSpec, locator, role) -> RawSplit``: ``locator`` is what
``spec.splits[role]`` says (a split name, file(s), or a ``{questions, annotations,
images}`` mapping). It returns the split as the source has it; :mod:`searchskip.data.splits`
then maps it onto the schema.
"""

from __future__ import annotations

from typing import Any, Mapping

from searchskip.data.sources import disk, easy_vqa, hub, parquet, vqav2_json
from searchskip.data.sources.base import Loader, RawSplit
from searchskip.errors import ConfigError, Problem

LOADERS: dict[str, Loader] = {}
"""``data.source`` name -> loader."""

MAPPABLE: set[str] = set()
"""Sources whose columns ``data.columns`` maps; the others build the schema themselves."""

DEFAULT_SPLITS: dict[str, Mapping[str, Any]] = {}
"""Roles used when ``data.splits`` is empty (only for sources with fixed split names)."""


def register(name: str, loader: Loader, *, mappable: bool, default_splits: Mapping[str, Any] | None = None) -> None:
    """Add a source; a name can be registered once."""
    if name in LOADERS:
        raise ValueError(f"data source {name!r} is already registered (by {LOADERS[name].__module__})")
    LOADERS[name] = loader
    if mappable:
        MAPPABLE.add(name)
    if default_splits:
        DEFAULT_SPLITS[name] = dict(default_splits)


def get_loader(name: str) -> Loader:
    try:
        return LOADERS[name]
    except KeyError:
        raise ConfigError(
            [Problem(None, "data.source", f"unknown source {name!r}; known: {', '.join(sorted(LOADERS))}")]
        ) from None


# --- the registry: every source, in one place ---------------------------------------
register("easy_vqa", easy_vqa.load, mappable=False, default_splits=easy_vqa.DEFAULT_SPLITS)
register("hub", hub.load, mappable=True)
register("disk", disk.load, mappable=True)
register("parquet", parquet.load, mappable=True)
register("vqav2_json", vqav2_json.load, mappable=False)

__all__ = ["DEFAULT_SPLITS", "LOADERS", "MAPPABLE", "Loader", "RawSplit", "get_loader", "register"]
