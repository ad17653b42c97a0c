"""``searchskip search JOB.yaml``: search a plan within the job's FLOP budget (optuna here, or Ray actors: ``backend: ray``).

Results go to ``<outputs>/<study>/`` (see :mod:`searchskip.search.study`); ``searchskip ls``
shows them and ``searchskip resume`` continues a stopped search. Exit code 130 after Ctrl-C
(the search stops once the running trial is recorded).
"""

from __future__ import annotations

from searchskip.cli import INTERRUPTED


def register(subparsers) -> None:
    from searchskip.commands import option_type
    from searchskip.config.typed import at_least

    p = subparsers.add_parser("search", help="search a compression plan within the job's FLOP budget",
                              description="Search which computations to skip within the job's FLOP budget "
                                          "(the job's `search:` section). Results: <outputs>/<study>/.")
    p.add_argument("job", help="job YAML file with a `search:` section")
    add_run_options(p)
    p.add_argument("--study", metavar="NAME", default=None, help="study name and folder (default: the job's name)")
    p.add_argument("--outputs", metavar="DIR", default=None, help="folder of study folders (default: job.outputs)")
    p.add_argument("--workers", type=option_type("workers", int, at_least("workers", 1)), default=None, metavar="N",
                   help="number of worker processes the study expects (overrides search.workers); start each with `searchskip search JOB` or `searchskip resume DIR` on the same storage")
    p.add_argument("--force-new-study", action="store_true",
                   help="start over when the study folder holds a study of a different job (the old journal is kept)")
    p.set_defaults(func=run)


def add_run_options(p) -> None:
    """``--trials``, ``--timeout`` (held to the rules of ``search.trials`` / ``search.timeout_s``) and
    ``--no-progress``: the options of every verb that runs a search."""
    from searchskip.commands import option_type
    from searchskip.config.typed import above, at_least

    p.add_argument("--trials", type=option_type("trials", int, at_least("trials", 1)), default=None, metavar="N",
                   help="total trials the study should hold, complete + pruned + infeasible (default: search.trials)")
    p.add_argument("--timeout", type=option_type("timeout", float, above("timeout", 0)), default=None, metavar="S",
                   help="stop starting trials after S seconds of this run (default: search.timeout_s)")
    p.add_argument("--no-progress", action="store_true", help="no live progress view")


def run(args) -> int:
    from searchskip.config.loader import job_from_data
    from searchskip.config.yaml_io import read_yaml

    data = read_yaml(args.job)
    if args.workers is not None and isinstance(data, dict) and isinstance(data.get("search"), dict):
        data["search"]["workers"] = args.workers  # validated with the job, so its rules (sqlite, backend) apply
    job = job_from_data(data, args.job)  # a job without `search` is refused by run_search, naming the file
    return search_and_report(job, args, study=args.study, outputs=args.outputs,
                             force_new_study=args.force_new_study)


def search_and_report(job, args, *, study, outputs, force_new_study: bool, folder=None) -> int:
    """Run the search (``args``: the run options; ``folder``: the study folder of a resume, else
    ``<outputs>/<study>``), then print its leaderboard and verdict; the exit code."""
    from rich.console import Console

    from searchskip.commands import print_error
    from searchskip.search.fs_faults import study_writes
    from searchskip.search.leaderboard import leaderboard_table, verdict
    from searchskip.search.evaluations import describe_counts, trial_counts
    from searchskip.search.run import run_search
    from searchskip.search.study import study_dir

    with study_writes(folder or study_dir(job, study, outputs)):  # read-only, disk full: one message
        result = run_search(job, trials=args.trials, timeout=args.timeout, study_name=study, outputs=outputs,
                            folder=folder, force_new_study=force_new_study, progress=not args.no_progress)
    if result.interrupted:  # a terminal echoes Ctrl-C as "^C" without a line end: the report starts below it
        print_error("", style=None)
    if result.failed_stale:
        print_error(f"failed {len(result.failed_stale)} trial(s) left RUNNING by a stopped run and retried them: "
                    f"{result.failed_stale}", style="yellow")
    counts = trial_counts(result.study)
    console = Console(width=max(Console().width, 140))
    console.print(leaderboard_table(result.study, top=10))
    console.print(f"{describe_counts(counts)}; this run: {result.evaluations} in {result.seconds:.1f} s. "
                  f"Study: {result.study_dir}", soft_wrap=True, highlight=False)
    for line in verdict(result.study):
        console.print(line, highlight=False)
    if result.interrupted:
        print_error(f"\ninterrupted: stopped after the running trial was recorded; continue with "
                    f"`searchskip resume {result.study_dir}`")
        return INTERRUPTED
    return 0
