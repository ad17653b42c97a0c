"""``easy_vqa``: the synthetic shapes-and-colours VQA data shipped in the ``easy_vqa`` package.

Splits: ``train`` (38,575 questions on 4,000 images) and ``test`` (9,673 questions on
1,000 images). Pictures are 64x64 PNGs with one shape of one colour.

**Answers.** Each easy_vqa question has exactly one answer. VQAv2 has ten human
answers, and the VQA accuracy (``min(#humans that said it / 3, 1)``, averaged over
the ten leave-one-out subsets of nine) scores a prediction against the *other*
answers: with a one-element list, every leave-one-out subset is empty and even a
correct prediction would score 0. So the single answer is stored ten times, as if
ten annotators agreed, which makes the VQA accuracy of a prediction 1 when it
matches and 0 otherwise -- plain exact-match accuracy.

**Types.** ``question_type`` is one of ``color`` ("what color is the circle?",
"what is the color of the shape?"), ``shape`` ("what shape is in the image?",
"what is the red shape?"), ``yes/no color`` ("is there a red shape?", "does the
image not contain a blue shape?") and ``yes/no shape`` ("is there a circle?");
``answer_type`` is ``yes/no`` or ``other``.

**Ids.** ``question_id`` is ``"{split}-{index}"`` and ``image_id`` is
``"{split}-{image}"``: easy_vqa numbers train and test images from 0 separately,
the prefix keeps them apart.
"""

from __future__ import annotations

from typing import Any

import datasets

from searchskip.config.job import DataSpec
from searchskip.data.schema import dataset_from_arrays
from searchskip.data.sources.base import RawSplit
from searchskip.errors import DataError

SPLITS = ("train", "test")
DEFAULT_SPLITS = {"train": "train", "test": "test"}
"""Roles when ``data.splits`` is empty; validation is carved from train by image."""

N_ANSWERS = 10
"""How many times the single answer is repeated (VQAv2 has ten human answers per question)."""

SHAPES = frozenset({"circle", "rectangle", "triangle"})
COLORS = frozenset({"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"})
QUESTION_TYPES = ("color", "shape", "yes/no color", "yes/no shape")


def question_type(question: str) -> str:
    """The type of an easy_vqa question (see the module docstring); ``unknown`` for other wordings."""
    q = question.strip().lower().rstrip("?").strip()
    if q.startswith("what color") or q.startswith("what is the color"):
        return "color"
    if q.startswith("what"):
        return "shape"  # "what shape ...", "what is the red shape"
    words = set(q.split())
    if words & COLORS:
        return "yes/no color"
    if words & SHAPES:
        return "yes/no shape"
    return "unknown"


def _read(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    try:
        import easy_vqa as ev
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise DataError(f"data.source easy_vqa needs the 'easy-vqa' package: {e}") from None
    if split == "train":
        texts, answers, image_ids = ev.get_train_questions()
        paths = ev.get_train_image_paths()
    else:
        texts, answers, image_ids = ev.get_test_questions()
        paths = ev.get_test_image_paths()
    return texts, answers, image_ids, paths


def load_easy_vqa(split: str) -> datasets.Dataset:
    """The whole easy_vqa ``split`` ("train" or "test") in the schema; images decode lazily."""
    if split not in SPLITS:
        raise DataError(f"easy_vqa has splits {', '.join(SPLITS)}, not {split!r}")
    texts, answers, image_ids, paths = _read(split)
    missing = sorted({i for i in image_ids if i not in paths})
    if missing:
        raise DataError(
            f"easy_vqa:{split}: no image file for image id(s) {', '.join(map(str, missing[:10]))} "
            "(the installed easy_vqa package is incomplete)"
        )
    answer_types = ["yes/no" if a in ("yes", "no") else "other" for a in answers]
    return dataset_from_arrays(
        {
            "question_id": [f"{split}-{i}" for i in range(len(texts))],
            "image": [paths[i] for i in image_ids],
            "question": texts,
            "answers": [[a] * N_ANSWERS for a in answers],
            "question_type": [question_type(t) for t in texts],
            "answer_type": answer_types,
            "image_id": [f"{split}-{i}" for i in image_ids],
        }
    )


def load(spec: DataSpec, locator: Any, role: str) -> RawSplit:
    if locator not in SPLITS:
        raise DataError(
            f"data.splits.{role}: easy_vqa has the splits {', '.join(SPLITS)}, not {locator!r} "
            "(validation is carved from train: see data.carve_validation)"
        )
    return RawSplit(load_easy_vqa(locator), f"easy_vqa:{locator}")
