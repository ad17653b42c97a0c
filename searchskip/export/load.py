"""Load an exported model with its runtime plan: :func:`load_compressed` (the runtime plan is applied by
:func:`searchskip.export.model.apply_runtime_plan`, which :func:`searchskip.models.load_model` runs on every
model it loads).

::

    import searchskip

    loaded = searchskip.load_compressed("outputs/demo/export/trial-14/model")
    loaded.model.generate(...)       # a plain transformers model; the runtime plan is applied
    loaded.processor                 # its processor

A block-only export needs none of this: ``LlavaForConditionalGeneration.from_pretrained(path)``
loads it. ``load_compressed`` is for exports whose plan keeps runtime ops (sublayer skips,
token scopes, parallel ops): it loads the folder with plain ``from_pretrained`` (safetensors, no
``trust_remote_code``) and applies the stored plan with :func:`searchskip.apply.apply`. A job
whose ``model.id`` is such a folder loads the same way (:func:`~searchskip.models.load_model`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_compressed"]


def load_compressed(spec_or_path: Any, *, device: str | None = None) -> Any:
    """A :class:`~searchskip.models.LoadedModel` of an export's ``model/`` folder, with its runtime
    plan applied. ``spec_or_path``: a folder path or a job's ``model`` spec
    (:class:`~searchskip.config.job.ModelSpec`); ``device`` overrides the spec's. The same as
    :func:`~searchskip.models.load_model`, which loads every model this way.

    The prompt template is the one the search scored the plan with (stored in the export),
    unless the spec names one."""
    import dataclasses

    from searchskip.config.job import ModelSpec
    from searchskip.models import load_model

    spec = spec_or_path if isinstance(spec_or_path, ModelSpec) else ModelSpec(id=str(spec_or_path))
    if device is not None:
        spec = dataclasses.replace(spec, device=device)
    return load_model(spec)
