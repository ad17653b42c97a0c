"""What every source loader takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import datasets

from searchskip.config.job import DataSpec


@dataclass(frozen=True)
class RawSplit:
    """One split as a source delivers it, before :func:`searchskip.data.schema.to_schema`."""

    dataset: datasets.Dataset
    origin: str
    """Names the data in messages: a file, a folder, a hub id with its split."""


Loader = Callable[[DataSpec, Any, str], RawSplit]
"""``loader(spec, locator, role)``: ``locator`` is ``spec.splits[role]`` (what the source calls the split)."""
