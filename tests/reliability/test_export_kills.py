"""A real `searchskip export` (embedded model) killed with SIGKILL at every distinct step: the
export folder that was there before still loads and its manifest verifies (or, once the swap
has happened, the complete new one does); the next export cleans up what the kill left."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import ENV, REPO, demo_job
from searchskip.export.atomic import verify_manifest

PLAN_OLD = REPO / "spaces/plans/skip_block.yaml"   # removes layers 3 and 5: 6 layers
PLAN_NEW = REPO / "spaces/plans/skip_ffn.yaml"      # runtime plan, 8 layers

CHILD = textwrap.dedent("""
    import os, signal, sys
    from searchskip.export import atomic, model, writer
    kill_at, args = int(sys.argv[1]), sys.argv[2:]
    seen = []

    def point(name):
        seen.append(name)
        if len(seen) == kill_at:
            print("killed at", name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def after(fn, name):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            point(name)
            return out
        return wrapped

    def before(fn, name):
        def wrapped(*a, **k):
            point(name)
            return fn(*a, **k)
        return wrapped

    atomic._checkpoint = point
    writer._score = before(writer._score, "scoring")
    model.save_compressed = after(model.save_compressed, "model-saved")
    writer._write_recipe = after(writer._write_recipe, "recipe-written")
    writer._write_report = after(writer._write_report, "report-written")
    from searchskip.cli import main
    code = main(args)
    print("points", " ".join(seen), flush=True)
    sys.exit(code)
""")


def export(tmp_path: Path, plan: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    """``searchskip export`` of ``plan`` with ``tmp_path/job.yaml`` into ``tmp_path/exp``, killed at
    its ``kill_at``-th step (0: never)."""
    args = ["export", "--job", str(tmp_path / "job.yaml"), "--plan", str(plan), "--out", str(tmp_path / "exp"),
            "--no-progress"]
    return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=180)


def kept_layers(folder: Path) -> list[int]:
    return json.loads((folder / "metrics.json").read_text())["model_dir"]["kept_layers"]


def loads(folder: Path) -> int:
    """Load the export as a user would and return its decoder layer count."""
    import searchskip

    loaded = searchskip.load_compressed(folder / "model")
    return loaded.model.config.text_config.num_hidden_layers


@pytest.fixture(scope="module")
def old_export(tmp_path_factory) -> Path:
    """A folder with the job and an export of PLAN_OLD in ``exp/``, made once for the module
    (its manifest names files relative to the export folder, so a copy verifies)."""
    folder = tmp_path_factory.mktemp("old-export")
    demo_job(folder)
    done = export(folder, PLAN_OLD)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((folder / "exp" / "manifest.json").read_text())
    assert manifest["files"] and not any(Path(name).is_absolute() for name in manifest["files"]), manifest
    return folder


def with_old_export(folder: Path, old_export: Path) -> Path:
    """``folder`` with its own job and a copy of the PLAN_OLD export (what the previous export left)."""
    demo_job(folder)
    shutil.copytree(old_export / "exp", folder / "exp")
    return folder


@pytest.fixture(scope="module")
def steps(tmp_path_factory, old_export) -> list[str]:
    """The steps of an export over an existing one, in order (a run without a kill)."""
    folder = with_old_export(tmp_path_factory.mktemp("steps"), old_export)
    done = export(folder, PLAN_NEW)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("points", 1)[1].split()


def distinct_points(steps: list[str]) -> list[tuple[int, str]]:
    """(1-based index, name) of the first occurrence of every distinct step."""
    out, names = [], set()
    for i, name in enumerate(steps, start=1):
        if name not in names:
            names.add(name)
            out.append((i, name))
    return out


def check_kill(tmp_path: Path, old_export: Path, steps: list[str], index: int, name: str) -> None:
    with_old_export(tmp_path, old_export)
    target = tmp_path / "exp"
    assert verify_manifest(target) == [] and kept_layers(target) == [0, 1, 2, 4, 6, 7]  # the copy is whole
    done = export(tmp_path, PLAN_NEW, kill_at=index)
    assert done.returncode == -signal.SIGKILL, (done.stdout, done.stderr)
    assert f"killed at {name}" in done.stdout
    swapped = index > steps.index("exchanged") if "exchanged" in steps else index > steps.index("tmp-moved")
    # Right after the kill, before any cleanup: a complete export is in place and loads.
    assert verify_manifest(target) == []
    assert kept_layers(target) == ([0, 1, 2, 3, 4, 5, 6, 7] if swapped else [0, 1, 2, 4, 6, 7])
    assert loads(target) == (8 if swapped else 6)
    # The next export cleans up and replaces it.
    assert export(tmp_path, PLAN_OLD).returncode == 0
    assert verify_manifest(target) == [] and kept_layers(target) == [0, 1, 2, 4, 6, 7]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp.")] == []


def test_the_steps_cover_scoring_writing_and_the_swap(steps):
    names = [name for _, name in distinct_points(steps)]
    assert len(names) >= 10, names
    for name in ("scoring", "model-saved", "report-written", "manifest-written", "old-removed"):
        assert name in names


FAST = ("model-saved", "exchanged")


@pytest.mark.parametrize("which", FAST)
def test_an_export_killed_at_a_step_leaves_a_loadable_one(tmp_path, old_export, steps, which):
    points = dict((name, i) for i, name in distinct_points(steps))
    if which not in points:
        pytest.skip(f"no {which!r} step here (renameat2 exchange unavailable)")
    check_kill(tmp_path, old_export, steps, points[which], which)


@pytest.mark.reliability_full
def test_an_export_killed_at_every_step_leaves_a_loadable_one(tmp_path_factory, old_export, steps):
    points = distinct_points(steps)
    assert len(points) >= 10
    for index, name in points:
        check_kill(tmp_path_factory.mktemp(f"kill-{index}"), old_export, steps, index, name)
    print(f"export kills survived: {len(points)} ({', '.join(n for _, n in points)})")
