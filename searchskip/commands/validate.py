"""``searchskip validate FILE [FILE...]``: check configuration files without running anything.

Every file is read and built completely (like torchtune's ``tune validate``): all
problems of all files are reported, then the command exits with 2 if any file had one.
Valid files print ``OK <file>``. No model weights or datasets are loaded; the checks
only look at the YAML and at the file system (paths a job names must exist), and for a job whose
model is a local folder, at the model's files: they must be whole (``searchskip.model_files``), its
``config.json`` of a family the other verbs support with values that family allows
(``searchskip.arch.config_rules``), and its processor must agree with that config and with the
prompt template (``searchskip.processor_check``: it is built and run on three small blank images).

Which kind of file is it? (:func:`detect_kind`)

1. The nearest enclosing folder named ``jobs/``, ``spaces/`` or ``plans/`` decides:
   job, space or plan (see :data:`KIND_FOLDERS`).
2. Otherwise the top-level keys decide: the kind sharing the most top-level keys with the
   file wins, e.g. a job (``name``, ``model``, ``data``, ``eval``, ``outputs``) or a plan
   (``version``, ``scope``, ``layers``, ``drop``, ``prune``) (see :data:`KIND_KEYS`).
3. Otherwise the kind is unknown, reported as a problem of that file.

A kind is validated by its entry in :data:`VALIDATORS` (jobs, plans and spaces; plans and
spaces are checked for structure only, without a model); a known kind without a validator
is reported as not supported yet. Adding a kind: add its folder to :data:`KIND_FOLDERS`, its
distinctive top-level keys to :data:`KIND_KEYS` and a ``(data, file) -> object`` function
raising ``ConfigError`` to :data:`VALIDATORS`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable

from searchskip.commands import print_error, print_out
from searchskip.config.job import Job
from searchskip.config.loader import job_from_data
from searchskip.config.yaml_io import read_yaml
from searchskip.errors import ConfigError, Problem, SearchSkipError
from searchskip.plan import PLAN_KEYS, Plan
from searchskip.search.space import SPACE_KEYS, Space

KIND_FOLDERS: dict[str, str] = {"jobs": "job", "spaces": "space", "plans": "plan"}
"""Folder name -> kind of the YAML files below it."""

KIND_KEYS: dict[str, frozenset[str]] = {
    "job": frozenset(f.name for f in dataclasses.fields(Job) if not f.metadata.get("internal")),
    "plan": PLAN_KEYS,
    "space": SPACE_KEYS,  # after plan: a tie (version, scope, layers, prune) is a plan
}
"""Kind -> top-level keys that identify it when the folder does not."""

def validate_job(data: Any, file: str) -> Job:
    """Build and check a job (:func:`~searchskip.config.loader.job_from_data`), and, for a local model
    folder, its files, family, and processor against its config and the job's prompt template
    (:func:`~searchskip.search.preflight.check_model_family`), so that a job no other verb can run is
    not OK."""
    from searchskip.search.preflight import check_model_family

    job = job_from_data(data, file)
    try:
        check_model_family(job, processor=True)
    except SearchSkipError as e:  # named the file and model.id already; one problem of this file
        raise ConfigError([Problem(file, "", str(e).removeprefix(f"{file}: "))]) from None
    return job


VALIDATORS: dict[str, Callable[[Any, str], object]] = {
    "job": validate_job,
    "plan": Plan.from_dict,
    "space": Space.from_dict,  # structure only; Space.check(num_layers) runs at search time
}
"""Kind -> function that builds and checks parsed YAML, raising ``ConfigError`` with every problem."""


def detect_kind(path: str | Path, data: Any) -> str | None:
    """The kind of a file (``"job"``, ``"space"``, ``"plan"``), or ``None`` when it cannot be told."""
    for folder in Path(path).absolute().parents:
        if folder.name in KIND_FOLDERS:
            return KIND_FOLDERS[folder.name]
    if isinstance(data, dict):
        keys = {k for k in data if isinstance(k, str)}
        overlap = {kind: len(keys & names) for kind, names in KIND_KEYS.items()}
        best = max(overlap, key=overlap.get, default=None)
        if best is not None and overlap[best] > 0:
            return best
    return None


def validate_file(path: str | Path) -> list[Problem]:
    """Every problem of one file (empty when it is valid)."""
    file = str(path)
    try:
        data = read_yaml(path)
        kind = detect_kind(path, data)
        if kind is None:
            folders = ", ".join(f"{name}/" for name in KIND_FOLDERS)
            keys = "; ".join(f"a {kind}: {', '.join(sorted(names))}" for kind, names in KIND_KEYS.items())
            raise ConfigError(
                f"cannot tell what kind of file this is: put it in a folder named {folders} "
                f"or give it the top-level keys of one ({keys})",
                file,
            )
        validator = VALIDATORS.get(kind)
        if validator is None:
            raise ConfigError(
                f"is a {kind} file (by its folder), but validating {kind} files is not supported yet; "
                f"supported: {', '.join(VALIDATORS)}",
                file,
            )
        validator(data, file)
    except ConfigError as e:
        return e.problems
    return []


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        problems = validate_file(path)
        if problems:
            failed += 1
            for problem in problems:
                print_error(str(problem))
        else:
            print_out(f"OK {path}", style="green")
    if failed:
        total = len(args.files)
        raise SearchSkipError(f"{failed} of {total} file{'s' if total != 1 else ''} failed validation")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check job, space and plan files without loading any model or data",
        description=(
            "Check configuration files without loading any model or dataset: report every problem "
            "of every file, print 'OK FILE' for each valid one, and exit with 2 if any file has a problem."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files to check (jobs/*.yaml)")
    parser.set_defaults(func=run)
