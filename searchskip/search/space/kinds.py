"""The space kinds registry: kind name (``kind:`` in a space file) -> the file form that
:func:`searchskip.config.typed.build` reads such a file into, and the builder that turns it into a
:class:`~searchskip.search.space.Space`. Like the op registry (:mod:`searchskip.ops.registry`),
every kind is added by one visible ``register(...)`` line (in ``searchskip/search/space/__init__.py``)
and a second entry under a taken name is refused; :meth:`Space.from_dict
<searchskip.search.space.Space.from_dict>` reads it, so the base class never imports its kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from searchskip.search.space.names import SPACE_KINDS


@dataclass(frozen=True)
class SpaceKindEntry:
    """One kind of space: its name, its file form class, and ``build(built form, file) -> Space``."""

    name: str
    form: type
    build: Callable[[Any, str | None], Any]


KINDS: dict[str, SpaceKindEntry] = {}
"""Every kind :meth:`Space.from_dict <searchskip.search.space.Space.from_dict>` builds (filled by
``searchskip/search/space/__init__.py``)."""


def register(entry: SpaceKindEntry) -> SpaceKindEntry:
    """Add ``entry`` to :data:`KINDS`; ``ValueError`` if its name is taken or not a kind the file form names."""
    if entry.name not in SPACE_KINDS:
        raise ValueError(f"a space kind must be one of {', '.join(map(repr, SPACE_KINDS))}, but got {entry.name!r}")
    if entry.name in KINDS:
        raise ValueError(f"a space kind named '{entry.name}' is already registered; refusing to replace it")
    KINDS[entry.name] = entry
    return entry
