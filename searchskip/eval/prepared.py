"""A validation subset prepared once per search worker, so that a trial only runs what a plan changes.

    prepared = prepare_subset(loaded, dataset, batch_size=64, feature_cache="auto", memory_limit_gb=2.0)
    for batch in prepared:                       # the same tensors every trial
        answers = generate_answers(loaded, batch.generate_inputs(), max_new_tokens)
    prepared.close()                             # removes a disk cache

What is done once, not per trial:

* **Tokenization and batching**: every batch's ``input_ids``/``attention_mask``/``pixel_values``
  (:func:`~searchskip.eval.generate.prompt_inputs`, left padded) are built once.
* **The vision tower and the projector**: no plan touches them (plans act on the decoder), so
  their output for the subset is the same in every trial. Where the model's ``forward`` takes
  ``mm_encoder_outputs`` (transformers 5.x VLMs, LLaVA included), the image features
  (``get_image_features(...)``, exactly what ``generate`` itself would compute before
  prefill: ``pooler_output``, and Qwen3-VL's ``deepstack_features``) are computed once and
  handed to ``generate`` instead of ``pixel_values``: the answers are the same tokens
  (tested), the vision tower does not run again.

Where the features live (``feature_cache``):

* ``memory``: on the model's device, for the worker's lifetime;
* ``disk``: as safetensors files in a temporary folder (removed by :meth:`PreparedSubset.close`),
  read back batch by batch: for subsets whose features do not fit in memory (LLaVA-1.5-7B
  holds 576 x 4096 values per image, 4.7 MB in fp16);
* ``auto`` (default): ``memory`` when all features fit in ``memory_limit_gb``, else ``disk``;
* ``none``: ``pixel_values`` every trial (the vision tower runs each time).

Models without ``mm_encoder_outputs`` (text-only decoders) get the pre-tokenized batches only.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from searchskip.eval.batching import batch_spans, image_keys
from searchskip.eval.generate import prompt_inputs

__all__ = ["FEATURE_CACHES", "PreparedBatch", "PreparedSubset", "prepare_subset", "encodes_images_once"]

FEATURE_CACHES = ("auto", "memory", "disk", "none")
FeatureCache = Literal["auto", "memory", "disk", "none"]


def encodes_images_once(model: Any) -> bool:
    """Whether ``model.generate`` accepts pre-computed image features (``mm_encoder_outputs``)
    and the model has ``get_image_features`` to compute them."""
    try:
        takes = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return takes and callable(getattr(getattr(model, "base_model", None), "get_image_features", None))


@dataclass
class PreparedBatch:
    """One batch of the subset: its model inputs and (with a feature cache) its image features."""

    inputs: dict
    """``input_ids``, ``attention_mask`` and ``pixel_values`` (on the model's device)."""
    features: dict | None = None
    """The output fields of the image features (``{"pooler_output": [...], ...}``) held in memory
    (``memory`` cache)."""
    feature_file: Path | None = None
    """The safetensors file holding them (``disk`` cache)."""
    device: Any = None
    output_class: Any = None
    """The class of ``get_image_features``' output, rebuilt around the features."""

    def _features(self) -> dict | None:
        if self.features is not None:
            return self.features
        if self.feature_file is None:
            return None
        from safetensors.torch import load_file

        return _unflatten(load_file(str(self.feature_file), device=str(self.device)))

    def generate_inputs(self) -> dict:
        """The keyword arguments for ``model.generate``: the cached features instead of
        ``pixel_values`` when there are any (a fresh ``mm_encoder_outputs`` dict per call,
        since ``generate`` fills it in place); ``image_grid_thw`` stays (Qwen-VL's M-RoPE
        positions follow it)."""
        features = self._features()
        if features is None:
            return dict(self.inputs)
        inputs = {k: v for k, v in self.inputs.items() if k not in ("pixel_values", "image_sizes")}
        inputs["mm_encoder_outputs"] = {"image": self.output_class(**features)}
        return inputs


@dataclass
class PreparedSubset:
    """The batches of a prepared subset (iterate them in order), how its features are cached
    (``cache``: ``memory``, ``disk`` or ``none``) and their size."""

    batches: list[PreparedBatch]
    cache: str
    feature_bytes: int = 0
    folder: Path | None = None
    _closed: bool = field(default=False, repr=False)

    def __iter__(self) -> Iterator[PreparedBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def close(self) -> None:
        """Remove the disk cache's folder (if any)."""
        if self.folder is not None and not self._closed:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._closed = True

    def __del__(self) -> None:
        self.close()


_FEATURE_FIELDS = ("pooler_output", "deepstack_features")
"""Fields of ``get_image_features``' output that the decoder reads (one tensor per image; Qwen3-VL's
``deepstack_features``: per DeepStack level, one tensor per image)."""


def _image_features(model: Any, inputs: dict) -> tuple[Any, dict]:
    """What ``generate`` computes before prefill: ``(output class, named feature tensors)`` of
    ``get_image_features(...)``."""
    import torch

    kwargs = {k: inputs[k] for k in ("pixel_values", "image_sizes", "image_grid_thw") if k in inputs}
    with torch.inference_mode():
        out = model.base_model.get_image_features(**kwargs, return_dict=True)
    return type(out), _flatten(out)


def _flatten(out: Any) -> dict:
    """``{"pooler_output.<image>": t, "deepstack_features.<level>.<image>": t}`` of an encoder output
    (``{"pooler_output": t}`` where the model gives one tensor for all images, as InternVL does)."""
    import torch

    flat: dict = {}
    for name in _FEATURE_FIELDS:
        value = getattr(out, name, None)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            flat[name] = value.detach()
        elif name == "pooler_output":
            flat.update({f"{name}.{i}": t.detach() for i, t in enumerate(value)})
        else:
            flat.update({f"{name}.{level}.{i}": t.detach() for level, per_image in enumerate(value)
                         for i, t in enumerate(per_image)})
    return flat


def _unflatten(flat: dict) -> dict:
    """The output fields of :func:`_flatten`'s tensors (lists in image / level order)."""
    fields: dict = {}
    for key in sorted(flat, key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")]):
        name, *index = key.split(".")
        if not index:  # one tensor for all images
            fields[name] = flat[key]
        elif name == "pooler_output":
            fields.setdefault(name, []).append(flat[key])
        else:
            levels = fields.setdefault(name, [])
            level = int(index[0])
            while len(levels) <= level:
                levels.append([])
            levels[level].append(flat[key])
    return fields


def prepare_subset(loaded: Any, dataset: Any, batch_size: int, *, feature_cache: FeatureCache = "auto",
                   memory_limit_gb: float = 2.0, folder: str | Path | None = None,
                   keys: Sequence | None = None) -> PreparedSubset:
    """Tokenize and batch ``dataset`` once and (``feature_cache`` other than ``none``, on a model
    that takes ``mm_encoder_outputs``) compute its image features once (see the module doc).
    Batches are consecutive rows, cut also where the image shape changes
    (:mod:`searchskip.eval.batching`: order the dataset with ``sorted_by_image`` first, and pass
    its ``keys`` so the images are not read again).
    ``folder``: where a disk cache makes its temporary folder (default: the system's temp dir)."""
    if feature_cache not in FEATURE_CACHES:
        raise ValueError(f"feature_cache must be one of {', '.join(FEATURE_CACHES)}, but got {feature_cache!r}")
    batches: list[PreparedBatch] = []
    for start, stop in batch_spans(keys if keys is not None else image_keys(loaded, dataset), batch_size):
        rows = dataset[start:stop]
        batches.append(PreparedBatch(prompt_inputs(loaded, rows["image"], rows["question"]), device=loaded.device))
    with_images = [b for b in batches if "pixel_values" in b.inputs]
    if feature_cache == "none" or not with_images or not encodes_images_once(loaded.model):
        return PreparedSubset(batches, cache="none")

    limit = memory_limit_gb * 2 ** 30
    mode = feature_cache
    total = 0
    out_folder: Path | None = None
    for index, batch in enumerate(with_images):
        output_class, features = _image_features(loaded.model, batch.inputs)
        batch.output_class = output_class
        size = sum(t.numel() * t.element_size() for t in features.values())
        if mode == "auto":  # estimated from the first batch: every batch holds as many images per row
            mode = "memory" if size * len(with_images) <= limit else "disk"
        total += size
        if mode == "memory":
            batch.features = _unflatten(features)  # once, not every trial
            continue
        from safetensors.torch import save_file

        if out_folder is None:
            out_folder = Path(tempfile.mkdtemp(prefix="searchskip-features-", dir=folder))
        batch.feature_file = out_folder / f"batch-{index:05d}.safetensors"
        save_file({k: t.contiguous().cpu() for k, t in features.items()}, str(batch.feature_file))
    return PreparedSubset(batches, cache=mode, feature_bytes=total, folder=out_folder)
