"""``searchskip eval JOB.yaml``: score the job's model on its validation or test split."""

from __future__ import annotations

import json
import sys

from searchskip.eval.planned import apply_plan


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a job's model on VQA (validation or test split)",
                              description="Score the job's model on its VQA validation subset or test split.")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="validation: the job's validation subset (what the search scores on); test: final numbers")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score only the first N questions")
    p.add_argument("--plan", metavar="PLAN.yaml", default=None,
                   help="apply this compression plan (e.g. spaces/plans/skip_block.yaml) before scoring")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    lm = p.add_argument_group("lmms-eval (pip install 'searchskip[lmms-eval]')")
    lm.add_argument("--lmms-eval", metavar="TASKS", default=None,
                    help="score the job's model and the plan (--plan or --export) side by side on these lmms-eval "
                         "tasks (comma-separated; `job`: the job's validation subset as a local task) and write the "
                         "retention table")
    lm.add_argument("--export", metavar="DIR", default=None,
                    help="with --lmms-eval: the export to compare with the job's model (made from it)")
    lm.add_argument("--lmms-include-path", metavar="DIR", action="append", default=None,
                    help="with --lmms-eval: a folder of lmms-eval task YAML files (repeatable)")
    lm.add_argument("--out", metavar="DIR", default=None,
                    help="with --lmms-eval: where the retention table goes (default: the export folder, or "
                         "<outputs>/<job>/lmms-eval/<plan>/)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from searchskip.errors import in_job
    from searchskip.config.loader import load_job
    from searchskip.data.schema import check_images
    from searchskip.data.splits import load_eval_split
    from searchskip.errors import ConfigError, DataError, SearchSkipError
    from searchskip.eval.runner import score_model
    from searchskip.models import load_model
    from searchskip.plan import Plan

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: must be >= 1, but got {args.limit}")
    if args.lmms_eval is not None:
        return run_lmms_eval(args)
    for flag, value in (("--export", args.export), ("--lmms-include-path", args.lmms_include_path), ("--out", args.out)):
        if value is not None:
            raise ConfigError(f"{flag}: goes with --lmms-eval TASKS")
    job = load_job(args.job)
    plan = Plan.load(args.plan) if args.plan else None
    err = Console(stderr=True)
    with err.status("loading data and model"):
        try:
            dataset = load_eval_split(job.data, args.split)
            if args.limit is not None:
                dataset = dataset.select(range(min(args.limit, len(dataset))))
            # open every image to score before the model loads: an unreadable one is a user
            # error naming the file, not a PIL traceback in the middle of the evaluation
            check_images(dataset)
        except SearchSkipError as e:
            raise in_job(args.job, e, f"data.splits.{args.split}") from None
        try:
            loaded = load_model(job.model)
        except SearchSkipError as e:
            raise in_job(args.job, e, "model.id") from None
    if plan is not None:
        with err.status("applying the plan"):
            apply_plan(loaded, job, plan, source=args.plan)
    try:
        result = score_model(loaded, dataset, job.eval, console=err)
    except DataError as e:  # an image the model's processor refuses
        raise in_job(args.job, e, f"data.splits.{args.split}") from None
    if args.json:
        print(json.dumps({"job": job.name, "split": args.split, "model": job.model.id,
                          "plan": plan.to_dict() if plan is not None else None, **result.to_dict()}))
    else:
        print_result(Console(), job, args.split, result)
    return 0


def print_result(console, job, split: str, result) -> None:
    """Rich tables: the overall score and throughput, then accuracy per question and answer type."""
    from rich.table import Table

    s = result.score
    title = f"{job.name}: {job.model.id} on {split}"
    head = Table(title=title)
    for col in ("accuracy", "questions", "seconds", "samples/s"):
        head.add_column(col, justify="right")
    head.add_row(f"{100 * s.accuracy:.2f}%", str(s.n), f"{result.seconds:.1f}", f"{result.samples_per_s:.1f}")
    console.print(head)
    for title, values in (("question type", s.per_question_type), ("answer type", s.per_answer_type)):
        table = Table(title=f"accuracy per {title}")
        table.add_column(title)
        table.add_column("accuracy", justify="right")
        if title == "question type":
            table.add_column("questions", justify="right")
        for name, acc in sorted(values.items()):
            row = [name, f"{100 * acc:.2f}%"]
            if title == "question type":
                row.append(str(s.counts_per_question_type.get(name, "")))
            table.add_row(*row)
        console.print(table)
    sys.stdout.flush()


def run_lmms_eval(args) -> int:
    """``--lmms-eval TASKS``: the retention table of :mod:`searchskip.lmms.retention`."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from searchskip.errors import ConfigError
    from searchskip.lmms.retention import retention

    tasks = [t.strip() for t in args.lmms_eval.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--lmms-eval: name at least one task (comma-separated), or `job`")
    if args.split != "validation":
        raise ConfigError("--split: --lmms-eval scores the tasks' own splits; leave --split out")
    result = retention(args.job, tasks, plan_file=args.plan, export=args.export, include_path=args.lmms_include_path,
                       limit=args.limit, out=Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"lmms-eval retention ({result['written']})")
    for col in ("task", "metric", "unplanned", "plan", "retention", "FLOPs", "LLM FLOPs"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right", overflow="fold")
    for r in result["rows"]:
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        table.add_row(r["task"], r["metric"], f"{r['unplanned']:.4f}",
                      "–" if r["planned"] is None else f"{r['planned']:.4f}", pct(r["retention"]),
                      pct(r["flops_ratio"]), pct(r["llm_flops_ratio"]))
    Console().print(table)
    return 0
