"""``disk``: a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.

``data.path`` is the folder. For a ``DatasetDict`` the locator is the name of a split in
it (``data.splits: {train: train, test: validation}``). A single ``Dataset`` is one split,
so exactly one role may name it (``data.splits: {test: all}``; the value is not used).
The columns are mapped with ``data.columns``.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from searchskip.config.job import DataSpec
from searchskip.data.sources.base import RawSplit
from searchskip.errors import ConfigError, DataError, Problem


def _load_folder(path: str) -> datasets.Dataset | datasets.DatasetDict:
    if not os.path.isdir(path):
        raise DataError(f"data.path: {path}: no such folder (expected one written by save_to_disk)")
    try:
        return datasets.load_from_disk(path)
    except FileNotFoundError as e:
        raise DataError(f"data.path: {path}: not a folder written by Dataset/DatasetDict.save_to_disk ({e})") from None
    except Exception as e:  # corrupt arrow files, bad json
        raise DataError(f"data.path: {path}: cannot be loaded with datasets.load_from_disk: {type(e).__name__}: {e}") from None


def load(spec: DataSpec, locator: Any, role: str) -> RawSplit:
    if not spec.path:
        raise ConfigError([Problem(None, "data.path", "the disk source needs the folder written by save_to_disk")])
    obj = _load_folder(spec.path)
    if isinstance(obj, datasets.DatasetDict):
        if not isinstance(locator, str) or locator not in obj:
            raise DataError(
                f"data.splits.{role}: {spec.path} is a DatasetDict with the splits "
                f"{', '.join(obj.keys())}; {locator!r} is not one of them"
            )
        return RawSplit(obj[locator], f"{spec.path}[{locator}]")
    roles = sorted(spec.splits)
    if len(roles) != 1:
        raise DataError(
            f"data.splits: {spec.path} holds a single Dataset (not a DatasetDict), so exactly one role "
            f"may use it (e.g. data.splits: {{test: all}}), but {', '.join(roles)} do; save a DatasetDict "
            "to have several splits"
        )
    return RawSplit(obj, spec.path)
