"""What ``searchskip export`` may replace, tried by class of what its target holds (issue 15, items 2, 3).

The rule (:mod:`searchskip.export.owner`): an export replaces only an export folder searchskip
wrote (its ``manifest.json`` says ``kind: export``) that holds nothing a user added; an export's
``finetune/`` is carried into the new export when the new ``model/`` is the one it was fine-tuned
from, and refused otherwise. Every refusal is exit code 2 with one message naming the path and the
rule, comes before any scoring, and leaves every byte, link and folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from exports import PLAN_A, PLAN_B, export, fine_tune, leftovers, snapshot, tiny_study
from helpers import demo_job
from searchskip.cli import main
from searchskip.export import writer
from searchskip.export.atomic import verify_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

RULE = "searchskip replaces only folders it wrote itself"


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Made once for the module: a job; an export of PLAN_A (``exp``); an export of PLAN_A that was
    fine-tuned (``tuned``); a study folder of 2 trials (``study``)."""
    root = tmp_path_factory.mktemp("made")
    job = demo_job(root)
    assert export(job, PLAN_A, root / "exp") == 0
    assert export(job, PLAN_A, root / "tuned") == 0
    fine_tune(root / "tuned")
    return {"root": root, "job": job, "exp": root / "exp", "tuned": root / "tuned", "study": tiny_study(root / "s")}


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if the export scores anything: a refusal must come before the work."""
    def scored(*a, **k):
        raise AssertionError("the export scored a model before refusing its target")

    monkeypatch.setattr(writer, "_score", scored)


def copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


# ----------------------------------------------------------------------------- the classes refused
# Each builds what is at the target in ``tmp`` and returns (the export argv, the target, what else
# must stay as it is, a name the message must give).

def foreign_folder(tmp: Path, made: dict) -> tuple:
    out = tmp / "mine"
    (out / "chapter").mkdir(parents=True)
    (out / "thesis.txt").write_text("keep\n")
    (out / "chapter" / "one.md").write_text("# one\n")
    return _hand(made, out), out, [], "thesis.txt"


def study_folder(tmp: Path, made: dict) -> tuple:
    study = copy(made["study"], tmp / "S")
    return ["export", str(study), "--out", str(study), "--no-progress"], study, [], "study.journal"


def a_file(tmp: Path, made: dict) -> tuple:
    out = tmp / "notes"
    out.write_text("not a folder\n")
    return _hand(made, out), out, [], "is a file"


def link_to_a_foreign_folder(tmp: Path, made: dict) -> tuple:
    outside = tmp / "elsewhere"
    outside.mkdir()
    (outside / "data.csv").write_text("1,2\n")
    (tmp / "out").symlink_to(outside, target_is_directory=True)
    return _hand(made, tmp / "out"), tmp / "out", [outside], "symbolic link"


def link_to_an_export(tmp: Path, made: dict) -> tuple:
    outside = copy(made["exp"], tmp / "elsewhere")
    (tmp / "out").symlink_to(outside, target_is_directory=True)
    return _hand(made, tmp / "out"), tmp / "out", [outside], "symbolic link"


def export_with_user_files(tmp: Path, made: dict) -> tuple:
    out = copy(made["exp"], tmp / "exp")
    (out / "notes.txt").write_text("my notes\n")
    (out / "model" / "my_adapter.bin").write_bytes(b"\0" * 16)
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    return _hand(made, out, PLAN_B), out, [], "model/my_adapter.bin"


def fine_tuned_export_of_another_plan(tmp: Path, made: dict) -> tuple:
    out = copy(made["tuned"], tmp / "tuned")
    return _hand(made, out, PLAN_B), out, [], "finetune/"


def fine_tuned_model_folder(tmp: Path, made: dict) -> tuple:
    out = copy(made["tuned"], tmp / "tuned") / "finetune" / "model"
    return _hand(made, out), out, [], "fine-tuned model"


def checkpoint_folder(tmp: Path, made: dict) -> tuple:
    root = copy(made["tuned"], tmp / "tuned") / "finetune" / "checkpoints"
    out = sorted(root.iterdir())[-1]
    return _hand(made, out), out, [], "checkpoint"


def _hand(made: dict, out: Path, plan: Path = PLAN_A) -> list[str]:
    return ["export", "--job", str(made["job"]), "--plan", str(plan), "--out", str(out), "--no-progress"]


REFUSED: list[Callable] = [foreign_folder, study_folder, a_file, link_to_a_foreign_folder, link_to_an_export,
                           export_with_user_files, fine_tuned_export_of_another_plan, fine_tuned_model_folder,
                           checkpoint_folder]


@pytest.mark.parametrize("case", REFUSED, ids=[c.__name__ for c in REFUSED])
def test_an_export_never_replaces_what_it_did_not_write(tmp_path, made, no_scoring, capsys, case):
    argv, target, others, needle = case(tmp_path, made)
    before = {p: snapshot(p) for p in (target, *others)}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(target) in err and RULE in " ".join(err.split()), err
    assert needle in err
    assert {p: snapshot(p) for p in (target, *others)} == before
    assert leftovers(target) == []


# ----------------------------------------------------------------------------- the classes written


def test_an_empty_folder_is_written(tmp_path, made):
    out = tmp_path / "empty"
    out.mkdir()
    assert export(made["job"], PLAN_A, out) == 0
    assert verify_manifest(out) == [] and manifest_of(out)["kind"] == "export"


def test_an_export_replaces_its_own_export(tmp_path, made):
    out = copy(made["exp"], tmp_path / "exp")
    assert export(made["job"], PLAN_B, out) == 0
    assert verify_manifest(out) == []
    assert json.loads((out / "metrics.json").read_text())["plan"]["layers"] == {"5": "skip_ffn", "6": "skip_ffn"}
    assert leftovers(out) == []


def test_a_fine_tuned_export_still_matches_its_manifest(made):
    assert (made["tuned"] / "finetune" / "model").is_dir()
    assert verify_manifest(made["tuned"]) == []
    assert manifest_of(made["tuned"])["kept"] == ["finetune"]


def test_exporting_the_same_plan_again_keeps_the_fine_tune(tmp_path, made, capsys):
    out = copy(made["tuned"], tmp_path / "tuned")
    fine = snapshot(out / "finetune")
    inode = (out / "finetune" / "model" / "model.safetensors").stat().st_ino
    capsys.readouterr()
    assert export(made["job"], PLAN_A, out) == 0
    assert "kept finetune/" in " ".join(capsys.readouterr().out.split())
    assert snapshot(out / "finetune") == fine
    assert (out / "finetune" / "model" / "model.safetensors").stat().st_ino == inode  # linked, not copied
    assert verify_manifest(out) == [] and verify_manifest(out / "finetune" / "model") == []
    assert leftovers(out) == []


def test_a_fine_tune_the_new_model_was_not_made_from_is_refused_at_the_swap(tmp_path, made, capsys):
    """The up-front check reads the old plan from metrics.json; edited to say PLAN_B, it passes, and
    the swap itself finds that model/ changed: refused, the fine-tune and the old export intact."""
    out = copy(made["tuned"], tmp_path / "tuned")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["plan"] = {"version": 1, "layers": {"5": "skip_ffn", "6": "skip_ffn"}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(out)
    capsys.readouterr()
    assert export(made["job"], PLAN_B, out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out) in err and "finetune/" in err and "model/" in err
    assert snapshot(out) == before and leftovers(out) == []


# ----------------------------------------------------------------------------- study exports


def test_reexporting_a_study_keeps_its_fine_tune(tmp_path, made):
    """The issue's steps: export a study, fine-tune the export, export the study again."""
    study = copy(made["study"], tmp_path / "demo")
    assert main(["export", str(study), "--no-progress"]) == 0
    [trial] = [p for p in (study / "export").iterdir() if not p.name.startswith(".")]
    fine = snapshot(fine_tune(trial))
    assert verify_manifest(trial) == []
    assert main(["export", str(study), "--no-progress"]) == 0
    assert snapshot(trial / "finetune") == fine
    assert verify_manifest(trial) == []


def test_a_pareto_export_checks_every_target_before_the_first_export(tmp_path, made, no_scoring, capsys):
    from searchskip.commands.ls import open_existing
    from searchskip.search.leaderboard import pareto

    front = [t.number for t in pareto(open_existing(str(made["study"])))]
    base = tmp_path / "front"
    (base / f"trial-{front[-1]}").mkdir(parents=True)
    (base / f"trial-{front[-1]}" / "mine.txt").write_text("keep\n")
    assert main(["export", str(made["study"]), "--trial", "pareto", "--out", str(base), "--no-progress"]) == 2
    assert f"trial-{front[-1]}" in capsys.readouterr().err
    assert sorted(os.listdir(base)) == [f"trial-{front[-1]}"]
