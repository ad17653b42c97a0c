"""Helpers shared by tests that run jobs end to end (``tests/reliability/``, PostgreSQL tests).

A plain module: pytest puts ``tests/`` on ``sys.path`` (``conftest.py`` lives there), and
``tests/reliability/search_child.py``, which runs as a script, adds it itself.

* ``REPO``, ``ENV``: the checkout and the environment of child processes (``conftest.py`` has
  already set the ``HF_*`` offline switches in ``os.environ``; one OpenMP thread is added).
* :func:`demo_job`: ``jobs/demo.yaml`` made small and pointed at a test folder.
* :func:`searchskip_proc` / :func:`searchskip_run`: the ``searchskip`` CLI as a subprocess.
* :func:`load_study` / :func:`check_study`: a study opened as ``searchskip`` opens it, and the
  invariants every study of the reliability suite must hold once no process searches it.
* :func:`fs_fault` / :func:`read_only`: file-system faults injected where searchskip meets the file
  system (tests run as root, for whom a read-only permission refuses nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def demo_job(folder: Path, *, name: str = "demo", questions: int | None = 16, model: dict | None = None,
             eval: dict | None = None, **search: Any) -> Path:
    """Write ``folder/job.yaml``: ``jobs/demo.yaml`` with outputs under ``folder/out``, a validation
    subset of ``questions`` (``None``: the demo's own), ``search.space`` the absolute
    ``spaces/per-layer.yaml``; ``model``, ``eval`` and ``search`` update those sections."""
    import yaml

    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["name"] = name
    data["outputs"] = str(Path(folder) / "out")
    if questions is not None:
        data["data"]["validation_subset"]["size"] = questions
    data["model"].update(model or {})
    data["eval"].update(eval or {})
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), **search})
    path = Path(folder) / "job.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def searchskip_proc(*argv: str, **popen_kw: Any) -> subprocess.Popen:
    """``python -m searchskip ARGV`` started in the checkout with :data:`ENV`; stdout and stderr
    merged into one text pipe unless ``popen_kw`` says otherwise."""
    kw: dict[str, Any] = {"cwd": REPO, "env": ENV, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT,
                          "text": True, **popen_kw}
    return subprocess.Popen([sys.executable, "-m", "searchskip", *map(str, argv)], **kw)


def searchskip_run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m searchskip ARGV`` run to its end; stdout and stderr captured apart."""
    return subprocess.run([sys.executable, "-m", "searchskip", *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def job_of(path: Path):
    from searchskip.config.loader import load_job

    return load_job(path)


def load_study(job_path: Path):
    """The study of a job file, opened the way ``searchskip`` opens it (a fresh storage object each time)."""
    import optuna

    from searchskip.search.storage import open_storage
    from searchskip.search.study import study_dir

    job = job_of(job_path)
    return optuna.load_study(study_name=job.name, storage=open_storage(job.search.storage, study_dir(job)))


@dataclass
class Check:
    complete: int
    counted: int
    failed: int
    retries: int
    dedups: int
    seeds: int


def check_study(study) -> Check:
    """The invariants every study of the suite must hold once no process searches it."""
    from optuna.trial import TrialState

    from searchskip.search.study import trial_counts

    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), "a trial number appears twice"
    assert sorted(numbers) == list(range(len(trials))), "trial numbers have a gap"
    counts = trial_counts(study)
    assert counts["running"] == 0 and counts["waiting"] == 0, f"trials left behind: {counts}"
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:
        assert t.values is not None and "accuracy" in t.user_attrs and "plan_key" in t.user_attrs
    # No plan scored twice: a COMPLETE trial either scored its plan itself (once per plan) or reused
    # a COMPLETE trial's score (dedup_of); a plan scored again by a retry is scored once among the
    # COMPLETE trials, its first scoring having been lost with the killed trial (FAIL).
    scored = [t.user_attrs["plan_key"] for t in complete if "dedup_of" not in t.user_attrs]
    assert len(scored) == len(set(scored)), "a plan was scored (and recorded) twice"
    for t in complete:
        if "dedup_of" in t.user_attrs:
            original = by_number[t.user_attrs["dedup_of"]]
            assert original.state == TrialState.COMPLETE and "dedup_of" not in original.user_attrs
            assert original.user_attrs["plan_key"] == t.user_attrs["plan_key"] and original.values == t.values

    def plan_params(t) -> dict:  # what a killed trial is retried with: its fixed params (enqueued) or its params
        return dict(t.system_attrs.get("fixed_params") or {}) or dict(t.params)

    retries = [t for t in trials if "retry_of" in t.user_attrs]
    for t in retries:
        source = by_number[t.user_attrs["retry_of"]]
        assert source.state == TrialState.FAIL and plan_params(source) == t.system_attrs.get("fixed_params")
        assert t.state != TrialState.COMPLETE or plan_params(source).items() <= t.params.items()
        assert source.number < t.number
    retried = [t.user_attrs["retry_of"] for t in retries]
    assert len(retried) == len(set(retried)), "a failed trial was retried twice"
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "stale" in t.user_attrs.get("failed_reason", ""), (t.number, t.user_attrs)
            if "retry_of" not in t.user_attrs and plan_params(t):
                assert t.number in retried, f"failed trial {t.number} was not retried"
    seeds = [t.user_attrs["seed"] for t in trials if "seed" in t.user_attrs and "retry_of" not in t.user_attrs]
    assert len(seeds) == len(set(seeds)), "a seed was enqueued twice"
    return Check(complete=len(complete), counted=counts["counted"], failed=counts["failed"], retries=len(retries),
                 dedups=sum("dedup_of" in t.user_attrs for t in complete), seeds=len(seeds))


def fs_fault(code: int, path: object) -> OSError:
    """The ``OSError`` the system raises for ``code`` (``errno.EROFS``, ``errno.ENOSPC``...) on ``path``."""
    return OSError(code, os.strerror(code), os.fspath(path))


def read_only(monkeypatch: Any, root: Path) -> Callable[..., bool]:
    """Make ``root`` and everything under it behave as a read-only file system mount (tests run as
    root, for whom permissions refuse nothing): ``os.mkdir``, ``rmdir``, ``unlink``, ``remove``,
    ``rename``, ``replace``, ``link``, ``symlink``, ``utime``, ``chmod``, ``os.open`` with a write
    flag and ``open`` in a writing mode raise ``OSError(EROFS)`` for a path under ``root``.
    Returns the predicate ``inside(path, dir_fd=None)`` (is a path under ``root``), for callers that
    refuse more calls."""
    import builtins
    import errno
    import io

    root_text = str(Path(root).resolve())

    def inside(path: object, dir_fd: int | None = None) -> bool:
        if isinstance(path, int):
            return False
        text = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(text):
            text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
        text = os.path.abspath(text)
        return text == root_text or text.startswith(root_text + os.sep)

    def guard(real, n_paths: int = 1):
        def wrapped(*args, **kw):
            dir_fds = (kw.get("dir_fd"), kw.get("src_dir_fd"), kw.get("dst_dir_fd"))
            for path in args[:n_paths]:
                if inside(path, next((fd for fd in dir_fds if fd is not None), None)):
                    raise fs_fault(errno.EROFS, path)
            return real(*args, **kw)
        return wrapped

    for name, n in (("mkdir", 1), ("rmdir", 1), ("unlink", 1), ("remove", 1), ("rename", 2), ("replace", 2),
                    ("link", 2), ("symlink", 2), ("utime", 1), ("chmod", 1)):
        monkeypatch.setattr(os, name, guard(getattr(os, name), n))
    real_os_open, real_open = os.open, builtins.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, *args, **kw):
        if flags & writing and inside(path, kw.get("dir_fd")):
            raise fs_fault(errno.EROFS, path)
        return real_os_open(path, flags, *args, **kw)

    def open_(file, mode="r", *args, **kw):
        if any(c in mode for c in "wax+") and inside(file):
            raise fs_fault(errno.EROFS, file)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    return inside
