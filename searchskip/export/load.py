"""Load an exported model with its runtime plan: :func:`load_compressed`.

::

    import searchskip

    loaded = searchskip.load_compressed("outputs/demo/export/trial-14/model")
    loaded.model.generate(...)       # a plain transformers model; the runtime plan is applied
    loaded.processor                 # its processor

A block-only export needs none of this: ``LlavaForConditionalGeneration.from_pretrained(path)``
loads it. ``load_compressed`` is for exports whose plan keeps runtime ops (sublayer skips,
token scopes, parallel ops): it loads the folder with plain ``from_pretrained`` (safetensors, no
``trust_remote_code``) and applies the stored plan with :func:`searchskip.apply.apply`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["load_compressed"]


def load_compressed(spec_or_path: Any, *, device: str | None = None) -> Any:
    """A :class:`~searchskip.models.LoadedModel` of an export's ``model/`` folder, with its runtime
    plan applied. ``spec_or_path``: a folder path or a job's ``model`` spec
    (:class:`~searchskip.config.job.ModelSpec`); any other model (no ``searchskip_export.json``)
    loads as :func:`~searchskip.models.load_model` loads it. ``device`` overrides the spec's.

    The prompt template is the one the search scored the plan with (stored in the export),
    unless the spec names one."""
    import dataclasses

    from searchskip.apply import apply
    from searchskip.config.job import ModelSpec
    from searchskip.errors import ModelError
    from searchskip.export.model import EXPORT_FILE, read_export_info
    from searchskip.models import load_model
    from searchskip.plan import Plan

    spec = spec_or_path if isinstance(spec_or_path, ModelSpec) else ModelSpec(id=str(spec_or_path))
    if device is not None:
        spec = dataclasses.replace(spec, device=device)
    info = read_export_info(spec.id) if Path(spec.id).is_dir() else None
    if info is not None and spec.prompt_template is None and info.get("prompt_template"):
        spec = dataclasses.replace(spec, prompt_template=info["prompt_template"])
    loaded = load_model(spec)
    if info is not None and info.get("runtime_plan") is not None:
        file = str(Path(spec.id) / EXPORT_FILE)
        plan = Plan.from_json(json.dumps(info["runtime_plan"]), file=file)
        try:
            apply(loaded.model, plan)
        except Exception as err:
            raise ModelError(f"{file}: runtime_plan does not fit the model in {spec.id}: {err}") from None
    return loaded
