"""``searchskip resume outputs/<study>``: continue a search from its study folder.

Reads the job copy saved at the first run (``job.yaml``) and ``run.json`` (working directory,
study name, trial target); relative paths of the job resolve against the working directory of the
first run. The study is continued in the folder given, wherever it was copied, renamed or moved
to, up to the trial target of the run that made or last continued it (``--trials`` overrides).
Trials left RUNNING by a killed run are failed and retried once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def register(subparsers) -> None:
    from searchskip.commands.search import add_run_options

    p = subparsers.add_parser("resume", help="continue a stopped search from its study folder",
                              description="Continue the search stored in a study folder (outputs/<study>).")
    p.add_argument("study_dir", help="the study folder, e.g. outputs/demo")
    add_run_options(p)
    p.set_defaults(func=run)


def read_study_folder(study_dir: str):
    """``(job data as parsed YAML, run info)`` of a study folder."""
    from pathlib import Path

    from searchskip.config.yaml_io import read_yaml
    from searchskip.errors import SearchSkipError
    from searchskip.search.study import JOB_FILE, RUN_FILE
    from searchskip.search.study_files import read_run_info

    folder = Path(study_dir)
    for name in (JOB_FILE, RUN_FILE):
        if not (folder / name).is_file():
            raise SearchSkipError(f"{folder}: not a study folder of `searchskip search` ({name} is missing)")
    return read_yaml(folder / JOB_FILE), read_run_info(folder / RUN_FILE)


def run(args) -> int:
    from pathlib import Path

    from searchskip.commands.search import search_and_report
    from searchskip.config.loader import job_from_data

    folder = Path(args.study_dir).absolute()
    data, info = read_study_folder(str(folder))
    if args.trials is None:  # the target the study was searched (or last resumed) with
        args.trials = stored_trials(info, folder)
    with in_dir(info.get("cwd")):  # the job's relative paths meant the first run's directory
        job = job_from_data(data, str(folder / "job.yaml"))
        # the study inside the storage keeps its name; the folder is the one given
        return search_and_report(job, args, study=info.get("study", folder.name), outputs=None, folder=folder,
                                 force_new_study=False)


def stored_trials(info: dict, folder: Path) -> int | None:
    """The trial target ``run.json`` records (``None``: none recorded, the job's ``search.trials``
    applies); a :class:`~searchskip.errors.ConfigError` naming the file when it is not a count."""
    from searchskip.errors import ConfigError, Problem
    from searchskip.search.study import RUN_FILE

    trials = info.get("trials")
    if trials is None or (isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1):
        return trials
    raise ConfigError([Problem(str(folder / RUN_FILE), "trials", (
        f"must be an integer >= 1 or null (the trial target of the last run), but got {trials!r}; "
        "fix it or give resume --trials N"))])


@contextlib.contextmanager
def in_dir(path: str | None) -> Iterator[None]:
    """Run the block in folder ``path`` (when it exists; else where we are), then come back."""
    here = os.getcwd()
    try:
        if path and Path(path).is_dir():
            os.chdir(path)
        yield
    finally:
        os.chdir(here)
