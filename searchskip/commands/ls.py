"""``searchskip ls outputs/<study> [--json]``: the leaderboard and the Pareto front of a study.

Leaderboard: COMPLETE (feasible, scored) trials by accuracy (ties: fewer FLOPs). Pareto front:
the scored trials no other scored trial beats on both accuracy (higher) and FLOP ratio (lower),
whatever the study's objectives. ``--json`` prints one object::

    {"study": NAME, "folder": DIR, "directions": [...], "budget": {...}, "counts": {...},
     "trials": [{"number", "state", "accuracy", "flops", "flops_ratio", "plan", "infeasible",
                 "dedup_of", "retry_of", "seed"}],
     "leaderboard": [trial numbers], "pareto": [trial numbers]}

``plan`` is the plan as a dict (:meth:`Plan.to_dict`), ``null`` where a trial recorded none.
"""

from __future__ import annotations

import json
from typing import Any

from searchskip.search.leaderboard import _plan_dict, baselines, leaderboard, leaderboard_table, pareto, verdict


def register(subparsers) -> None:
    from searchskip.commands import option_type
    from searchskip.config.typed import at_least

    p = subparsers.add_parser("ls", help="show a study's leaderboard and Pareto front",
                              description="Show the best feasible plans of a study folder and its Pareto front.")
    p.add_argument("study_dir", help="the study folder, e.g. outputs/demo")
    p.add_argument("--top", type=option_type("top", int, at_least("top", 1)), default=10, metavar="N",
                   help="leaderboard rows (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def open_existing(study_dir: str) -> Any:
    """Load the study of a folder written by ``searchskip search`` (read only: no fingerprint check,
    and the journal is not repaired or otherwise rewritten; the next run repairs a torn one)."""
    from pathlib import Path

    import optuna

    from searchskip.commands.resume import read_study_folder
    from searchskip.errors import SearchSkipError
    from searchskip.search.storage import JOURNAL_FILE, check_journal, open_storage

    folder = Path(study_dir)
    data, info = read_study_folder(study_dir)
    storage_spec = info.get("storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(storage_spec, folder)
    except (ValueError, TypeError, KeyError):
        # optuna skips a torn last record; damage before the end stops it. Say so, but only read.
        found = check_journal(folder / JOURNAL_FILE) if storage_spec is None else None
        if found is None or found.problem is None:
            raise
        raise SearchSkipError(f"{folder / JOURNAL_FILE}: {found.problem}; `searchskip resume {folder}` repairs "
                              "it (keeping the damaged file aside); ls only reads") from None
    name = info.get("study", folder.name)
    if name not in optuna.study.get_all_study_names(storage):
        raise SearchSkipError(f"{folder}: the storage holds no study named {name!r}")
    return optuna.load_study(study_name=name, storage=storage)


def to_json(study: Any, folder: str) -> dict:
    from searchskip.search.evaluations import trial_counts

    trials = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        trials.append({"number": t.number, "state": t.state.name, "accuracy": a.get("accuracy"),
                       "flops": a.get("flops"), "flops_ratio": a.get("flops_ratio"), "plan": _plan_dict(t),
                       "infeasible": a.get("infeasible"), "dedup_of": a.get("dedup_of"),
                       "retry_of": a.get("retry_of"), "seed": a.get("seed")})
    return {
        "study": study.study_name, "folder": folder,
        "directions": [d.name.lower() for d in study.directions],
        "budget": study.user_attrs.get("budget"), "counts": trial_counts(study),
        "trials": trials,
        "leaderboard": [t.number for t in leaderboard(study)],
        "pareto": [t.number for t in pareto(study)],
        "baselines": baselines(study),
    }


def run(args) -> int:
    from rich.console import Console

    study = open_existing(args.study_dir)
    if args.json:
        print(json.dumps(to_json(study, args.study_dir)))
        return 0
    from searchskip.search.evaluations import describe_counts, trial_counts

    console = Console(width=max(Console().width, 140))
    console.print(leaderboard_table(study, args.top))
    console.print(leaderboard_table(study, rows=pareto(study), title="Pareto front (accuracy vs FLOP ratio)"))
    c = trial_counts(study)
    console.print(f"{describe_counts(c)}, {c['waiting']} waiting", highlight=False)
    for line in verdict(study):
        console.print(line, highlight=False)
    return 0
