"""A torn journal file (cut inside its last record, or with garbage after its records) is detected
before anything is appended; its complete records are recovered; the damaged file is kept aside."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from helpers import demo_job, searchskip_run
from searchskip.search.storage import JOURNAL_FILE, check_journal, open_storage, repair_study_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(folder: Path, trials: int = 6) -> Path:
    study = optuna.create_study(study_name="s", storage=open_storage(None, folder))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return folder / JOURNAL_FILE


def complete_trials(folder: Path) -> list[float]:
    study = optuna.load_study(study_name="s", storage=open_storage(None, folder))
    return [t.params["x"] for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("damage", ["cut_last_record", "garbage_line", "garbage_no_newline", "binary_garbage",
                                    "not_a_record"])
def test_torn_journal_is_repaired_before_anything_is_appended(tmp_path, capsys, damage):
    journal = make_study(tmp_path)
    whole = journal.read_bytes()
    before = complete_trials(tmp_path)
    capsys.readouterr()
    records = len(lines(journal))
    if damage == "cut_last_record":
        # The last record (a trial's COMPLETE) cut in the middle: that trial is RUNNING again.
        journal.write_bytes(whole[: len(whole) - len(lines(journal)[-1]) // 2])
        kept = records - 1
    else:
        tail = {"garbage_line": b"{not json\n", "garbage_no_newline": b'{"op_code": 5',
                "binary_garbage": b"\x00\xff\xfe garbage \x00\n", "not_a_record": b"[1, 2, 3]\n"}[damage]
        journal.write_bytes(whole + tail)
        kept = records
    damaged = journal.read_bytes()
    assert check_journal(journal).problem is not None

    repair_study_journal(None, tmp_path)  # detects and repairs before anything is appended
    storage = open_storage(None, tmp_path)
    err = capsys.readouterr().err
    assert "warning:" in err and f"kept its {kept} complete records" in err
    asides = list(tmp_path.glob(f"{JOURNAL_FILE}.damaged-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == damaged and asides[0].name in err
    assert check_journal(journal).problem is None and len(lines(journal)) == kept
    assert journal.read_bytes() == b"".join(lines(Path(asides[0]))[:kept])

    study = optuna.load_study(study_name="s", storage=storage)
    after = complete_trials(tmp_path)
    assert after == (before[:-1] if damage == "cut_last_record" else before)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)  # appending works and stays readable
    assert check_journal(journal).problem is None
    assert len(complete_trials(tmp_path)) == len(after) + 3


def test_garbage_in_the_middle_keeps_the_records_before_it(tmp_path, capsys):
    journal = make_study(tmp_path)
    parts = lines(journal)
    journal.write_bytes(b"".join(parts[:5]) + b"garbage\n" + b"".join(parts[5:]))
    repair_study_journal(None, tmp_path)
    assert "record 6 is not valid JSON" in capsys.readouterr().err
    assert lines(journal) == parts[:5]
    optuna.load_study(study_name="s", storage=open_storage(None, tmp_path))


def test_a_whole_journal_is_left_untouched(tmp_path, capsys):
    journal = make_study(tmp_path)
    data, mtime = journal.read_bytes(), journal.stat().st_mtime_ns
    repair_study_journal(None, tmp_path)
    assert journal.read_bytes() == data and journal.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.damaged-*")) and "warning" not in capsys.readouterr().err


def test_resume_of_a_torn_study_continues_it(tmp_path):
    """End to end: `searchskip search` on the embedded model, journal cut inside its last record,
    then `searchskip resume` repairs it, says so, and finishes the study."""
    job = demo_job(tmp_path, trials=6)
    done = searchskip_run("search", job, "--no-progress")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "demo"
    journal = folder / JOURNAL_FILE
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])
    out = searchskip_run("resume", folder, "--trials", "10", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "is cut off" in out.stderr and "damaged file is kept as" in out.stderr
    study = optuna.load_study(study_name="demo", storage=open_storage(None, folder))
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) >= 10
