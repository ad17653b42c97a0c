"""The unplanned model and a plan side by side on lmms-eval tasks: :func:`retention`
(``searchskip eval JOB --lmms-eval TASKS --plan PLAN.yaml`` or ``--export DIR``).

Both models are scored by lmms-eval (``simple_evaluate``, the tasks' own prompts and metrics) through
:class:`~searchskip.lmms.backend.SearchSkipLMMS`, one after the other. Per task and metric the table
gives both scores and the retention (plan / unplanned); the FLOP ratios are the analytic count
(:func:`searchskip.flops.count_flops`, the job's budget convention) of the plan over the unplanned
model on *that task's* workload, measured on the questions the unplanned model answered (the prompt
as the model got it, the image, the answer it generated: up to
:data:`~searchskip.lmms.backend.WORKLOAD_ROWS` per task). Written as ``lmms-eval-retention.json``
and ``.md``.

The task name ``job`` is the job's own validation subset as a local task
(:func:`searchskip.lmms.tasks.write_vqa_task`), scored with lmms-eval's VQAv2 metric.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["JOB_TASK", "retention", "markdown"]

JOB_TASK = "job"
"""The task name that stands for the job's validation subset."""
FILE = "lmms-eval-retention"
KIND = "lmms-eval retention"
"""What the output folder is (:func:`searchskip.export.atomic.atomic_directory`'s ``kind``)."""
TASK_KIND = "lmms-eval task"


def _lmms_eval() -> None:
    """:class:`ConfigError` with the install line when lmms-eval is missing; its logging quietened."""
    from searchskip.errors import ConfigError, Problem

    import importlib

    try:
        for module in ("lmms_eval.evaluator", "lmms_eval.tasks"):
            importlib.import_module(module)
    except ImportError as err:
        raise ConfigError([Problem(None, "--lmms-eval", f"needs lmms-eval, which is not installed here ({err}); "
                                                        "install it with pip install torch==2.13.0 torchvision==0.28.0 "
                                                        "'searchskip[lmms-eval]' (one command, so pip keeps this torch)")]
                          ) from None
    _quiet()


def _quiet() -> None:
    """lmms-eval logs through loguru at DEBUG/INFO to stdout; keep its errors, on stderr."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR", format="lmms-eval: {message}")


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """lmms-eval's tqdm bars off while it runs in searchskip (the backend prints its own progress
    lines): its modules' ``tqdm`` names point at a disabled tqdm, and back afterwards."""
    import functools
    import importlib

    from tqdm import tqdm

    modules = [importlib.import_module(name) for name in ("lmms_eval.evaluator", "lmms_eval.api.task")]
    saved = [(m, m.tqdm) for m in modules if getattr(m, "tqdm", None) is tqdm]
    for module, _ in saved:
        module.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


def _task_manager(tasks: list[str], include_path: list[str]) -> Any:
    """lmms-eval's ``TaskManager``: only ``include_path`` when it holds every task (indexing lmms-eval's
    own ~2000 tasks takes seconds), else lmms-eval's tasks too. ConfigError naming unknown tasks."""
    import difflib

    from lmms_eval.tasks import TaskManager

    from searchskip.errors import ConfigError, Problem, first_line

    def manager_of(defaults: bool) -> Any:
        try:
            return TaskManager("ERROR", include_path=include_path or None, include_defaults=defaults,
                               model_name="searchskip")
        except Exception as err:  # noqa: BLE001 - lmms-eval reading task YAML files (the user's, or its own)
            raise ConfigError([Problem(None, "--lmms-include-path", f"lmms-eval cannot read the task files of "
                                                                    f"{', '.join(include_path) or 'lmms-eval'}: "
                                                                    f"{type(err).__name__}: {first_line(err)}")]) from None

    manager = manager_of(False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = manager_of(True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = [f"{t!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if (close := difflib.get_close_matches(
            t, [JOB_TASK, *manager.all_tasks], n=3)) else "") for t in unknown]
        raise ConfigError([Problem(None, "--lmms-eval", f"unknown lmms-eval task(s) {', '.join(hints)}; list them with "
                                                        "`lmms-eval --tasks list`, or add a folder of task YAML files "
                                                        "with --lmms-include-path")])
    return manager


def _load_tasks(tasks: list[str], manager: Any) -> None:
    """Build the tasks (their datasets loaded) before any model is: a dataset lmms-eval cannot load
    (offline, no Hugging Face token, a damaged local file) is one line naming the tasks, not a
    traceback after the first model's evaluation."""
    from lmms_eval.tasks import get_task_dict

    from searchskip.errors import DataError, first_line

    try:
        get_task_dict(tasks, manager)
    except Exception as err:  # noqa: BLE001 - lmms-eval and datasets loading the tasks' data
        last = getattr(err, "last_attempt", None)  # tenacity's RetryError: say the last try's error
        cause = (last.exception() if last is not None else None) or err
        raise DataError(f"--lmms-eval {','.join(tasks)}: lmms-eval could not load the tasks' data "
                        f"({type(cause).__name__}: {first_line(cause)}); a task on the Hugging Face hub needs the "
                        "network and, for some, a token; local tasks: see --lmms-include-path") from None


def _scores(results: dict) -> dict[str, dict[str, float]]:
    """Task -> metric -> value (``exact_match,none`` becomes ``exact_match``; stderr entries dropped)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, _ = key.partition(",")
            if key == "alias" or "stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out.setdefault(task, {})[metric] = float(value)
    return out


def _evaluate(kw: dict, tasks: list[str], manager: Any, limit: int | None, console: Any, label: str) -> tuple[dict, Any]:
    from lmms_eval.evaluator import simple_evaluate

    from searchskip.lmms.backend import SearchSkipLMMS

    console.print(f"[bold]lmms-eval[/]: {label}")
    lm = SearchSkipLMMS(**kw)
    began = time.perf_counter()
    with _no_bars():
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                                  bootstrap_iters=0, device=lm.loaded.device, verbosity="ERROR")
    return {"scores": _scores(results), "seconds": time.perf_counter() - began}, lm


def _flops(unplanned: Any, plan: Any, job: Any) -> dict[str, dict]:
    """Task -> FLOP ratios of ``plan`` on the workload of the questions ``unplanned`` answered."""
    import datasets

    from searchskip.flops import count_flops, measure_workload
    from searchskip.search.objective import budget_of

    budget = budget_of(job.search.budget) if job.search is not None else None
    count_kw = {"count": budget.count, "attention": budget.attention} if budget is not None else {}
    out = {}
    for task, rows in unplanned.seen.items():
        if not rows:
            continue
        data = datasets.Dataset.from_list(rows)
        workload = measure_workload(unplanned.loaded, data, unplanned.task_max_new_tokens.get(task, 16))
        base = count_flops(unplanned.loaded.model.config, None, workload, **count_kw)
        mine = count_flops(unplanned.loaded.model.config, plan, workload, **count_kw)
        out[task] = {"flops_ratio": mine.ratio(base), "llm_flops_ratio": mine.llm_ratio(base),
                     "questions": len(rows), "prompt_tokens": workload.prompt_tokens,
                     "generated_tokens": workload.generated_tokens, "image_tokens": workload.image_tokens}
    return out


def _default_out(job: Any, plan_file: str | None, export: str | None) -> Path:
    """Beside the export (``<export>-lmms-eval``: the export's own folder is sealed by its manifest),
    or ``<outputs>/<job>/lmms-eval/plan-<plan name>``."""
    from searchskip.lmms.target import model_folder

    if export is not None:
        root = model_folder(export)
        root = root.parent if root.name == "model" and (root.parent / "manifest.json").is_file() else root
        return root.parent / f"{root.name}-lmms-eval"
    return Path(job.outputs) / job.name / "lmms-eval" / f"plan-{Path(plan_file).stem}"


def _check_inputs(job_file: str, job: Any, plan_file: str | None, export: str | None,
                  include_path: list[str]) -> None:
    """Everything about the inputs that can be refused before a model loads: the plan file, the
    export (its record, its source model, its files), the include folders."""
    from searchskip.config.job import ModelSpec
    from searchskip.errors import ConfigError, Problem, in_job
    from searchskip.export.model import read_export_info
    from searchskip.lmms.target import model_folder
    from searchskip.models import check_family
    from searchskip.plan import Plan

    if plan_file is not None:
        Plan.load(plan_file)
    if export is not None:
        folder = model_folder(export)
        info = read_export_info(folder)
        if info.get("source_model") not in (None, job.model.id):
            raise ConfigError([Problem(job_file, "model.id", f"the export {export} was made from "
                                                             f"{info.get('source_model')!r}, not from this job's model "
                                                             f"{job.model.id!r}: give the job it was made with")])
        check_family(ModelSpec(id=str(folder)))
    for folder in include_path:
        if not Path(folder).is_dir():
            raise ConfigError([Problem(None, "--lmms-include-path", f"must be a folder of lmms-eval task YAML files, "
                                                                    f"but {folder!r} is not a folder")])
    try:
        check_family(job.model)
    except Exception as err:
        raise in_job(job_file, err, "model.id") from None


def retention(job_file: str, tasks: list[str], *, plan_file: str | None = None, export: str | None = None,
              include_path: list[str] | None = None, limit: int | None = None, batch_size: int | None = None,
              out: Path | None = None, console: Any = None) -> dict:
    """Score the job's model and the plan (``plan_file`` on it, or the export ``export`` made from
    it) on lmms-eval ``tasks``; write and return the retention table (see the module doc).

    Everything that can be refused is refused before a model loads: the plan, the export, the
    include folders, the tasks and their data, and the output folder (``out``: missing, or a folder
    this command wrote; a writable file system). The table is written atomically
    (:func:`searchskip.export.atomic.atomic_directory`)."""
    from rich.console import Console

    from searchskip.config.loader import load_job
    from searchskip.errors import ConfigError, Problem
    from searchskip.export.atomic import atomic_directory, check_target

    console = console or Console(stderr=True)
    if plan_file is not None and export is not None:
        raise ConfigError([Problem(None, "--plan", "and --export exclude each other: compare the job's model with "
                                                   "a plan (--plan) or with an export made from it (--export)")])
    if plan_file is None and export is None:
        raise ConfigError([Problem(None, "--lmms-eval", "give the plan to compare: --plan PLAN.yaml or --export DIR")])
    job = load_job(job_file)
    _lmms_eval()
    include = list(include_path or [])
    _check_inputs(job_file, job, plan_file, export, include)
    out = Path(out) if out is not None else _default_out(job, plan_file, export)
    check_target(out, kind=KIND)
    tasks = list(dict.fromkeys(tasks))  # a task named twice is scored once
    if JOB_TASK in tasks:
        folder = Path(job.outputs) / job.name / "lmms-eval" / "job-task"
        with atomic_directory(folder, kind=TASK_KIND) as tmp:
            name = write_job_task(job, tmp, folder)
        tasks[tasks.index(JOB_TASK)] = name
        include.append(str(folder))
    manager = _task_manager(tasks, include)
    _load_tasks(tasks, manager)
    batch = batch_size or job.eval.batch_size
    sides = {"unplanned": {"job": job_file},
             "planned": ({"export": export, "device": job.model.device, "dtype": job.model.dtype} if export is not None
                         else {"job": job_file, "plan": plan_file})}
    result: dict[str, Any] = {"job": job_file, "model": job.model.id, "tasks": tasks, "limit": limit,
                              "plan": plan_file, "export": export, "measured": time.strftime("%Y-%m-%d %H:%M")}
    unplanned_lm = None
    plan = None
    for side, kw in sides.items():
        scored, lm = _evaluate({**kw, "batch_size": batch}, tasks, manager, limit, console, f"{side}: {lm_label(kw)}")
        result[side] = scored
        if side == "unplanned":
            unplanned_lm = lm
        else:
            plan = lm.target.plan
            del lm
            gc.collect()
    result["flops"] = _flops(unplanned_lm, plan, job)
    result["rows"] = _rows(result)
    with atomic_directory(out, kind=KIND) as tmp:
        (tmp / f"{FILE}.json").write_text(json.dumps(result, indent=1))
        (tmp / f"{FILE}.md").write_text(markdown(result))
    result["written"] = str(out / f"{FILE}.md")
    return result


def write_job_task(job: Any, folder: Path, final: Path) -> str:
    """The job's validation subset as the local task of :data:`JOB_TASK`, written into ``folder``
    for the place ``final`` it will be moved to."""
    from searchskip.lmms.tasks import write_vqa_task

    return write_vqa_task(job, folder, data_path=final / "data")


def lm_label(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items() if k in ("job", "plan", "export"))


def _rows(result: dict) -> list[dict]:
    rows = []
    for task, metrics in result["unplanned"]["scores"].items():
        for metric, base in metrics.items():
            planned = result["planned"]["scores"].get(task, {}).get(metric)
            flops = result["flops"].get(task, {})
            rows.append({"task": task, "metric": metric, "unplanned": base, "planned": planned,
                         "retention": (planned / base) if planned is not None and base else None,
                         "flops_ratio": flops.get("flops_ratio"), "llm_flops_ratio": flops.get("llm_flops_ratio")})
    return rows


def markdown(result: dict) -> str:
    """The retention table."""
    from searchskip.export.report import markdown_table

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    what = f"export {result['export']}" if result["export"] else f"plan {result['plan']}"
    lines = [f"lmms-eval retention of {what} on {result['model']} ({result['job']}), measured {result['measured']}"
             + (f", first {result['limit']} documents per task" if result["limit"] else "") + ".", ""]
    lines += markdown_table(["task", "metric", "unplanned", "plan", "retention", "FLOPs", "LLM FLOPs"],
                            [[r["task"], r["metric"], f"{r['unplanned']:.4f}",
                              "–" if r["planned"] is None else f"{r['planned']:.4f}", pct(r["retention"]),
                              pct(r["flops_ratio"]), pct(r["llm_flops_ratio"])] for r in result["rows"]],
                            ["l", "l", "r", "r", "r", "r", "r"])
    return "\n".join(lines) + "\n"
