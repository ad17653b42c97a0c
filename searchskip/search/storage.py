"""Where a study lives, and how a resumed run cleans up after a killed one.

* ``search.storage: null`` (the default): a journal file ``<outputs>/<study>/study.journal``
  (``JournalStorage(JournalFileBackend(path))``). Safe for several processes on one file
  system, no server, but **no heartbeat**: a process killed mid-trial (SIGKILL, a lost
  machine) leaves its trial RUNNING forever. :func:`fail_stale_trials` marks such trials
  FAIL and re-enqueues their parameters once (``retry_of``); it runs when a study is opened,
  while this process holds the study folder's lock (:class:`StudyLock`), so no live
  process can own a RUNNING trial at that moment (one worker per study: ``workers: 1``).
* ``sqlite:///FILE``: one worker only (SQLite locks the whole database).
* ``postgresql://...`` / ``mysql://...``: an RDB storage with a heartbeat (60 s, grace 180 s)
  and optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)``, which fails stale trials
  and retries them once by itself when a worker starts a new trial.

The stale-trial pass runs for every storage kind (an RDB study left RUNNING is also stale
once we hold the lock), so behaviour does not depend on the heartbeat's timing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from searchskip.errors import SearchSkipError

__all__ = ["JOURNAL_FILE", "LOCK_FILE", "StudyLock", "StudyLocked", "open_storage", "storage_url",
           "fail_stale_trials", "counted_states"]

JOURNAL_FILE = "study.journal"
LOCK_FILE = "search.lock"
HEARTBEAT_S = 60
GRACE_S = 180


class StudyLocked(SearchSkipError):
    """Another live process is searching in the same study folder."""


def storage_url(storage: str | None, study_dir: Path) -> str:
    """A printable name of the storage (the journal file's path for the default)."""
    return str(study_dir / JOURNAL_FILE) if storage is None else storage


def open_storage(storage: str | None, study_dir: Path) -> Any:
    """The optuna storage object for ``search.storage`` (see the module docstring)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))
    if storage.startswith("sqlite"):
        return optuna.storages.RDBStorage(storage)
    return optuna.storages.RDBStorage(
        storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def counted_states() -> tuple[Any, ...]:
    """Trial states that count toward ``search.trials``: COMPLETE and PRUNED (infeasible trials are PRUNED)."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def fail_stale_trials(study: Any) -> list[int]:
    """Mark every RUNNING trial of ``study`` FAIL and re-enqueue its parameters once.

    Only call this while holding the study's :class:`StudyLock` (no live process then owns a
    RUNNING trial). A trial that was itself a retry (user attr ``retry_of``) is failed but not
    retried again. Returns the numbers of the failed trials.
    """
    from optuna.trial import TrialState

    failed: list[int] = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "failed_reason",
                                    "stale: left RUNNING by a process that stopped (killed?) mid-trial")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        failed.append(trial.number)
        if "retry_of" in trial.user_attrs or not trial.params:
            continue
        attrs = {"retry_of": trial.number}
        if "seed" in trial.user_attrs:
            attrs["seed"] = trial.user_attrs["seed"]
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyLock:
    """``<study dir>/search.lock`` holding this process's id while it searches.

    A lock left by a dead process is taken over; one held by a live process raises
    :class:`StudyLocked`. (Process ids are per machine: the study folder is assumed local.)
    """

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / LOCK_FILE

    def __enter__(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise StudyLocked(f"{self.path.parent}: process {pid} is searching in this study now "
                                      f"(lock file {self.path}); wait for it or stop it") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)
