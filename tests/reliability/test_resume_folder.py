"""``searchskip resume DIR`` continues the study in DIR, wherever it was copied, renamed or moved to,
up to the trial target the stopped search was given (issue 15, item 5).

The study: ``search_child.py`` (the embedded model loaded, the cheap deterministic evaluator) runs
``run_search`` with a target of :data:`TARGET` trials on a job whose ``search.trials`` is
:data:`JOB_TRIALS`, and SIGKILLs itself when it samples its 4th plan: 3 trials COMPLETE, the 4th
left RUNNING. Each case copies that study into its own folder first, then resumes it in-process
(``searchskip.cli.main``) with the real model scoring the remaining trials.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import search_child as sc
from helpers import check_study, job_of
from searchskip.cli import main
from searchskip.search.storage import JOURNAL_FILE, open_storage
from searchskip.search.study import RUN_FILE, study_dir

pytestmark = pytest.mark.usefixtures("one_thread")

JOB_TRIALS = 3
TARGET = 6
NAME = "rel"


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("killed")
    job = sc.write_job(folder, name=NAME, trials=JOB_TRIALS, seed_plans=False)
    proc = sc.start_child(job, TARGET, folder / "events.jsonl", kill="sampling:4")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, out
    where = study_dir(job_of(job))
    study = open_study(where)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING], out
    return where


def open_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=open_storage(None, folder))


def finished(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.values, t.user_attrs.get("plan_key")) for t in study.trials if t.state.is_finished()}


def study_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(JOURNAL_FILE))


def fresh_copy(killed_study: Path, tmp_path: Path) -> Path:
    """The killed study as ``tmp_path/out/rel`` (``cp -a``)."""
    source = tmp_path / "out" / NAME
    shutil.copytree(killed_study, source, symlinks=True)
    return source


class TestCopiedRenamedMovedStudies:
    """cp -a / mv of a stopped study folder, then ``searchskip resume NEW`` without --trials."""

    @staticmethod
    def relocate(source: Path, tmp_path: Path, how: str) -> Path:
        if how == "copy":  # to another parent, under another name: cp -a outputs/demo-half ../copies/half-copy
            target = tmp_path / "copies" / "half-copy"
            target.parent.mkdir()
            shutil.copytree(source, target, symlinks=True)
        elif how == "rename":
            target = source.with_name("renamed")
            source.rename(target)
        else:  # move to another parent, same name
            target = tmp_path / "elsewhere" / NAME
            target.parent.mkdir()
            source.rename(target)
        return target

    @pytest.mark.parametrize("how", ["copy", "rename", "move"])
    def test_resume_continues_the_study_in_the_folder_given(self, killed_study, tmp_path, how, capsys):
        source = fresh_copy(killed_study, tmp_path)
        before = finished(open_study(source))
        journal_before = (source / JOURNAL_FILE).read_bytes()
        target = self.relocate(source, tmp_path, how)

        assert main(["resume", str(target), "--no-progress"]) == 0, capsys.readouterr().err
        assert str(target) in capsys.readouterr().out  # "Study: <the folder given>"

        expected = [source, target] if how == "copy" else [target]
        assert study_folders(tmp_path) == sorted(expected), "a study was started in another folder"
        study = open_study(target)
        check = check_study(study)
        assert check.counted == TARGET and check.failed == 1, check  # the killed trial failed as stale
        now = finished(study)
        assert all(now[n] == row for n, row in before.items()), "a finished trial changed"
        assert json.loads((target / RUN_FILE).read_text())["trials"] == TARGET
        if how == "copy":  # the original is left as it was
            assert (source / JOURNAL_FILE).read_bytes() == journal_before


def test_resume_goes_on_to_the_target_of_the_killed_search(killed_study, tmp_path, capsys):
    """The search was given TARGET trials (more than the job's JOB_TRIALS): resume goes on to
    TARGET; resume --trials N overrides it, and N is then remembered."""
    folder = fresh_copy(killed_study, tmp_path)
    assert main(["resume", str(folder), "--no-progress"]) == 0, capsys.readouterr().err
    assert check_study(open_study(folder)).counted == TARGET
    assert main(["resume", str(folder), "--trials", str(TARGET + 1), "--no-progress"]) == 0
    assert check_study(open_study(folder)).counted == TARGET + 1
    assert main(["resume", str(folder), "--no-progress"]) == 0
    assert check_study(open_study(folder)).counted == TARGET + 1  # not back to the job's JOB_TRIALS, no more
    assert json.loads((folder / RUN_FILE).read_text())["trials"] == TARGET + 1
