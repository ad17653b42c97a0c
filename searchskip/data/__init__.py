"""VQA data sources, all mapped onto one VQAv2-like schema.

Typical use::

    from searchskip.data import load_eval_split
    val = load_eval_split(job.data, "validation")   # schema, carved by image, subset

Public API:

* :func:`load_split` / :func:`load_eval_split` -- a role's split (then its subset);
* :func:`to_schema`, :data:`FEATURES`, :func:`check_images` -- the schema;
* :func:`select_subset` -- seeded subsets stratified by question type;
* :class:`TrainingTensors` -- a split as padded prompt + answer tensors for training;
* :func:`assert_disjoint`, :func:`check_splits`, :func:`carved_image_ids` -- split hygiene;
* :data:`LOADERS` / :func:`register` -- the source registry (``searchskip.data.sources``).
"""

from searchskip.data.schema import FEATURES, check_images, derive_answer_type, image_ids, to_schema
from searchskip.data.sources import LOADERS, RawSplit, register
from searchskip.data.splits import (
    assert_disjoint,
    carved_image_ids,
    check_splits,
    load_eval_split,
    load_split,
    resolve_splits,
)
from searchskip.data.subset import select_subset
from searchskip.data.tensors import Batch, TrainingTensors

__all__ = [
    "Batch",
    "FEATURES",
    "LOADERS",
    "RawSplit",
    "assert_disjoint",
    "carved_image_ids",
    "check_images",
    "check_splits",
    "derive_answer_type",
    "image_ids",
    "load_eval_split",
    "load_split",
    "register",
    "resolve_splits",
    "select_subset",
    "to_schema",
    "TrainingTensors",
]
