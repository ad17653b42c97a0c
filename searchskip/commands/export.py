"""``searchskip export``: write the compressed model, plan, fine-tune recipe and report of a plan.

::

    searchskip export outputs/demo                      # the best feasible trial -> outputs/demo/export/trial-<N>
    searchskip export outputs/demo --trial 14 --out DIR # one trial, into DIR
    searchskip export outputs/demo --trial pareto       # every trial of the Pareto front -> <out>/trial-<N>
    searchskip export --job jobs/demo.yaml --plan spaces/plans/skip_block.yaml --out DIR

See :mod:`searchskip.export.writer` for what an export folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchskip.commands.resume import in_dir


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a plan's compressed model, plan file, fine-tune recipe and report",
        description="Export the best trial (or trial N, or the Pareto front) of a study folder, or a hand-written "
                    "plan of a job: compressed model (safetensors), plan.yaml, metrics.json, finetune.yaml, "
                    "report.md, pareto.png and a sha256 manifest, written atomically.")
    p.add_argument("study_dir", nargs="?", default=None, help="the study folder, e.g. outputs/demo")
    p.add_argument("--trial", default="best", metavar="best|N|pareto",
                   help="which trial(s) of the study: best (default), a trial number, or pareto")
    p.add_argument("--job", default=None, metavar="JOB.yaml", help="with --plan: export a hand-written plan")
    p.add_argument("--plan", default=None, metavar="PLAN.yaml", help="the plan to export (with --job)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="export folder (default: <study>/export/trial-<N>; required with --job)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="write the export even if the exported model answers differently from the planned model")
    p.add_argument("--target", choices=["vllm"], default=None,
                   help="vllm: refuse a plan searchskip's vLLM plugin cannot serve (naming each part) and make the "
                        "export run through the plugin, the planned sublayers skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _chosen_trials(study: Any, which: str, folder: Path) -> list[Any]:
    from searchskip.errors import ConfigError
    from searchskip.search.leaderboard import leaderboard, pareto

    if which == "best":
        board = leaderboard(study)
        if not board:
            raise ConfigError(f"--trial: the study in {folder} has no feasible scored trial yet")
        return board[:1]
    if which == "pareto":
        front = pareto(study)
        if not front:
            raise ConfigError(f"--trial: the study in {folder} has no feasible scored trial yet")
        return front
    try:
        number = int(which)
    except ValueError:
        raise ConfigError(f"--trial: must be best, pareto or a trial number, but got {which!r}") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(number)
    if trial is None:
        raise ConfigError(f"--trial: the study in {folder} has no trial {number} (it has 0..{len(trials) - 1})")
    if "plan" not in trial.user_attrs:
        raise ConfigError(f"--trial: trial {number} has no plan (state {trial.state.name})")
    if trial.user_attrs.get("infeasible"):
        raise ConfigError(f"--trial: trial {number}'s plan is over the budget "
                          f"({trial.user_attrs.get('flops_ratio', float('nan')):.3f}x the FLOPs); it was never scored")
    return [trial]


def run(args) -> int:
    from rich.console import Console

    from searchskip.config.loader import job_from_data, load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.errors import ConfigError
    from searchskip.export.writer import ExportSource, check_export_target, export_plan
    from searchskip.plan import Plan
    from searchskip.search.preflight import check_model_family

    exports: list[tuple[Any, Plan, Path, ExportSource, str | None]] = []
    if args.job or args.plan:
        if not (args.job and args.plan and args.out) or args.study_dir:
            raise ConfigError("export: a hand-written plan needs --job JOB.yaml --plan PLAN.yaml --out DIR "
                              "(and no study folder)")
        job = load_job(args.job)
        plan = Plan.load(args.plan)
        exports.append((job, plan, Path(args.out), ExportSource(label=f"plan {args.plan}", plan_file=args.plan), None))
    else:
        if not args.study_dir:
            raise ConfigError("export: give a study folder (e.g. outputs/demo), or --job and --plan")
        from searchskip.commands.ls import open_existing
        from searchskip.commands.resume import read_study_folder

        folder = Path(args.study_dir).absolute()
        data, info = read_study_folder(str(folder))
        study = open_existing(str(folder))
        with in_dir(info.get("cwd")):
            job = job_from_data(data, str(folder / "job.yaml"))
        trials = _chosen_trials(study, args.trial, folder)
        base = Path(args.out).absolute() if args.out else folder / "export"
        for trial in trials:
            out = base if (args.out and len(trials) == 1 and args.trial != "pareto") else base / f"trial-{trial.number}"
            plan = Plan.from_yaml_text(trial.user_attrs["plan"], file=f"{folder} trial {trial.number}")
            exports.append((job, plan, out, ExportSource(label=f"trial {trial.number}", study=study, trial=trial),
                            info.get("cwd")))
    for job, plan, out, _source, cwd in exports:  # refuse a bad target before the first export's scoring
        with in_dir(cwd):
            check_model_family(job)  # an unsupported family: the message every verb gives
            check_export_target(out.absolute(), job, plan)
    console = Console()
    dataset = None  # the validation split, loaded once: every export here is of the same job
    for job, plan, out, source, cwd in exports:
        out = out.absolute()
        with in_dir(cwd):
            if dataset is None:
                dataset = load_eval_split(job.data, "validation")
            result = export_plan(job, plan, out, source, progress=not args.no_progress,
                                 allow_mismatch=args.allow_mismatch, dataset=dataset, target=args.target)
        _print(console, result)
    return 0


def _print(console: Any, result: Any) -> None:
    m = result.metrics
    check = m["export_check"]
    v = m["validation"]
    console.print(f"[bold]exported[/bold] {m['source']} -> {result.folder}")
    console.print(f"  FLOPs {m['flops']['ratio']:.3f}x the unplanned model (the LLM alone {m['flops']['llm_ratio']:.3f}x); "
                  f"validation accuracy "
                  f"{100 * v['accuracy']:.2f}% (unplanned {100 * v['unplanned_accuracy']:.2f}%)")
    kind = ("plain transformers (from_pretrained)" if m["model_dir"]["plain_transformers"]
            else "searchskip.load_compressed (runtime plan stored)")
    console.print(f"  model/: {len(m['model_dir']['kept_layers'])} decoder layers; loads with {kind}")
    console.print(f"  export check: {check['same_answers']}/{check['questions']} identical answers")
    for name in result.kept:
        console.print(f"  kept {name}/ from the previous export: it was made from this same model/")
    console.print(f"  files: {', '.join(f for f in result.files if '/' not in f)}, model/, manifest.json; "
                  f"fine-tune with `searchskip finetune {result.folder / 'finetune.yaml'}`")
