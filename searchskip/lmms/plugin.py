"""The ``lmms_eval.models`` entry point ``searchskip`` (``pyproject.toml``): lmms-eval loads it when it
builds its model registry, so ``lmms-eval --model searchskip`` finds
:class:`~searchskip.lmms.backend.SearchSkipLMMS`. Imports nothing heavy: lmms-eval calls it at import
time for every run, whatever the model."""

from __future__ import annotations

__all__ = ["MODEL_ID", "CLASS_PATH", "manifests"]

MODEL_ID = "searchskip"
CLASS_PATH = "searchskip.lmms.backend.SearchSkipLMMS"


def manifests():
    """lmms-eval's ``ModelManifest`` of the ``searchskip`` model (a simple-mode model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
