"""What the lmms-eval backend scores: :func:`load_target`.

Either an **export** (``export=DIR``: an export folder or its ``model/`` folder; its runtime plan is
applied as :func:`searchskip.load_compressed` applies it), or a **job's model** (``job=JOB.yaml``)
with an optional **plan** (``plan=PLAN.yaml``, applied as ``searchskip eval --plan`` applies it:
calibrated pruning included). Needs no lmms-eval.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Target", "load_target", "model_folder"]


@dataclass
class Target:
    """A loaded model with its plan active, and the plan FLOP counts take."""

    loaded: Any
    """The :class:`~searchskip.models.LoadedModel` (plan applied)."""
    plan: Any
    """The plan on the *source* model (an export's ``source_plan``), or ``None``."""


def _source_plan(info: dict) -> Any:
    """The plan an export record says its model was made with (``None`` when it says none)."""
    from searchskip.plan import Plan

    return Plan.from_json(json.dumps(info["source_plan"])) if info.get("source_plan") else None


def model_folder(export: str | Path) -> Path:
    """The ``model/`` folder of an export folder, or ``export`` itself when it is the model folder;
    :class:`~searchskip.errors.ConfigError` naming the path otherwise."""
    from searchskip.errors import ConfigError, Problem
    from searchskip.export.model import EXPORT_FILE, MODEL_DIR

    path = Path(export).expanduser()
    for folder in (path / MODEL_DIR, path):
        if (folder / EXPORT_FILE).is_file():
            return folder
    raise ConfigError([Problem(str(path), "export", f"must be a folder written by `searchskip export` (its "
                                                    f"{MODEL_DIR}/{EXPORT_FILE} or {EXPORT_FILE} is missing)")])


def load_target(*, export: str | None = None, job: str | None = None, plan: str | None = None,
                device: str | None = None, dtype: str | None = None) -> Target:
    """The model to score: ``export``, or ``job``'s model with ``plan`` (see the module doc);
    ``device`` / ``dtype`` override the job's (an export without a job: ``cpu`` and the dtype its
    config was saved in). :class:`~searchskip.errors.ConfigError` for a wrong combination."""
    from searchskip.config.job import ModelSpec
    from searchskip.errors import ConfigError, Problem, in_job
    from searchskip.models import DTYPES, load_model
    from searchskip.plan import Plan

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError([Problem(None, "model_args", f"dtype must be float32, float16 or bfloat16, but got {dtype!r}")])
    if (export is None) == (job is None):
        raise ConfigError([Problem(None, "model_args", "give exactly one of export=EXPORT_DIR or job=JOB.yaml "
                                                       "(with plan=PLAN.yaml to apply a plan to the job's model)")])
    if export is not None:
        if plan is not None:
            raise ConfigError([Problem(None, "model_args", "plan= applies to job=, not to an export (an export "
                                                           "runs its own plan; plans do not stack)")])
        from searchskip.export.model import read_export_info

        folder = model_folder(export)
        info = read_export_info(folder)  # a damaged record is a ModelError naming the file
        try:  # the dtype the export was saved in; a damaged config.json is load_model's to report
            saved = json.loads((folder / "config.json").read_text()).get("dtype")
        except (OSError, ValueError, AttributeError):
            saved = None
        spec = ModelSpec(id=str(folder.resolve()), device=device or "cpu",
                         dtype=dtype or (saved if saved in DTYPES else "float32"))
        return Target(loaded=load_model(spec), plan=_source_plan(info))
    from searchskip.config.loader import load_job
    from searchskip.errors import SearchSkipError
    from searchskip.eval.planned import apply_plan, check_unplanned

    parsed = load_job(job)
    spec = dataclasses.replace(parsed.model, device=device or parsed.model.device, dtype=dtype or parsed.model.dtype)
    try:
        loaded = load_model(spec)
    except SearchSkipError as err:
        raise in_job(job, err, "model.id") from None
    from searchskip.export.model import read_export_info

    info = read_export_info(loaded.source) if Path(loaded.source).is_dir() else None
    if info is not None:  # the job's model is an export: it runs its own plan, priced on its source model
        if plan is not None:
            check_unplanned(loaded, job, "model.id")
        return Target(loaded=loaded, plan=_source_plan(info))
    loaded_plan = Plan.load(plan) if plan is not None else None
    if loaded_plan is not None:
        apply_plan(loaded, parsed, loaded_plan, source=plan)
    return Target(loaded=loaded, plan=loaded_plan)
