"""Helpers of the export reliability tests (``test_foreign_folders.py``, ``test_file_system_faults.py``).

A plain module (``tests/reliability`` is on ``sys.path`` while its tests run). Exports run in this
process through :func:`searchskip.cli.main` on the embedded model (a few seconds each), so a test
can monkeypatch the file system or the scoring.

* :func:`export`: ``searchskip export --job --plan --out``; :func:`fine_tune`: a short real
  ``searchskip finetune`` of an export's recipe; :func:`tiny_study`: a 2-trial ``searchskip search``;
* :func:`snapshot`: every path under a path (links, folders, file bytes), to assert "unchanged";
* :func:`leftovers`: what a write of a folder left beside it (``.<name>.tmp-...`` and the like).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from helpers import REPO, demo_job
from searchskip.cli import main

PLAN_A = REPO / "spaces/plans/skip_block.yaml"  # removes layers 3 and 5
PLAN_B = REPO / "spaces/plans/skip_ffn.yaml"    # a runtime plan, all 8 layers kept


def export(job: Path, plan: Path, out: Path, *more: str) -> int:
    """``searchskip export --job JOB --plan PLAN --out OUT``; its exit code."""
    return main(["export", "--job", str(job), "--plan", str(plan), "--out", str(out), "--no-progress", *more])


def fine_tune(export_dir: Path) -> Path:
    """Run the export's ``finetune.yaml`` cut to a few steps (32 training and 16 scored questions, a
    checkpoint every step; the cut copy lies beside the export, its paths still point into it), as
    ``searchskip finetune`` runs it; returns the ``finetune/`` folder it wrote."""
    data = yaml.safe_load((export_dir / "finetune.yaml").read_text())
    data["finetune"].update({"train_limit": 32, "eval_limit": 16, "batch_size": 16, "checkpoint_every": 1})
    recipe = export_dir.parent / f"{export_dir.name}-finetune.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["finetune", str(recipe), "--no-progress"]) == 0
    out = Path(data["finetune"]["out"])
    assert (out / "model" / "manifest.json").is_file() and (out / "metrics.json").is_file()
    return out


def tiny_study(folder: Path) -> Path:
    """A study folder of 2 scored trials (``searchskip search``, ~15 s); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    job = demo_job(folder, trials=2)
    assert main(["search", str(job), "--no-progress"]) == 0
    return folder / "out" / "demo"


def snapshot(path: Path) -> dict[str, object]:
    """Every path at and under ``path``, not following links: a link's target, ``"dir"``, or a
    file's bytes; keyed by the path relative to ``path`` (``"."`` itself)."""
    found: dict[str, object] = {}

    def visit(p: Path, rel: str) -> None:
        if p.is_symlink():
            found[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            found[rel] = "dir"
            for child in sorted(p.iterdir()):
                visit(child, child.name if rel == "." else f"{rel}/{child.name}")
        elif p.exists():
            found[rel] = p.read_bytes()

    visit(path, ".")
    return found


def leftovers(target: Path) -> list[str]:
    """Names beside ``target`` that a write of it leaves (``.<name>.tmp-<pid>-...``, ``.old-``, ``.trash-``)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))
