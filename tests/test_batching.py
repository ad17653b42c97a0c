"""Batches by image shape (searchskip.eval.batching): spans, stable order, and how many images are read."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import torch
from PIL import Image

from searchskip.eval.batching import batch_spans, image_keys, shape_size, sorted_by_image


class SizedProcessor:
    """An image processor that reports each image's size (as LLaVA-NeXT's does) and counts its calls."""

    def __init__(self, sized: bool = True):
        self.sized, self.calls = sized, 0

    def __call__(self, images, return_tensors="pt", **settings):  # input_data_format, as the real ones take
        self.calls += 1
        out = {"pixel_values": torch.zeros(len(images), 3, 2, 2)}
        if self.sized:
            out["image_sizes"] = torch.tensor([[im.height, im.width] for im in images])
        return out


def _dataset(sides):
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (s, s)) for s in sides],
                                       "question": [f"q{i}" for i in range(len(sides))]}
                                      ).cast_column("image", datasets.Image())


def _loaded(processor):
    return SimpleNamespace(processor=SimpleNamespace(image_processor=processor))


def test_batch_spans_cut_at_the_batch_size_and_where_the_key_changes():
    assert batch_spans(["a"] * 5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert batch_spans(["a", "a", "b", "b", "b", "a"], 4) == [(0, 2), (2, 5), (5, 6)]
    assert batch_spans([], 3) == []


def test_sorted_by_image_is_stable_small_shapes_first_and_keeps_the_original_indices():
    processor = SizedProcessor()
    ordered = sorted_by_image(_loaded(processor), _dataset([8, 4, 8, 4, 6]))
    assert ordered.order == [1, 3, 4, 0, 2]
    assert ordered.keys == [(4, 4), (4, 4), (6, 6), (8, 8), (8, 8)]
    assert list(ordered.dataset["question"]) == ["q1", "q3", "q4", "q0", "q2"]
    assert processor.calls == 5  # one image at a time, each once
    assert [shape_size(k) for k in ordered.keys] == [16, 16, 36, 64, 64] and shape_size(None) == 0


def test_a_fixed_resolution_processor_reads_only_the_first_image():
    processor = SizedProcessor(sized=False)
    data = _dataset([8, 4, 6])
    assert image_keys(_loaded(processor), data) == [None, None, None]
    assert processor.calls == 1
    ordered = sorted_by_image(_loaded(processor), data)
    assert ordered.dataset is data and ordered.order == [0, 1, 2]
