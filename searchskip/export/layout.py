"""Tensor names as the released checkpoints have them, so that every loader finds an export's weights.

transformers 5.x saves a CLIP or SigLIP vision tower inside a LLaVA-style model without the
``vision_model.`` level (``vision_tower.encoder.layers.0...``), while the released llava-hf and
Gemma 3 checkpoints, older transformers and vLLM's loaders name them
``vision_tower.vision_model.encoder.layers.0...``. Every transformers version reads the released
names (it removes the level when it loads), so an export writes those: :func:`release_names`
renames the tensors of the safetensors files ``save_pretrained`` wrote, by rewriting each file's
header and copying its data unchanged (no tensor is loaded; the file is replaced atomically).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

__all__ = ["FLATTENED_TOWERS", "release_names", "rename_tensors", "tower_names"]

FLATTENED_TOWERS = ("CLIPVisionModel", "SiglipVisionModel")
"""Vision-tower classes whose tensors the released checkpoints keep under ``vision_model.``."""
_PREFIX = "vision_tower."
_LEVEL = "vision_model."


def tower_names(model: Any) -> Callable[[str], str] | None:
    """The renaming :func:`release_names` applies for ``model``: a CLIP or SigLIP vision tower under
    ``vision_tower`` gets its ``vision_model.`` level back; ``None`` for other models."""
    from searchskip.arch import get_adapter

    tower = get_adapter(model).vision_tower(model)
    if tower is None or type(tower).__name__ not in FLATTENED_TOWERS:
        return None

    def rename(name: str) -> str:
        if name.startswith(_PREFIX) and not name.startswith(_PREFIX + _LEVEL):
            return _PREFIX + _LEVEL + name[len(_PREFIX):]
        return name

    return rename


def release_names(model: Any, folder: str | Path) -> None:
    """Rename the tensors of the safetensors files in ``folder`` (written by ``model.save_pretrained``)
    as the released checkpoints name them (see the module doc); nothing for other models."""
    rename = tower_names(model)
    if rename is None:
        return
    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")):
        rename_tensors(path, rename)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in (data.get("weight_map") or {}).items()}
        _replace_text(index, json.dumps(data, indent=2) + "\n")


def rename_tensors(path: str | Path, rename: Callable[[str], str]) -> None:
    """Rename the tensors of the safetensors file ``path`` by ``rename``: a new header, the data
    copied unchanged, then the file replaced atomically (nothing is written when no name changes)."""
    path = Path(path)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        renamed = {(k if k == "__metadata__" else rename(k)): v for k, v in header.items()}
        if list(renamed) == list(header):
            return
        raw = json.dumps(renamed, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data stays 8-byte aligned, as safetensors writes it
        tmp = path.with_name(f".{path.name}.renaming")
        try:
            with open(tmp, "wb") as out:
                out.write(struct.pack("<Q", len(raw)))
                out.write(raw)
                shutil.copyfileobj(f, out, 1 << 24)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.renaming")
    tmp.write_text(text)
    os.replace(tmp, path)
