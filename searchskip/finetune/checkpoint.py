"""Fine-tune checkpoints: ``<out>/checkpoints/step-<N>/`` with no pickle anywhere.

A checkpoint folder holds

* ``tensors.safetensors``: the trainable tensors (``param.<name>``), the optimizer's state
  tensors (``optim.<index>.<key>``, index = position in the optimizer's parameter list) and the
  torch RNG states (``rng.torch``, ``rng.cuda``);
* ``state.json``: step, epoch, losses so far, seconds, accuracy before training, the optimizer
  state's non-tensor values, and the recipe fields the trajectory depends on (:data:`PINNED`);
* ``manifest.json``: sha256 of both (written by :func:`searchskip.export.atomic.atomic_directory`,
  which writes the folder to a temporary sibling and renames it into place, so a folder named
  ``step-<N>`` is always complete).

:func:`latest` finds the newest complete checkpoint; :func:`check_compatible` refuses a
checkpoint whose pinned fields differ from the recipe, naming the field.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from searchskip.errors import ConfigError, Problem

__all__ = ["PINNED", "KEEP", "Checkpoint", "check_compatible", "latest", "load", "save"]

PINNED = ("method", "model", "plan", "lr", "batch_size", "seed", "epochs", "schedule", "warmup_ratio",
          "weight_decay", "max_grad_norm", "train_split", "train_limit", "lora")
"""Recipe fields a checkpoint is only valid for (changing any of them changes the run)."""

KEEP = 2
"""Complete checkpoints kept; older ones are deleted after a new one is written."""

TENSORS = "tensors.safetensors"
STATE = "state.json"
_STEP = re.compile(r"step-(\d+)")


class Checkpoint:
    """A loaded checkpoint: its folder, ``state`` (the JSON) and ``tensors`` (name -> tensor)."""

    def __init__(self, folder: Path, state: dict, tensors: dict[str, Any]):
        self.folder, self.state, self.tensors = folder, state, tensors

    @property
    def step(self) -> int:
        return int(self.state["step"])


def _complete(folder: Path) -> bool:
    return (folder / STATE).is_file() and (folder / TENSORS).is_file()


def latest(root: Path) -> Path | None:
    """The ``step-<N>`` folder with the largest N under ``root`` that is complete, or ``None``."""
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and _complete(p)]
    return max(found)[1] if found else None


def save(root: Path, step: int, tensors: Mapping[str, Any], state: dict) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest :data:`KEEP`."""
    from safetensors.torch import save_file

    from searchskip.export.atomic import atomic_directory

    target = root / f"step-{step}"
    with atomic_directory(target, kind="checkpoint") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n")
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)))
    for _, old in steps[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load(folder: Path) -> Checkpoint:
    """Read a checkpoint folder (tensors on the CPU)."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE).read_text())
    return Checkpoint(folder, state, load_file(str(folder / TENSORS)))


def check_compatible(ckpt: Checkpoint, recipe: Mapping[str, Any], file: str | None) -> None:
    """Raise :class:`ConfigError` naming every pinned field whose value differs from the checkpoint's."""
    saved = ckpt.state.get("recipe", {})
    problems = []
    for name in PINNED:
        old, new = saved.get(name), recipe.get(name)
        if old != new:
            key = "model.id" if name == "model" else ("model (its runtime plan)" if name == "plan" else f"finetune.{name}")
            problems.append(Problem(file, key, (
                f"the checkpoint {ckpt.folder} was written with {name}={old!r}, but the recipe now gives "
                f"{new!r}, so it cannot be resumed; put the value back, or start over with "
                f"`searchskip finetune --restart` (or delete {ckpt.folder.parent})")))
    if problems:
        raise ConfigError(problems)
