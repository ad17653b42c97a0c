"""Where a study lives, how several processes share it, and how a resumed run cleans up after a killed one.

* ``search.storage: null`` (the default): a journal file ``<outputs>/<study>/study.journal``
  (``JournalStorage(WholeRecordsBackend(path))``: optuna's journal file, whose appends never leave a
  torn record: a write the file system refuses midway, a full disk, is cut back to the records
  before it, so everything recorded so far stays loadable and resumable). Safe for several processes **on one
  machine** (it locks the file), no server, but **no heartbeat**: a process killed mid-trial
  (SIGKILL, a lost machine) leaves its trial RUNNING forever. :func:`fail_stale_trials`
  marks such trials FAIL and re-enqueues their parameters once (``retry_of``) when a process
  opens the study.
  A journal torn by a kill or a full disk (its last record cut off, or garbage after the
  records) is detected when a run starts, under the study lock, before anything is appended
  (:func:`~searchskip.search.study.prepare_study` calls :func:`repair_study_journal`):
  :func:`repair_journal` keeps the damaged file aside and continues from the complete records.
  :func:`open_storage` never checks or rewrites the journal: later opens inside a run and
  read-only ones (``searchskip ls``) read it as it is.
* ``sqlite:///FILE``: one worker only (SQLite locks the whole database: "database is locked").
* ``postgresql://...`` / ``mysql://...``: an RDB storage with a heartbeat (60 s, grace 180 s)
  and optuna's ``RetryHeartbeatStaleTrialCallback(max_retry=1)``, which fails stale trials
  and retries them once by itself when a worker starts a new trial. **Several machines**
  need this: process ids say nothing across hosts, so the stale-trial pass below leaves other
  hosts' trials alone and only the heartbeat recovers them.

**Workers.** Each trial records its worker as the user attr ``worker`` = ``"{host}:{pid}"``
before any model time. Each searching process registers itself as ``workers/<host>-<pid>``
in the study folder (removed at exit; the registration of a dead pid is stale and removed by
the next process). When a process opens a study (under the study folder's ``fcntl`` lock
``study.lock``), :func:`fail_stale_trials` fails only

* RUNNING trials whose worker is on this host and whose pid is no longer alive, and
* RUNNING trials without a ``worker`` attr, only if no other live process is registered.

Trials of live workers and of other hosts are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from searchskip.errors import ConfigError
from searchskip.proc import pid_alive
from searchskip.search.study_files import write_atomic

__all__ = ["JOURNAL_FILE", "LOCK_FILE", "WORKERS_DIR", "append_records", "journal_backend_class", "WorkerRegistration",
           "study_flock",
           "worker_id", "live_workers", "open_storage", "fail_stale_trials", "fail_and_retry",
           "JournalCheck", "check_journal", "repair_journal", "repair_study_journal"]

JOURNAL_FILE = "study.journal"
LOCK_FILE = "study.lock"
WORKERS_DIR = "workers"
HEARTBEAT_S = 60
GRACE_S = 180


@dataclass
class JournalCheck:
    """What :func:`check_journal` found: ``records`` complete records in the first ``good_bytes``
    bytes of a ``size``-byte file, and the ``problem`` that ends them (``None``: the file is whole)."""

    records: int
    good_bytes: int
    size: int
    problem: str | None


def check_journal(path: Path) -> JournalCheck:
    """Read an optuna journal file record by record (one JSON object per line, each ending in a
    newline). Stops at the first record that is cut off (a write interrupted by a kill or a full
    disk) or is not a journal record (garbage)."""
    import json

    data = Path(path).read_bytes() if Path(path).exists() else b""
    records = good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            return JournalCheck(records, good, len(data), f"record {records + 1} is cut off (no line end): "
                                "a write was interrupted")
        try:
            record = json.loads(line)
        except ValueError:
            return JournalCheck(records, good, len(data), f"record {records + 1} is not valid JSON (garbage)")
        if not isinstance(record, dict) or "op_code" not in record:
            return JournalCheck(records, good, len(data), f"record {records + 1} is not an optuna journal record")
        records += 1
        good += len(line)
    return JournalCheck(records, good, len(data), None)


def repair_journal(path: Path) -> str | None:
    """Check the journal ``path`` under optuna's own journal lock (so no append is in flight) and,
    if it is damaged, keep the damaged file aside as ``<name>.damaged-<time>`` (never overwritten),
    and replace the journal by its complete records; both are written by
    :func:`~searchskip.search.study_files.write_atomic`, so a full disk leaves the journal as it
    was and no partial file beside it.
    Returns what was done, or ``None`` for a whole (or missing) file. Nothing is ever appended to a
    damaged journal: optuna would glue the next record to the torn one."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.exists():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        found = check_journal(path)
        if found.problem is None:
            return None
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        damaged = path.read_bytes()
        write_atomic(aside, damaged)
        try:
            write_atomic(path, damaged[:found.good_bytes])
        except BaseException:  # a full disk: the journal is as it was, so its copy is not kept either
            with contextlib.suppress(OSError):
                aside.unlink()
            raise
    finally:
        lock.release()
    dropped = found.size - found.good_bytes
    return (f"{path}: {found.problem}; kept its {found.records} complete records and dropped the last "
            f"{dropped} bytes; the damaged file is kept as {aside}")


def repair_study_journal(storage: str | None, study_dir: Path) -> str | None:
    """For a journal study (``storage`` is ``None``): :func:`repair_journal` on its journal, and a
    ``warning:`` line on stderr saying what was done. Returns that note (``None``: nothing to do;
    always ``None`` for an RDB storage)."""
    if storage is not None:
        return None
    note = repair_journal(Path(study_dir) / JOURNAL_FILE)
    if note is not None:
        print(f"warning: {note}", file=sys.stderr)
    return note


@functools.lru_cache(maxsize=None)
def journal_backend_class() -> type:
    """``WholeRecordsBackend``: optuna's ``JournalFileBackend`` whose appends go through
    :func:`append_records` (defined on first use: optuna is imported lazily)."""
    from optuna.storages.journal import JournalFileBackend

    class WholeRecordsBackend(JournalFileBackend):
        """optuna's journal file backend whose appends are whole or nothing (see :func:`append_records`)."""

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            import json

            from optuna.storages.journal._file import get_lock_file

            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
            with get_lock_file(self._lock):
                append_records(self._file_path, data)

    return WholeRecordsBackend


def append_records(path: str | Path, data: bytes) -> None:
    """Append ``data`` (whole journal records) to the file ``path`` and fsync it, or leave the file as
    it was: when the file system refuses midway (``OSError``: a full disk, a quota, an I/O error),
    what was written is cut off again before the error propagates, so the journal never holds a torn
    record that optuna would refuse or glue the next record to. Unbuffered (``os.write``), so
    nothing is left to flush after the cut. Callers hold the journal's lock (appends do not interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:  # cannot even cut it: the next run's repair_journal drops the torn record
                pass
            raise
    finally:
        os.close(fd)


def open_storage(storage: str | None, study_dir: Path) -> Any:
    """The optuna storage object for ``search.storage`` (see the module docstring).

    A journal file is opened as it is: a run checks and repairs it once, under the study lock,
    where it starts (:func:`repair_study_journal` from :func:`~searchskip.search.study.prepare_study`)."""
    import optuna

    if storage is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(journal_backend_class()(str(study_dir / JOURNAL_FILE)))
    if storage.startswith("sqlite"):
        return optuna.storages.RDBStorage(storage)
    try:
        with warnings.catch_warnings():  # optuna marks the heartbeat experimental; the user chose nothing experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except ImportError:
        raise ConfigError(f"search.storage: {storage.split('://', 1)[0]}:// URLs need a database driver, which is not "
                          "installed here; for PostgreSQL: pip install 'searchskip[postgres]' (psycopg)") from None


def worker_id(pid: int | None = None) -> str:
    """``"{hostname}:{pid}"`` of this process (or of ``pid`` on this host)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _dead_local_worker(worker: Any) -> bool:
    """``True`` if ``worker`` (``host:pid``) is on this host and its process is gone."""
    if not isinstance(worker, str) or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        return not pid_alive(int(pid))
    except ValueError:
        return False


def fail_and_retry(study: Any, trial: Any, reason: str) -> bool:
    """Fail the RUNNING ``trial`` (user attr ``failed_reason``) and re-enqueue its parameters once
    (user attr ``retry_of``; a retry is not retried again). ``False`` if it had finished meanwhile."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "failed_reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:  # finished by its worker meanwhile
        return False
    # An enqueued trial (a seed, a retry) has its whole plan in its fixed params, even when it was
    # killed before or while suggesting; a sampled trial is retried with what it had suggested
    # (nothing: nothing to retry).
    params = dict(trial.system_attrs.get("fixed_params") or {}) or dict(trial.params)
    if "retry_of" in trial.user_attrs or not params:
        return True
    attrs = {"retry_of": trial.number}
    if "seed" in trial.user_attrs:
        attrs["seed"] = trial.user_attrs["seed"]
    study.enqueue_trial(params, user_attrs=attrs)
    return True


def fail_stale_trials(study: Any, others_alive: bool = False) -> list[int]:
    """Fail the stale RUNNING trials of ``study`` and re-enqueue their parameters once.

    Stale: the ``worker`` attr names a dead process on this host, or there is no ``worker``
    attr and ``others_alive`` is false (no other live process is registered on the study).
    A trial that was itself a retry (user attr ``retry_of``) is failed but not retried again.
    Returns the numbers of the failed trials.
    """
    from optuna.trial import TrialState

    failed: list[int] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            if others_alive:
                continue
        elif not _dead_local_worker(worker):
            continue
        if fail_and_retry(study, trial, "stale: left RUNNING by a process that stopped (killed?) mid-trial"):
            failed.append(trial.number)
    return failed


@contextlib.contextmanager
def study_flock(study_dir: Path) -> Iterator[None]:
    """Hold ``<study dir>/study.lock`` exclusively (``fcntl.flock``; released on exit or death)."""
    path = Path(study_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def live_workers(study_dir: Path, *, prune: bool = True) -> list[str]:
    """Registrations (``host-pid``) of live processes on ``study_dir``, this one excluded.

    A registration of a dead pid on this host is removed when ``prune``; one from another
    host is counted as live (its pid cannot be checked from here)."""
    folder = Path(study_dir) / WORKERS_DIR
    me = _reg_name()
    out: list[str] = []
    if not folder.is_dir():
        return out
    host = socket.gethostname()
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name == me:
            continue
        h, _, pid = name.rpartition("-")
        if h == host:
            try:
                alive = pid_alive(int(pid))
            except ValueError:
                alive = False
            if not alive:
                if prune:
                    entry.unlink(missing_ok=True)
                continue
        out.append(name)
    return out


def _reg_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerRegistration:
    """``<study dir>/workers/<host>-<pid>`` while this process searches the study.

    Entering it takes :func:`study_flock`, so that :attr:`others` (the other live registrations
    seen then) and this registration are consistent with every other process's view."""

    def __init__(self, study_dir: Path):
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / WORKERS_DIR / _reg_name()
        self.others: list[str] = []

    def __enter__(self) -> "WorkerRegistration":
        with study_flock(self.study_dir):
            self.others = live_workers(self.study_dir)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(worker_id() + "\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


