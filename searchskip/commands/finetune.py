"""``searchskip finetune RECIPE.yaml``: run a job's ``finetune:`` recipe (e.g. an export's finetune.yaml)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="recover accuracy: train with the plan active (an export's finetune.yaml)",
        description=("Run the job's `finetune:` section: train the projector (or LoRA adapters) with the plan "
                     "active, checkpointing as it goes; a rerun resumes from the newest checkpoint. Writes the "
                     "recovered model and its accuracy before and after."))
    p.add_argument("job", help="job YAML file with a `finetune:` section (e.g. <export>/finetune.yaml)")
    p.add_argument("--restart", action="store_true",
                   help="delete the recipe's checkpoints and start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from rich.console import Console

    from searchskip.config.loader import load_job
    from searchskip.finetune import run_finetune
    from searchskip.search.preflight import check_model_family

    job = load_job(args.job)
    check_model_family(job)  # an unsupported family: the message every verb gives
    # a job without a `finetune:` section: run_finetune's ConfigError (exit 2) says what to do
    result = run_finetune(job, progress=not args.no_progress, restart=args.restart)
    if args.json:
        print(json.dumps(result.metrics))
    else:
        print_metrics(Console(), job, result)
    return 0


def print_metrics(console, job, result) -> None:
    """A rich table of accuracy before and after, overall and per question type."""
    from rich.table import Table

    m = result.metrics
    table = Table(title=f"{job.name}: {m['method']} fine-tune, {m['steps']} steps, "
                        f"{m['eval_split']} accuracy ({m['eval_questions']} questions)")
    for col, justify in (("", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        table.add_column(col, justify=justify)

    def row(name: str, before: float | None, after: float | None) -> None:
        cells = [f"{100 * v:.2f}%" if v is not None else "-" for v in (before, after)]
        change = f"{100 * (after - before):+.2f}" if before is not None and after is not None else "-"
        table.add_row(name, *cells, change)

    row("overall", m["accuracy_before"], m["accuracy_after"])
    per = m["per_question_type"]
    for name in sorted(set(per["before"]) | set(per["after"])):
        row(name, per["before"].get(name), per["after"].get(name))
    console.print(table)
    console.print(f"recovered model: {result.model_dir}\nmetrics: {result.out / 'metrics.json'}")
    sys.stdout.flush()
