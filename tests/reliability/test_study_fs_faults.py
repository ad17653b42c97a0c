"""Reliability, file-system faults of a search (issue 15, item 7): a study folder on a read-only file
system (EROFS), a disk that fills up (ENOSPC) at many points of a search (while the journal,
``run.json`` or the job copy is written, and while a torn journal is repaired), and a damaged
``run.json``.

Tests run as root, for whom permissions refuse nothing, so the faults are injected where searchskip
meets the file system: :func:`helpers.read_only` refuses every write under a folder with EROFS;
:class:`DiskFull` makes the n-th ``os.write`` under the study folder write half of its bytes and fail
with ENOSPC, and every later one fail (the disk stays full until the test frees it). The searches run
in-process through the CLI (``searchskip search`` / ``resume`` / ``ls``) on the embedded model, loaded
once, with a cheap deterministic evaluator (the model's answers are not the point here).

Every fault must end in exit code 2 with one message naming the path and the system's reason (no
traceback); the journal must stay whole (optuna loads it, every trial recorded before the fault is
still there) and nothing half-written may be left beside it; once the fault is gone, ``searchskip
resume`` finishes the study and the suite's invariants (:func:`helpers.check_study`) hold.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from helpers import check_study, demo_job, fs_fault, job_of, load_study, read_only
from searchskip import cli
from searchskip.search.objective import PlanScore
from searchskip.search.storage import JOURNAL_FILE, check_journal

pytestmark = pytest.mark.usefixtures("one_thread")

TRIALS = 8
DISK_FULL = os.strerror(errno.ENOSPC)
READ_ONLY = os.strerror(errno.EROFS)
POINTS = (1, 2, 3, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.99)
"""Where the disk fills up: at the n-th write of a search (an integer: the job copy, run.json, the
journal's first record) or at a share of the writes a whole search makes (a float)."""


class Cheap:
    """A deterministic accuracy from the plan (the same plan, the same score), no model run."""

    def __call__(self, plan, report) -> PlanScore:
        acc = int.from_bytes(hashlib.sha256(plan.key().encode()).digest()[:4], "big") % 1000 / 1000
        return PlanScore(acc, {"what color": acc}, 16)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The embedded model and 16 validation questions, loaded once."""
    from searchskip.search.worker import load_worker_inputs

    return load_worker_inputs(job_of(demo_job(tmp_path_factory.mktemp("inputs"))))


@pytest.fixture
def fast(monkeypatch, inputs):
    """Searches reuse the loaded model and data and score plans with :class:`Cheap`."""
    from searchskip.search import study

    monkeypatch.setattr(study, "load_worker_inputs", lambda job, loaded=None, dataset=None, **kw: inputs)
    monkeypatch.setattr(study, "make_evaluator", lambda job, loaded, dataset: Cheap())


def make_job(folder: Path) -> tuple[Path, Path]:
    """``(job file, study folder)`` of a small search in ``folder``."""
    job = demo_job(folder, trials=TRIALS, pruner="none", report_every=1)
    return job, folder / "out" / "demo"


def run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([*map(str, argv), "--no-progress"] if argv[0] != "ls" else list(map(str, argv)))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, err


class DiskFull:
    """From the ``at``-th ``os.write`` under ``folder`` on, the disk is full: that write puts half of its
    bytes down and fails with ENOSPC, every later one fails writing nothing, until :attr:`full` is
    cleared. Counts the writes under ``folder`` (``at=None``: never full)."""

    def __init__(self, monkeypatch, folder: Path, at: int | None):
        self.folder, self.at, self.writes, self.full = str(folder.resolve()), at, 0, at is not None
        self.hit: str | None = None
        """The file of the first write that failed."""
        self.before: bytes | None = None
        """That file's bytes before the failed write."""
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data) -> int:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if not path.startswith(self.folder + os.sep):
            return self._write(fd, data)
        self.writes += 1
        if not self.full or self.writes < self.at:
            return self._write(fd, data)
        if self.hit is None:
            self.hit, self.before = path, Path(path).read_bytes()
            self._write(fd, bytes(data)[: len(data) // 2])
        raise fs_fault(errno.ENOSPC, path)


def process_ended(monkeypatch) -> None:
    """What a new process sees after the one that met the fault exited: its pid is dead (these tests
    search and resume in one process, so the trials it left RUNNING would otherwise look live)."""
    from searchskip.search import storage

    me, alive = os.getpid(), storage.pid_alive
    monkeypatch.setattr(storage, "pid_alive", lambda pid: pid != me and alive(pid))


def leftovers(folder: Path) -> list[str]:
    """Half-written files a fault may leave: temporary files, partial copies of the journal."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".damaged-" in p.name
                  or ".repair-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".lock")}


def recorded(job: Path) -> dict[int, tuple]:
    """Trial number -> (state, values) of the trials the study recorded as finished (none when the
    storage holds no study yet)."""
    try:
        study = load_study(job)
    except KeyError:  # the journal's first record, the study's creation, was never written
        return {}
    return {t.number: (t.state.name, t.values) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}


@pytest.fixture(scope="module")
def writes_of_a_search(tmp_path_factory, inputs) -> int:
    """The writes a whole search makes into its study folder (the disk-full points are shares of it)."""
    from searchskip.search import study

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(study, "load_worker_inputs", lambda job, loaded=None, dataset=None, **kw: inputs)
        mp.setattr(study, "make_evaluator", lambda job, loaded, dataset: Cheap())
        job, folder = make_job(tmp_path_factory.mktemp("count"))
        counter = DiskFull(mp, folder.parent, at=None)
        assert cli.main(["search", str(job), "--no-progress"]) == 0
        return counter.writes
    finally:
        mp.undo()


# ---- a disk that fills up --------------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS)
def test_a_full_disk_loses_nothing_recorded_and_resume_finishes(point, tmp_path, fast, monkeypatch, capsys,
                                                                 writes_of_a_search):
    job, folder = make_job(tmp_path)
    at = point if isinstance(point, int) else max(1, round(point * writes_of_a_search))
    disk = DiskFull(monkeypatch, folder.parent, at=at)
    code, err = run(capsys, "search", job)
    assert code == 2 and disk.hit is not None, err
    named = re.sub(r"^\.(.+)\.tmp-\d+$", r"\1", Path(disk.hit).name)  # a temporary file is named by its target
    assert DISK_FULL in err and f"{folder / named}: could not be written" in err and err.count("\n") == 1, err
    assert leftovers(folder) == [], "half-written files were left"
    hit = Path(disk.hit)
    if hit.name == JOURNAL_FILE:  # cut back to the records before the failed append
        assert hit.read_bytes() == disk.before
    if (folder / JOURNAL_FILE).exists():
        assert check_journal(folder / JOURNAL_FILE).problem is None
        assert "searchskip resume" in err and "kept" in err
    if (folder / "run.json").exists():
        json.loads((folder / "run.json").read_text())  # whole
    before = recorded(job) if (folder / JOURNAL_FILE).exists() else {}

    disk.full = False  # space freed
    process_ended(monkeypatch)
    again = ("resume", folder) if (folder / "run.json").exists() else ("search", job)
    code, err = run(capsys, *again)
    assert code == 0, err
    study = load_study(job)
    check = check_study(study)
    assert check.counted >= TRIALS
    after = recorded(job)
    assert {n: after.get(n) for n in before} == before, "a trial recorded before the fault changed or was lost"


def test_a_full_disk_while_rewriting_run_json_keeps_it(tmp_path, fast, monkeypatch, capsys):
    job, folder = make_job(tmp_path)
    assert run(capsys, "search", job)[0] == 0
    files = snapshot(folder)
    disk = DiskFull(monkeypatch, folder, at=1)  # the first write of the resume: run.json's new copy
    code, err = run(capsys, "resume", folder, "--trials", str(TRIALS + 2))
    assert code == 2 and Path(disk.hit).name.startswith(".run.json.tmp-") and DISK_FULL in err, err
    assert snapshot(folder) == files and leftovers(folder) == []
    disk.full = False
    process_ended(monkeypatch)
    assert run(capsys, "resume", folder, "--trials", str(TRIALS + 2))[0] == 0
    assert check_study(load_study(job)).counted >= TRIALS + 2


def test_a_full_disk_while_repairing_a_torn_journal_keeps_it_as_it_was(tmp_path, fast, monkeypatch, capsys):
    job, folder = make_job(tmp_path)
    assert run(capsys, "search", job)[0] == 0
    journal = folder / JOURNAL_FILE
    whole = journal.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    journal.write_bytes(whole[: len(whole) - len(last) // 2])  # a kill cut the last record
    torn = journal.read_bytes()
    disk = DiskFull(monkeypatch, folder, at=3)  # run.json and the job copy are written; then the repair
    code, err = run(capsys, "resume", folder)
    assert code == 2 and DISK_FULL in err, err
    assert journal.read_bytes() == torn and leftovers(folder) == []
    disk.full = False
    process_ended(monkeypatch)
    assert run(capsys, "resume", folder)[0] == 0
    assert check_journal(journal).problem is None and len(list(folder.glob(f"{JOURNAL_FILE}.damaged-*"))) == 1
    assert check_study(load_study(job)).counted >= TRIALS


# ---- a read-only file system -------------------------------------------------------------------


def test_a_search_into_a_read_only_file_system_is_one_message(tmp_path, fast, monkeypatch, capsys):
    job, folder = make_job(tmp_path)
    read_only(monkeypatch, tmp_path / "out")
    code, err = run(capsys, "search", job)
    assert code == 2 and READ_ONLY in err and str(tmp_path / "out") in err and "writable" in err, err
    assert not (tmp_path / "out").exists()


def test_a_study_made_read_only_is_left_as_it_was(tmp_path, fast, monkeypatch, capsys):
    job, folder = make_job(tmp_path)
    assert run(capsys, "search", job)[0] == 0
    files = snapshot(folder)
    read_only(monkeypatch, folder)
    code, err = run(capsys, "resume", folder, "--trials", str(TRIALS + 2))
    assert code == 2 and READ_ONLY in err and str(folder) in err, err
    assert snapshot(folder) == files and leftovers(folder) == []
    code, err = run(capsys, "ls", folder)  # reading needs no write
    assert code == 0, err


# ---- a damaged run.json --------------------------------------------------------------------------

DAMAGE = {"empty": b"", "garbage": b"{not json\n", "cut": b'{\n  "cwd": "/somewhere",\n  "study": "de',
          "binary": b"\x00\xff\xfe\x00", "a-list": b"[1, 2, 3]\n", "a-string": b'"demo"\n'}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_json_is_one_message_for_every_reader(damage, tmp_path, fast, capsys):
    job, folder = make_job(tmp_path)
    assert run(capsys, "search", job)[0] == 0
    (folder / "run.json").write_bytes(DAMAGE[damage])
    files = snapshot(folder)
    for argv in (("resume", folder), ("ls", folder), ("search", job)):
        code, err = run(capsys, *argv)
        assert code == 2, f"{argv}: exit {code}\n{err}"
        assert str(folder / "run.json") in err and "is damaged" in err, err
        assert snapshot(folder) == files, f"{argv} changed the study folder"


def test_run_json_is_replaced_in_one_rename(tmp_path, fast, monkeypatch, capsys):
    """No write ever goes to run.json itself: only to a temporary file renamed over it."""
    job, folder = make_job(tmp_path)
    disk = DiskFull(monkeypatch, folder.parent, at=None)
    written: list[str] = []
    real = disk.write

    def write(fd, data):
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert run(capsys, "search", job)[0] == 0
    assert run(capsys, "resume", folder, "--trials", str(TRIALS + 1))[0] == 0
    names = {Path(p).name for p in written if p.startswith(str(folder))}
    assert not names & {"run.json", "job.yaml"} and any(n.startswith(".run.json.tmp-") for n in names), names
