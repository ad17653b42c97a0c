"""One export folder from one plan: :func:`export_plan` (what ``searchskip export`` runs).

::

    <out>/
      plan.yaml        the plan (version 1), its FLOPs and scores as a comment header
      metrics.json     FLOPs breakdown, search scores, the export check, the unplanned model's scores
      model/           the compressed model (safetensors) + processor + searchskip_export.json
      finetune.yaml    a runnable recipe: `searchskip finetune <out>/finetune.yaml`
      report.md        layer map, FLOPs breakdown, accuracy per question type vs the unplanned model
      pareto.png       accuracy vs FLOPs of the study's feasible trials (study exports only)
      manifest.json    sha256 of every file above

**The export check.** The exported folder is loaded back (:func:`searchskip.load_compressed`)
and answers the job's validation subset; its answers are compared one by one with those of the
source model with the plan applied (the search's way of running it). ``metrics.json`` records
both accuracies and the number of identical answers; a difference is an error (nothing is
written) unless ``allow_mismatch``.

Everything is written into a temporary folder and renamed into place
(:mod:`searchskip.export.atomic`): a killed export leaves the previous one intact.

**What an export replaces** (:mod:`searchskip.export.owner`): only an export folder searchskip
wrote. A file, a link, a folder searchskip did not write (a user's, a study's) or an export
holding files a user added is refused with exit code 2 before any model is loaded. An export's
``finetune/`` (what ``searchskip finetune`` writes there) is kept: carried into the new export
when the new ``model/`` is the one it was fine-tuned from (the same plan and model, e.g. the same
trial exported again), and refused otherwise. :func:`check_export_target` applies all of this up
front; the atomic write applies it again when it swaps the folder in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchskip.config.job import Job
from searchskip.errors import SearchSkipError
from searchskip.export.model import MODEL_DIR
from searchskip.export.recipe import FINETUNE_DIR
from searchskip.plan import Plan

__all__ = ["ExportResult", "ExportSource", "check_export_target", "export_plan", "KIND", "KEEP", "MODEL_DIR",
           "PLAN_FILE", "METRICS_FILE"]

PLAN_FILE = "plan.yaml"
METRICS_FILE = "metrics.json"
KIND = "export"
"""The kind an export's manifest names: an export replaces only an export."""
KEEP = {FINETUNE_DIR: (MODEL_DIR,)}
"""What a re-export keeps: ``finetune/``, made from ``model/`` (see :mod:`searchskip.export.owner`)."""


class ExportMismatch(SearchSkipError):
    """The exported model does not answer like the planned source model."""


@dataclass
class ExportSource:
    """Where the plan came from: a study trial (``study``, ``trial``) or a plan file."""

    label: str
    study: Any = None
    trial: Any = None
    plan_file: str | None = None


@dataclass
class ExportResult:
    """An export written: its folder, its metrics, its files and the entries kept from the previous
    export there (``["finetune"]`` when a fine-tune was carried over)."""

    folder: Path
    metrics: dict
    files: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _score(loaded: Any, dataset: Any, job: Job, progress: Any, what: str) -> tuple[list[str], Any]:
    """``(answers, VQA score)`` of ``loaded`` on ``dataset`` (:func:`searchskip.eval.runner.score_model`)."""
    from searchskip.eval.runner import score_model

    result = score_model(loaded, dataset, job.eval, label=what, progress=progress)
    return result.predictions, result.score


def _unplanned_scores(source: ExportSource, loaded: Any, dataset: Any, job: Job, progress: Any) -> tuple[float, dict]:
    """The unplanned model's validation accuracy: from the study's scored unplanned trial if there
    is one, else measured now (and cached in the study's user attrs)."""
    study = source.study
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            a = t.user_attrs
            if a.get("seed") == "unplanned" and "accuracy" in a:
                return a["accuracy"], dict(a.get("accuracy_per_question_type", {}))
        cached = study.user_attrs.get("unplanned_score")
        if cached:
            return cached["accuracy"], cached["per_question_type"]
    _answers, result = _score(loaded, dataset, job, progress, "scoring the unplanned model")
    scores = {"accuracy": result.accuracy, "per_question_type": dict(result.per_question_type)}
    if study is not None:
        try:
            study.set_user_attr("unplanned_score", scores)
        except OSError:  # only a cache: a study on a read-only file system still exports elsewhere
            pass
    return scores["accuracy"], scores["per_question_type"]


def _plan_text(plan: Plan, header: list[str]) -> str:
    return "".join(f"# {line}\n" for line in header) + plan.to_yaml()


def check_export_target(out: str | Path, job: Job, plan: Plan) -> None:
    """Refuse now what writing the export of ``plan`` to ``out`` would refuse after the scoring.

    :func:`searchskip.export.atomic.check_target` (the folder is missing, empty or an export; the
    file system is writable), and a kept ``finetune/`` there must be of the same plan and model
    (read from the old ``metrics.json``). Raises a :class:`SearchSkipError` naming ``out``."""
    from searchskip.export.atomic import check_target
    from searchskip.export.owner import stale_kept_error

    occupant = check_target(out, kind=KIND, keep=KEEP)
    if not occupant.kept:
        return
    try:
        old = json.loads((occupant.path / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # cannot tell here; the swap compares the models themselves
    if old.get("plan") != json.loads(plan.to_json()) or old.get("model") != job.model.id:
        name = occupant.kept[0]
        raise stale_kept_error(occupant.path, name, KEEP[name], KIND)


def export_plan(job: Job, plan: Plan, out: str | Path, source: ExportSource, *, progress: bool = True,
                allow_mismatch: bool = False, dataset: Any = None, target: str | None = None) -> ExportResult:
    """Write the export folder ``out`` for ``plan`` on ``job``'s model (see the module doc).

    ``dataset``: the job's validation split when the caller has it already (the verb loads it
    once for all the trials it exports); ``None``: loaded here. ``target="vllm"``: refuse (before
    scoring) a plan searchskip's vLLM plugin cannot serve, naming each part, and make the folder
    name the plugin's classes, so vLLM runs it with the plan's skips
    (:mod:`searchskip.export.serving`)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from searchskip.arch import get_adapter
    from searchskip.data.splits import load_eval_split
    from searchskip.eval.planned import apply_plan, plan_calibration
    from searchskip.export.atomic import atomic_directory
    from searchskip.errors import ConfigError, Problem
    from searchskip.export.held import name_plugin_classes
    from searchskip.export.load import load_compressed
    from searchskip.export.model import compress, runtime_plan, save_compressed
    from searchskip.export.serving import serving_of
    from searchskip.vllm_plugin.plan import WHY
    from searchskip.flops import Workload, count_flops, measure_workload
    from searchskip.models import load_model
    from searchskip.search.objective import budget_of

    start = time.perf_counter()
    out = Path(out)
    check_export_target(out, job, plan)
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True, disable=not progress)
    with bar:
        if dataset is None:
            dataset = load_eval_split(job.data, "validation")
        loaded = load_model(job.model)
        num_layers = get_adapter(loaded.model).num_layers(loaded.model)
        pinned = get_adapter(loaded.model).injected_layers(loaded.model)
        plan = plan.validate(num_layers, file=source.plan_file)
        residual, kept = runtime_plan(plan, num_layers, pinned)
        serving = serving_of(loaded.model.config, residual, len(kept))
        if target == "vllm" and serving.problems:
            raise ConfigError([Problem(source.plan_file or source.label, "",
                                       f"--target vllm: searchskip's vLLM plugin cannot serve this plan: "
                                       f"{'; '.join(serving.problems)}. {WHY}")])
        study = source.study
        stored = study.user_attrs.get("workload") if study is not None else None
        workload = Workload.from_dict(stored) if stored else measure_workload(loaded, dataset, job.eval.max_new_tokens)
        budget = budget_of(job.search.budget) if job.search is not None else None
        count_kw = {"count": budget.count, "attention": budget.attention} if budget is not None else {}
        report = count_flops(loaded.model.config, plan, workload, **count_kw)
        baseline = count_flops(loaded.model.config, None, workload, **count_kw)
        ratio = report.ratio(baseline)
        llm = report.llm_ratio(baseline)

        unplanned_acc, unplanned_pqt = _unplanned_scores(source, loaded, dataset, job, bar)
        calibration = plan_calibration(loaded, job, plan)
        handle = apply_plan(loaded, job, plan, source=source.plan_file or source.label, calibration=calibration)
        try:
            planned_answers, planned = _score(loaded, dataset, job, bar, "scoring the planned model")
        finally:
            handle.restore()

        with atomic_directory(out, kind=KIND, keep=KEEP) as tmp:
            compressed = compress(loaded, plan, calibration=calibration)
            save_compressed(loaded, tmp / MODEL_DIR, runtime_plan=compressed.runtime_plan,
                            prompt_template=loaded.template, source_model=job.model.id,
                            extra={"kept_layers": compressed.kept_layers, "source_plan": json.loads(plan.to_json()),
                                   **({"ffn_widths": compressed.ffn_widths} if compressed.ffn_widths else {})})
            if target == "vllm" and (compressed.runtime_plan is not None or compressed.ffn_widths):
                name_plugin_classes(tmp / MODEL_DIR)  # vLLM runs it through the plugin, skipping the planned work
            del loaded
            exported = load_compressed(tmp / MODEL_DIR, device=job.model.device)
            export_answers, checked = _score(exported, dataset, job, bar, "checking the exported model")
            same = sum(a == b for a, b in zip(planned_answers, export_answers))
            if same != len(planned_answers) and not allow_mismatch:
                raise ExportMismatch(
                    f"{out}: the exported model answers {len(planned_answers) - same} of {len(planned_answers)} "
                    "validation questions differently from the planned source model; nothing was written")
            trial = source.trial
            metrics = {
                "source": source.label,
                "trial": trial.number if trial is not None else None,
                "model": job.model.id,
                "plan": json.loads(plan.to_json()),
                "flops": {"per_sample": report.total_flops, "unplanned_per_sample": baseline.total_flops,
                          "ratio": ratio, "llm_ratio": llm,
                          "by_component": report.by_component(),
                          "unplanned_by_component": baseline.by_component()},
                "validation": {"questions": len(dataset), "accuracy": planned.accuracy,
                               "per_question_type": dict(planned.per_question_type),
                               "unplanned_accuracy": unplanned_acc, "unplanned_per_question_type": unplanned_pqt},
                "search": ({k: trial.user_attrs.get(k) for k in ("accuracy", "flops_ratio", "questions")}
                           if trial is not None else None),
                "export_check": {"questions": len(dataset), "same_answers": same,
                                 "accuracy_planned": planned.accuracy, "accuracy_export": checked.accuracy},
                "serving": serving.to_dict(),
                "model_dir": {"kept_layers": compressed.kept_layers, "ffn_size": compressed.ffn_size,
                              "ffn_widths": compressed.ffn_widths,
                              "plain_transformers": serving.plain,
                              "runtime_plan": (json.loads(compressed.runtime_plan.to_json())
                                               if compressed.runtime_plan is not None else None)},
            }
            header = [f"searchskip export of {source.label}",
                      f"model: {job.model.id}",
                      f"FLOPs: {ratio:.4f} x the unplanned model ({report.total_flops / 1e9:.4g} GFLOPs/sample); "
                      f"the LLM alone: {llm:.4f} x",
                      f"validation accuracy: {100 * planned.accuracy:.2f}% (unplanned {100 * unplanned_acc:.2f}%, "
                      f"{len(dataset)} questions)",
                      "full figures: metrics.json"]
            (tmp / PLAN_FILE).write_text(_plan_text(plan, header))
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            _write_recipe(job, tmp, out, plan)
            _write_report(tmp, job, plan, num_layers, report, ratio, llm, planned, unplanned_acc, unplanned_pqt,
                          source, budget.ratio if budget is not None else None, pinned,
                          notes=(f"Serving: {serving.line()}.",))
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    metrics["seconds"] = time.perf_counter() - start
    kept = [name for name in KEEP if (out / name).exists()]
    return ExportResult(folder=out, metrics=metrics, files=files, kept=kept)


def _write_recipe(job: Job, tmp: Path, out: Path, plan: Plan) -> None:
    from searchskip.export.recipe import write_recipe

    write_recipe(job, tmp, "; ".join(plan.describe()) or "no change", final_dir=out)


def _write_report(tmp: Path, job: Job, plan: Plan, num_layers: int, report: Any, ratio: float, llm: float,
                  planned: Any, unplanned_acc: float, unplanned_pqt: dict, source: ExportSource,
                  budget_ratio: float | None, pinned: frozenset[int] = frozenset(), notes: tuple[str, ...] = ()) -> None:
    """``report.md`` (and, for a study's trial, ``pareto.png`` of the study's points: :func:`write_report`
    derives them from ``study``)."""
    from searchskip.export.report import write_report

    write_report(tmp, title=f"{job.name}: {source.label}", plan=plan, num_layers=num_layers, pinned=pinned,
                 flops=report.by_component(), flops_ratio=ratio, llm_flops_ratio=llm, accuracy=planned.accuracy,
                 per_question_type=dict(planned.per_question_type), unplanned_per_question_type=unplanned_pqt,
                 unplanned_accuracy=unplanned_acc,
                 chosen=source.trial.number if source.trial is not None else None,
                 source=str(source.label), budget_ratio=budget_ratio, study=source.study, notes=notes)
