"""What a study's results depend on, stored in the study so that a resumed run can check it.

A study's trials are only comparable while the model, the validation subset, the search
space, the budget, the objectives, the metric and the sampler's seed stay the same.
:func:`fingerprint` gathers those as a flat ``{field: JSON value}`` dict; it is written into
the study's user attributes when the study is created, and :func:`differences` lists the
fields a resumed run would change (each with both values) so that the run can be refused.

The space is fingerprinted by the SHA-256 of its file's bytes (a comment change counts as a
change: better a needless refusal than mixing trials of two spaces). Only JSON values are
stored, so the fingerprint survives every optuna storage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from searchskip.config.job import Job
from searchskip.config.loader import resolve_space

__all__ = ["FINGERPRINT_VERSION", "METRIC", "fingerprint", "differences", "file_sha256"]

FINGERPRINT_VERSION = 1
METRIC = "vqa_accuracy"
"""The metric every search scores (the official VQAv2 accuracy, :mod:`searchskip.eval.vqa_accuracy`)."""


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def _plain(value: Any) -> Any:
    """A JSON round-trip (mappings with sorted keys, tuples as lists) so stored and fresh values compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=_default))


def _default(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def fingerprint(job: Job) -> dict[str, Any]:
    """The fields a study depends on (``job.search`` must be set)."""
    from searchskip.search.samplers import resolved_sampler

    search = job.search
    if search is None:
        raise ValueError("fingerprint() needs a job with a `search` section")
    data = job.data
    budget = search.budget
    return _plain({
        "version": FINGERPRINT_VERSION,
        "model.id": job.model.id,
        "model.revision": job.model.revision,
        "model.dtype": job.model.dtype,
        "model.prompt_template": job.model.prompt_template,
        "data.source": data.source,
        "data.id": data.id,
        "data.revision": data.revision,
        "data.name": data.name,
        "data.path": data.path,
        "data.splits": dict(data.splits),
        "data.carve_validation": data.carve_validation,
        "data.columns": dict(data.columns),
        "data.validation_subset.size": data.validation_subset.size,
        "data.validation_subset.seed": data.validation_subset.seed,
        "eval.max_new_tokens": job.eval.max_new_tokens,
        "search.space.sha256": file_sha256(resolve_space(search.space)),
        "search.budget": {"flops_ratio": budget.flops_ratio, "gflops_per_sample": budget.gflops_per_sample,
                          "count": budget.count, "attention": budget.attention},
        "search.objectives": list(search.objectives),
        "search.metric": METRIC,
        "search.sampler": resolved_sampler(search),
        "search.seed": search.seed,
    })


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, stored value, current value)`` for every field that differs (missing = ``None``)."""
    stored, current = _plain(stored), _plain(current)
    return [(key, stored.get(key), current.get(key)) for key in sorted(set(stored) | set(current))
            if stored.get(key) != current.get(key)]
