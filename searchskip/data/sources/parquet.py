"""``parquet``: Parquet files, one split per locator.

The locator is a file, a glob (``data/val-*.parquet``, ``**`` allowed) or a list of them;
all matching files, sorted, make the split. The image column may hold image bytes, a
file path, or ``{bytes, path}`` structs (what ``datasets.Image`` accepts, and what
``Dataset.to_parquet`` writes). The columns are mapped with ``data.columns``.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import datasets
import pyarrow.parquet as pq

from searchskip.config.job import DataSpec
from searchskip.data.sources.base import RawSplit
from searchskip.errors import ConfigError, DataError, Problem


def resolve_files(locator: Any, role: str) -> list[str]:
    """Every file the locator matches, sorted and without duplicates; DataError naming a pattern that matches none."""
    patterns = [locator] if isinstance(locator, str) else locator
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(
            [Problem(None, f"data.splits.{role}", f"must be a Parquet file, a glob or a list of them, got {locator!r}")]
        )
    files: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"data.splits.{role}: no file matches {pattern!r}")
        else:
            if not os.path.isfile(expanded):
                raise DataError(f"data.splits.{role}: {pattern}: no such file")
            matches = [expanded]
        files += [os.path.abspath(m) for m in matches]
    return sorted(dict.fromkeys(files))


def load(spec: DataSpec, locator: Any, role: str) -> RawSplit:
    files = resolve_files(locator, role)
    origin = files[0] if len(files) == 1 else f"{len(files)} parquet files ({files[0]} ...)"
    rows = 0
    for file in files:  # a file that is not Parquet, or a split without rows, named before datasets sees it
        try:
            rows += pq.ParquetFile(file).metadata.num_rows
        except Exception as e:  # pyarrow raises several types for files that are not Parquet
            raise DataError(f"data.splits.{role}: {file}: cannot be read as Parquet: {type(e).__name__}: {e}") from None
    if rows == 0:
        raise DataError(f"data.splits.{role}: {origin}: the split is empty (0 rows); a split needs at least one question")
    try:
        ds = datasets.load_dataset("parquet", data_files={"data": files}, split="data")
    except Exception as e:  # bad parquet, mismatched schemas between files
        raise DataError(f"data.splits.{role}: {origin}: cannot be read as Parquet: {type(e).__name__}: {e}") from None
    return RawSplit(ds, origin)
