"""``searchskip export`` on a file system that refuses writes (issue 15, item 7): a read-only file
system (EROFS) and a full disk (ENOSPC) at every step of an export.

Tests run as root, for whom permissions refuse nothing, so the faults are injected where searchskip
meets the file system: :func:`read_only` makes every write call under one folder (``os.mkdir``,
``open`` for writing, renames, links, deletions, the ``renameat2`` swap) raise ``OSError(EROFS)``;
the disk-full cases raise ``OSError(ENOSPC)`` at one named step of the export. Every fault must end
in exit code 2 with one message naming the path and the system's reason, no traceback, the previous
export (or the study) exactly as it was, and nothing half-written beside it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from exports import PLAN_A, PLAN_B, export, fine_tune, leftovers, snapshot, tiny_study
from helpers import demo_job
from helpers import fs_fault as _fault
from helpers import read_only as helpers_read_only
from searchskip.cli import main
from searchskip.export import atomic, model, writer
from searchskip.export.atomic import verify_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

READ_ONLY = os.strerror(errno.EROFS)
DISK_FULL = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Made once: a job, an export of PLAN_A (``exp``), a fine-tuned one (``tuned``), a study."""
    root = tmp_path_factory.mktemp("made")
    job = demo_job(root)
    assert export(job, PLAN_A, root / "exp") == 0
    assert export(job, PLAN_A, root / "tuned") == 0
    fine_tune(root / "tuned")
    return {"job": job, "exp": root / "exp", "tuned": root / "tuned", "study": tiny_study(root / "s")}


def read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """:func:`helpers.read_only`, and the export's atomic exchange of two folders refused under ``root`` too."""
    inside = helpers_read_only(monkeypatch, root)
    real_exchange = atomic._exchange

    def exchange(a, b):
        if inside(a) or inside(b):
            raise _fault(errno.EROFS, b)
        return real_exchange(a, b)

    monkeypatch.setattr(atomic, "_exchange", exchange)


def _scored(*a, **k):
    raise AssertionError("the export scored a model before finding that it cannot write its target")


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if the export scores anything: a target it cannot write must fail first."""
    monkeypatch.setattr(writer, "_score", _scored)


def clear_error(capsys, *needles: object) -> str:
    err = capsys.readouterr().err
    # rich 13.x ends a progress display on a non-terminal with a newline; the message itself comes first
    assert "Traceback" not in err and err.lstrip("\n").startswith("error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


# ----------------------------------------------------------------------------- read-only file system


def new_folder(tmp: Path, made: dict) -> tuple[Path, Path]:
    return tmp, tmp / "exp"


def new_nested_folder(tmp: Path, made: dict) -> tuple[Path, Path]:
    return tmp, tmp / "a" / "b" / "exp"


def existing_export(tmp: Path, made: dict) -> tuple[Path, Path]:
    shutil.copytree(made["exp"], tmp / "exp")
    return tmp, tmp / "exp"


def fine_tuned_export(tmp: Path, made: dict) -> tuple[Path, Path]:
    shutil.copytree(made["tuned"], tmp / "tuned", symlinks=True)
    return tmp, tmp / "tuned"


READ_ONLY_CASES = [new_folder, new_nested_folder, existing_export, fine_tuned_export]


@pytest.mark.parametrize("case", READ_ONLY_CASES, ids=[c.__name__ for c in READ_ONLY_CASES])
def test_exporting_to_a_read_only_file_system_fails_at_once(tmp_path, made, monkeypatch, capsys, no_scoring, case):
    mount, out = case(tmp_path / "ro", made)
    mount.mkdir(exist_ok=True)
    before = snapshot(mount)
    read_only(monkeypatch, mount)
    assert export(made["job"], PLAN_A, out) == 2
    monkeypatch.undo()
    clear_error(capsys, out, READ_ONLY)
    assert snapshot(mount) == before


def test_a_study_on_a_read_only_file_system_exports_elsewhere(tmp_path, made, monkeypatch, capsys):
    """Into the study's own export/ folder: refused before any scoring. To a writable --out: the
    study is only read (the unplanned model's cached score is skipped), and the export is written."""
    study = shutil.copytree(made["study"], tmp_path / "ro" / "demo")
    before = snapshot(study)
    read_only(monkeypatch, tmp_path / "ro")
    with pytest.MonkeyPatch.context() as guard:
        guard.setattr(writer, "_score", _scored)
        assert main(["export", str(study), "--no-progress"]) == 2
    clear_error(capsys, study / "export", READ_ONLY)
    assert main(["export", str(study), "--out", str(tmp_path / "rw"), "--no-progress"]) == 0
    monkeypatch.undo()
    assert snapshot(study) == before
    assert verify_manifest(tmp_path / "rw") == []


# ----------------------------------------------------------------------------- disk full


def _raise_at(monkeypatch: pytest.MonkeyPatch, point: str, where: Path) -> None:
    """Raise ENOSPC (naming a path inside the folder being written) at the export step ``point``."""
    def boom(path: Path = where):
        raise _fault(errno.ENOSPC, path)

    if point in ("tmp-created", "manifest-hashed", "manifest-written", "synced", "kept-linked"):
        real = atomic._checkpoint
        monkeypatch.setattr(atomic, "_checkpoint", lambda name: boom() if name == point else real(name))
    elif point == "model-saved":  # the model's files half written, then the disk is full
        real_save = model.save_compressed

        def save(loaded, folder, **kw):
            real_save(loaded, folder, **kw)
            boom(Path(folder) / "model.safetensors")

        monkeypatch.setattr(model, "save_compressed", save)
    elif point == "safetensors-full":  # safetensors' own error type, wrapping ENOSPC
        from safetensors import SafetensorError

        def save(loaded, folder, **kw):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(model, "save_compressed", save)
    elif point in ("recipe-written", "report-written"):
        name = "_write_recipe" if point == "recipe-written" else "_write_report"
        monkeypatch.setattr(writer, name, lambda *a, **k: boom())
    elif point == "exchange":  # renameat2 refused: the directory entry needs a block
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: boom(b))
    elif point == "rename":  # the two-rename swap: the second rename fails, the first is undone
        real_rename = os.rename
        monkeypatch.setattr(atomic, "_EXCHANGE", False)
        monkeypatch.setattr(os, "rename", lambda a, b: boom(b) if ".tmp-" in str(a) else real_rename(a, b))
    elif point == "link-copied":  # no hard links here, and the copy of finetune/ fills the disk
        def link(src, dst, **kw):
            raise _fault(errno.EMLINK, dst)

        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(shutil, "copy2", lambda src, dst, **k: boom(Path(dst)))
    else:
        raise AssertionError(point)


DISK_FULL_POINTS = ["tmp-created", "model-saved", "safetensors-full", "recipe-written", "report-written", "manifest-hashed",
                    "manifest-written", "synced", "exchange", "rename"]


@pytest.mark.parametrize("point", DISK_FULL_POINTS)
def test_a_full_disk_at_any_step_keeps_the_previous_export(tmp_path, made, monkeypatch, capsys, point):
    out = shutil.copytree(made["exp"], tmp_path / "exp")
    before = snapshot(out)
    _raise_at(monkeypatch, point, out)
    assert export(made["job"], PLAN_B, out) == 2
    monkeypatch.undo()
    clear_error(capsys, out, DISK_FULL, "is as it was")
    assert snapshot(out) == before and verify_manifest(out) == []
    assert leftovers(out) == []


@pytest.mark.parametrize("point", ["tmp-created", "safetensors-full", "report-written", "synced"])
def test_a_full_disk_writing_a_new_export_leaves_nothing(tmp_path, made, monkeypatch, capsys, point):
    out = tmp_path / "exp"
    _raise_at(monkeypatch, point, out)
    assert export(made["job"], PLAN_B, out) == 2
    monkeypatch.undo()
    clear_error(capsys, out, DISK_FULL, "was not created")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("error", "code"), [
    ("Error while serializing: I/O error: No space left on device (os error 28)", errno.ENOSPC),
    ("Error while serializing: I/O error: Read-only file system (os error 30)", errno.EROFS),
    ("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed",
     errno.EIO),
    ("unexpected key 'x' in state dict", None),
])
def test_library_errors_wrapping_a_file_system_fault_are_faults(error, code):
    from safetensors import SafetensorError

    for kind in (SafetensorError, RuntimeError):
        fault = atomic.io_fault(kind(error))
        assert (fault.errno if fault is not None else None) == code


@pytest.mark.parametrize("point", ["kept-linked", "link-copied"])
def test_a_full_disk_while_keeping_a_fine_tune_keeps_it(tmp_path, made, monkeypatch, capsys, point):
    out = shutil.copytree(made["tuned"], tmp_path / "tuned", symlinks=True)
    before = snapshot(out)
    _raise_at(monkeypatch, point, out)
    assert export(made["job"], PLAN_A, out) == 2
    monkeypatch.undo()
    clear_error(capsys, out, DISK_FULL)
    assert snapshot(out) == before and leftovers(out) == []
    assert export(made["job"], PLAN_A, out) == 0  # with space again, the same export keeps the fine-tune
    assert snapshot(out / "finetune") == {k[len("finetune/"):] if k != "finetune" else ".": v
                                          for k, v in before.items() if k == "finetune" or k.startswith("finetune/")}


def test_a_full_disk_caching_the_unplanned_score_does_not_stop_the_export(monkeypatch):
    """The unplanned model's score is cached in the study's user attributes: only a cache."""
    def refuse(key, value):
        raise _fault(errno.ENOSPC, "study.journal")

    study = SimpleNamespace(get_trials=lambda deepcopy=False: [], user_attrs={}, set_user_attr=refuse)
    score = SimpleNamespace(accuracy=0.75, per_question_type={"color": 0.5})
    monkeypatch.setattr(writer, "_score", lambda *a, **k: ([], score))
    source = writer.ExportSource(label="trial 0", study=study)
    assert writer._unplanned_scores(source, None, [], None, None) == (0.75, {"color": 0.5})
