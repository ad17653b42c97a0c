"""Batches of questions whose images give the same number of image tokens.

A model that takes images at their own resolution (Qwen-VL) gives each image its own number
of image tokens. A batch may mix them for plain generation and for layer ops, but
``visual_tokens`` keeps a share of *each row's* image tokens and needs one count per batch. So
evaluation batches questions by their image's shape: :func:`image_keys` reads each image's
shape from the processor (``None`` for every row of a fixed-resolution model, whose batches stay the
plain consecutive chunks), :func:`sorted_by_image` orders a dataset by it (stably: the order
within one grid is kept), and :func:`batch_spans` cuts consecutive rows into batches of at most
``batch_size`` that never straddle a change of grid.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

__all__ = ["batch_spans", "image_keys", "image_shape", "sorted_by_image"]


def image_shape(image_processor: Any, image: Any) -> tuple[int, ...] | None:
    """What a model that takes images at their own resolution needs to know of ``image``, as its
    image processor gives it: Qwen-VL's patch grid ``(t, h, w)`` (``image_grid_thw``),
    LLaVA-NeXT's original ``(height, width)`` (``image_sizes``); ``None`` for a fixed-resolution
    processor (see :attr:`searchskip.flops.Workload.image_shape`)."""
    out = image_processor(images=[image], return_tensors="pt")
    for key in ("image_grid_thw", "image_sizes"):
        if key in out:
            return tuple(int(x) for x in out[key][0].tolist())
    return None


def image_keys(loaded: Any, images: Sequence) -> list[Hashable]:
    """Per image: its :func:`image_shape` under ``loaded``'s processor (all ``None`` for a
    fixed-resolution processor, read from the first image)."""
    if not len(images):
        return []
    image_processor = getattr(loaded.processor, "image_processor", None)
    if image_processor is None:
        return [None] * len(images)
    first = image_shape(image_processor, images[0])
    if first is None:
        return [None] * len(images)
    return [first] + [image_shape(image_processor, image) for image in images[1:]]


def sorted_by_image(loaded: Any, dataset: Any) -> Any:
    """``dataset`` with its rows stably ordered by :func:`image_keys` (the same object when that
    changes nothing, e.g. for a fixed-resolution model or a dataset of one image size)."""
    keys = image_keys(loaded, dataset["image"]) if len(dataset) else []
    if len(set(keys)) <= 1:
        return dataset
    order = sorted(range(len(keys)), key=lambda i: (_size(keys[i]), i))
    return dataset.select(order)


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


def _size(key: Hashable) -> int:
    if key is None:
        return 0
    total = 1
    for x in key:  # type: ignore[union-attr]
        total *= int(x)
    return total
