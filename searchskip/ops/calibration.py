"""Calibration batches for activation-aware pruning (``prune.calibration`` of a plan).

:func:`calibration_batches` picks ``samples`` rows of a schema VQA dataset (columns
``image``, ``question``, ...) with a seeded RNG and turns them into model inputs exactly the
way evaluation does (:func:`searchskip.eval.generate.prompt_inputs`): the job's prompt
template around each question, the processor on images + prompts, left padding. For LLaVA
each batch therefore holds ``pixel_values``, ``input_ids`` and ``attention_mask``, and the
activations wanda measures cover image and text tokens.

The rows are drawn with ``random.Random`` seeded from SHA-256 of ``(seed, "calibration")``
(:func:`searchskip.data.subset.stream_seed`), so the choice is the same on every process
and machine; the chosen rows are taken in dataset order (grouped by image grid for models
that size images individually: :mod:`searchskip.eval.batching`).
"""

from __future__ import annotations

import random
from typing import Any

from searchskip.errors import DataError
from searchskip.eval.batching import batch_spans, sorted_by_image
from searchskip.eval.generate import prompt_inputs

__all__ = ["calibration_indices", "calibration_batches"]


def calibration_indices(n_rows: int, samples: int, seed: int) -> list[int]:
    """The sorted row indices :func:`calibration_batches` uses out of ``n_rows``."""
    from searchskip.data.subset import stream_seed

    if samples < 1:
        raise DataError(f"prune.calibration.samples: must be at least 1, but got {samples}")
    if samples > n_rows:
        raise DataError(f"prune.calibration.samples: asks for {samples} calibration samples, but the dataset has "
                        f"only {n_rows} rows; lower prune.calibration.samples")
    return sorted(random.Random(stream_seed(seed, "calibration")).sample(range(n_rows), samples))


def calibration_batches(loaded: Any, dataset: Any, samples: int, seed: int, batch_size: int = 16) -> list[dict]:
    """``samples`` rows of ``dataset`` (seeded by ``seed``) as batches of at most ``batch_size``
    model inputs (plain dicts of tensors on ``loaded.device``; ``pixel_values`` in the model's
    dtype), formatted with ``loaded.template`` and ``loaded.processor``, padded on the left."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, but got {batch_size}")
    missing = [c for c in ("image", "question") if c not in dataset.column_names]
    if missing:
        raise DataError(f"calibration data lacks the column(s) {', '.join(missing)} (map it onto the VQA schema first)")
    rows, keys, _ = sorted_by_image(loaded, dataset.select(calibration_indices(len(dataset), samples, seed)))
    batches: list[dict] = []
    for start, stop in batch_spans(keys, batch_size):
        chunk = rows[start:stop]
        batches.append(prompt_inputs(loaded, chunk["image"], chunk["question"]))
    return batches
