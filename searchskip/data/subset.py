"""Seeded subsets of a split, stratified by question type.

``select_subset(ds, SubsetSpec(size, seed))`` keeps ``size`` questions (all of them, in
order, when ``size`` is None or not smaller than the split). Each question type gets
its proportional share ``size * n_type / n`` rounded down, and the questions still
missing go to the types with the largest remainders (ties: larger type first, then by
name), so the total is exactly ``size``. Each type is sampled with its own
``random.Random`` seeded from SHA-256 of ``(seed, question_type)`` -- never Python's
salted ``hash()`` -- so the subset is the same on every call, process and machine, and
adding a type does not change how the others are sampled. The result keeps the
split's order.
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction

import datasets

from searchskip.config.job import SubsetSpec
from searchskip.data.schema import column_values
from searchskip.errors import DataError


def stream_seed(seed: int, key: str) -> int:
    """A 64-bit seed for the random stream of ``key``, stable across processes and machines."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def allocate(counts: dict[str, int], size: int) -> dict[str, int]:
    """Proportional allocation of ``size`` over the groups, largest-remainder rounding (sums to ``size``)."""
    total = sum(counts.values())
    if size > total:
        raise DataError(f"cannot take {size} of {total} questions")
    quotas = {k: Fraction(size * n, total) for k, n in counts.items()}
    alloc = {k: int(q) for k, q in quotas.items()}  # floor (quotas are non-negative)
    left = size - sum(alloc.values())
    order = sorted(counts, key=lambda k: (-(quotas[k] - alloc[k]), -counts[k], k))
    for k in order[:left]:
        alloc[k] += 1
    return alloc


def subset_indices(question_types: list[str], subset: SubsetSpec) -> list[int]:
    """The row indices (sorted) :func:`select_subset` keeps, from the question_type column."""
    n = len(question_types)
    if subset.size is not None and subset.size < 0:
        raise DataError(f"a subset size must be at least 0, got {subset.size}")
    if subset.size is None or subset.size >= n:
        return list(range(n))
    groups: dict[str, list[int]] = {}
    for i, qt in enumerate(question_types):
        groups.setdefault(str(qt), []).append(i)
    alloc = allocate({k: len(v) for k, v in groups.items()}, subset.size)
    chosen: list[int] = []
    for qt in sorted(groups):
        k = alloc[qt]
        if k:
            chosen += random.Random(stream_seed(subset.seed, qt)).sample(groups[qt], k)
    return sorted(chosen)


def select_subset(ds: datasets.Dataset, subset: SubsetSpec) -> datasets.Dataset:
    """``ds`` itself when ``subset.size`` is None or >= ``len(ds)``; else the stratified seeded sample."""
    if subset.size is None or subset.size >= len(ds):
        return ds
    if "question_type" not in ds.column_names:
        raise DataError("select_subset needs a 'question_type' column (map the data onto the schema first)")
    return ds.select(subset_indices([str(x) for x in column_values(ds, "question_type")], subset))
