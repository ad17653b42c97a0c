"""Batches of questions whose images give the same number of image tokens.

A model that takes images at their own resolution (Qwen-VL, LLaVA-NeXT) gives each image its
own number of image tokens. A batch may mix them for plain generation and for layer ops, but
``visual_tokens`` keeps a share of *each row's* image tokens and needs one count per batch. So
evaluation batches questions by their image's shape: :func:`image_keys` reads each row's image
shape from the processor (``None`` for every row of a fixed-resolution model, read from the first
image only, whose batches stay the plain consecutive chunks), :func:`sorted_by_image` orders a
dataset by it (stably: the order within one shape is kept), and :func:`batch_spans` cuts
consecutive rows into batches of at most ``batch_size`` that never straddle a change of shape.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, NamedTuple, Sequence

__all__ = ["ImageOrder", "batch_spans", "image_keys", "image_shape", "shape_of_inputs", "shape_size", "sorted_by_image"]


SHAPE_KEYS = ("image_grid_thw", "image_sizes", "num_patches")
"""Image-processor outputs that give each image's shape (see :func:`image_shape`)."""


def image_shape(processor: Any, image: Any) -> tuple[int, ...] | None:
    """What a model that takes images at their own resolution needs to know of ``image``, as its
    processor's image processor gives it: Qwen-VL's patch grid ``(t, h, w)``
    (``image_grid_thw``), LLaVA-NeXT's and LLaVA-OneVision's original ``(height, width)``
    (``image_sizes``), InternVL's tile count ``(tiles,)`` (``num_patches``); ``None`` for a
    fixed-resolution processor (see :attr:`searchskip.flops.Workload.image_shape`)."""
    from searchskip.processors import image_inputs

    return shape_of_inputs(image_inputs(processor, [image]))


def shape_of_inputs(out: Any) -> tuple[int, ...] | None:
    """The :func:`image_shape` of the first image of an image processor's output ``out``."""
    for key in SHAPE_KEYS:
        if key in out:
            value = out[key][0]
            return tuple(int(x) for x in (value.tolist() if value.dim() else [int(value)]))
    return None


def shape_size(shape: Hashable) -> int:
    """The product of an image shape's numbers (0 for ``None``): what orders shapes small to large."""
    return math.prod(shape) if shape else 0  # type: ignore[arg-type]


def image_keys(loaded: Any, dataset: Any) -> list[Hashable]:
    """Per row of ``dataset`` (schema rows, read one at a time): its image's :func:`image_shape`
    under ``loaded``'s processor; all ``None`` for a fixed-resolution processor, which only the
    first image is read for."""
    n = len(dataset)
    processor = loaded.processor
    if n == 0 or getattr(processor, "image_processor", None) is None:
        return [None] * n
    first = _row_shape(processor, dataset[0])
    if first is None:
        return [None] * n
    return [first] + [_row_shape(processor, dataset[i]) for i in range(1, n)]


def _row_shape(processor: Any, row: Any) -> Hashable:
    """:func:`image_shape` of a row's image; :class:`~searchskip.errors.DataError` naming the question
    when the processor refuses the image (Qwen-VL: an aspect ratio of 200 or more)."""
    from searchskip.errors import DataError

    image = row["image"]
    try:
        return image_shape(processor, image)
    except (ValueError, ArithmeticError) as err:
        size = "x".join(str(x) for x in getattr(image, "size", ())) or "?"
        raise DataError(f"question {row.get('question_id', '?')}: the model's processor refuses its {size} image "
                        f"({err}); leave such images out of the data") from None


class ImageOrder(NamedTuple):
    """A dataset ordered by image shape: the ordered rows, their keys, and ``order[i]``, the
    original index of row ``i``."""

    dataset: Any
    keys: list
    order: list[int]


def sorted_by_image(loaded: Any, dataset: Any) -> ImageOrder:
    """``dataset`` with its rows stably ordered by :func:`image_keys`, small shapes first (the same
    object when that moves nothing, e.g. for a fixed-resolution model or one image size)."""
    keys = image_keys(loaded, dataset)
    order = sorted(range(len(keys)), key=lambda i: (shape_size(keys[i]), i))
    if order == list(range(len(keys))):
        return ImageOrder(dataset, keys, order)
    return ImageOrder(dataset.select(order), [keys[i] for i in order], order)


def batch_spans(keys: Sequence[Hashable], batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of at most ``batch_size`` rows, cut also where
    the key changes."""
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start] or i - start == batch_size:
            spans.append((start, i))
            start = i
    return spans
