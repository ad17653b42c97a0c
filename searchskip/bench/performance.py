"""The performance benchmark: what a trial costs and what the exports gain (how good the search is:
:mod:`searchskip.bench.quality`).

    python -m searchskip.bench.performance jobs/demo.yaml                  # every part, one run
    python -m searchskip.bench.performance jobs/demo.yaml --parts latency  # re-measure one part

Results go to ``<outputs>/bench/performance-<job>.{json,md}`` (a part run alone replaces its
own entry and keeps the others'); the studies it runs stay under ``<outputs>/bench/studies/``.
Every number is measured by this run on this machine; ratios are taken within one part, so
a machine's load affects both sides of a ratio alike.

Parts:

* ``cost`` -- time per trial against its floor and against naive evaluation. A TPE study
  (pruner off, so every scored trial runs the whole subset) gives each trial's wall time
  (optuna's start to finish: sampling, FLOP count, apply, answering, restore, storage). For the
  same plans, in the same run: *bare* = ``generate`` of the planned model over the subset's
  pre-tokenized batches, vision tower included (the compressed model's own cost, nothing
  else); *naive* = what a trial would cost without searchskip's caches (load the model and the
  data, apply, process the images and answer, restore). Also the feature cache's share, and
  the upper bound of what a prefix hidden-state cache could save (the prefill time of the
  untouched first layers, measured with hooks, over the trial time).
* ``pruners`` -- trials per hour and best accuracy of the same TPE study with ``pruner: none``,
  ``median`` and ``halving`` (growing subset).
* ``latency`` -- exported models (:func:`~searchskip.export.model.compress`, saved and loaded back
  with :func:`searchskip.load_compressed`): prefill and per-token decode latency (median of
  repeats after warm-up) against the unplanned model, next to their FLOP ratios.
* ``ray`` -- trials per minute of the Ray backend with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from searchskip.bench import write_result
from searchskip.bench.harness import Bench, search_job, median as _median, plan_of as _plan_of, timed as _timed, trial_wall_s as _trial_wall_s
from searchskip.export.report import markdown_table
from searchskip.search.leaderboard import leaderboard

PARTS = ("cost", "pruners", "latency", "ray")
NAME = "performance"


def first_touched_layer(plan: Any, num_layers: int) -> int:
    """The first decoder layer whose prefill ``plan`` changes (``num_layers`` when none does):
    ops scoped to generated tokens and early exit leave the prefill alone."""
    first = num_layers
    for layer, op in plan.layers:
        if op.op != "keep" and plan.op_for(layer).scope != "generated":
            first = min(first, layer)
    if plan.drop is not None:
        first = min(first, min(plan.drop.layers(), default=num_layers))
    if plan.prune is not None:
        first = 0
    if plan.visual_tokens is not None:
        rank = plan.visual_tokens.rank_layer
        first = min(first, plan.visual_tokens.after_layer if rank is None else rank)
    return first


# ---- part: cost ---------------------------------------------------------------------------------


def _bare_seconds(bench: Bench, plan: Any, batches: list[dict], repeats: int) -> float:
    """Median wall time of ``generate`` over ``batches`` (pixel values: the vision tower runs) with ``plan``."""
    from searchskip.eval.generate import generate_answers

    handle = bench.evaluator.apply_fn(plan)
    try:
        times = [_timed(lambda: [generate_answers(bench.loaded, b, bench.job.eval.max_new_tokens) for b in batches])[0]
                 for _ in range(repeats)]
    finally:
        handle.restore()
    return _median(times)


def _naive_seconds(bench: Bench, plan: Any) -> float:
    """One trial without caches: load model and data, apply, process images and answer, restore."""
    from searchskip.eval.planned import apply_plan
    from searchskip.eval.runner import evaluate
    from searchskip.search.worker import load_worker_inputs

    def trial() -> None:
        loaded, dataset = load_worker_inputs(bench.job)
        handle = apply_plan(loaded, bench.job, plan, source="bench")
        try:
            evaluate(loaded, dataset, bench.job.eval.batch_size, bench.job.eval.max_new_tokens)
        finally:
            handle.restore()

    return _timed(trial)[0]


def _prefill_layer_seconds(bench: Bench, batches: list[dict]) -> tuple[list[float], float]:
    """``(per decoder layer, the wall time its prefill calls take over batches; the wall time of the
    whole timed pass)`` on the unplanned model, after an untimed warm-up pass."""
    from searchskip.arch import get_adapter
    from searchskip.eval.generate import generate_answers

    layers = get_adapter(bench.loaded.model).layers(bench.loaded.model)
    spent = [0.0] * len(layers)
    began: dict[int, float] = {}
    hooks = []
    for i, layer in enumerate(layers):
        def pre(module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is not None and hidden.shape[1] > 1:
                began[i] = time.perf_counter()

        def post(module, args, kwargs, output, i=i):
            if i in began:
                spent[i] += time.perf_counter() - began.pop(i)

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        for batch in batches:  # a warm-up pass, then the timed one
            generate_answers(bench.loaded, batch, bench.job.eval.max_new_tokens)
        spent[:] = [0.0] * len(layers)
        began_pass = time.perf_counter()
        for batch in batches:
            generate_answers(bench.loaded, batch, bench.job.eval.max_new_tokens)
        whole = time.perf_counter() - began_pass
    finally:
        for hook in hooks:
            hook.remove()
    return spent, whole


def measure_cost(bench: Bench, trials: int, plans: int, repeats: int, naive: int = 3) -> dict:
    """The ``cost`` part (see the module doc); the naive cost for the first ``naive`` plans (0 for a
    model the job cannot load again)."""
    from searchskip.eval.prepared import prepare_subset
    from searchskip.flops import geometry_of

    job = bench.job
    prep_s, _ = _timed(lambda: bench.evaluator)
    result = bench.study("cost-tpe", trials, pruner="none", seed_plans=False, sampler="tpe")
    board = leaderboard(result.study)
    if not board:
        raise RuntimeError("the cost study scored no plan")
    # the same pre-tokenized batches, with pixel values: what a bare generate of the model takes
    batches = [b.generate_inputs() for b in prepare_subset(bench.loaded, bench.dataset, job.eval.batch_size,
                                                           feature_cache="none")]
    per_plan = []
    for k, trial in enumerate(board[:plans]):
        plan = _plan_of(trial)
        row = {"trial": trial.number, "plan": trial.user_attrs["plan"], "flops_ratio": trial.user_attrs["flops_ratio"],
               "trial_s": _trial_wall_s(trial), "bare_s": _bare_seconds(bench, plan, batches, repeats),
               "evaluate_cached_s": _median([_timed(lambda: bench.evaluator(plan, None))[0] for _ in range(repeats)])}
        if k < naive:
            row["naive_s"] = _naive_seconds(bench, plan)
        per_plan.append(row)
        bench.console.print(f"cost: trial {trial.number}: trial {row['trial_s']:.3f}s bare {row['bare_s']:.3f}s"
                            + (f" naive {row['naive_s']:.3f}s" if "naive_s" in row else ""))
    layer_s, pass_s = _prefill_layer_seconds(bench, batches)
    firsts = [first_touched_layer(_plan_of(t), bench.num_layers) for t in board]
    saved = [sum(layer_s[:k]) / pass_s for k in firsts]  # share of a whole pass, measured in that pass
    geometry = geometry_of(bench.arch)
    layer = geometry.layers[0]
    position_bytes = sum(int(b["input_ids"].numel()) for b in batches) * next(bench.loaded.model.parameters()).element_size()
    return {
        "trials": trials, "plans_timed": len(per_plan), "repeats": repeats, "questions": len(bench.dataset),
        "prepare_s": prep_s, "feature_cache": bench.evaluator.prepared.cache,
        "feature_mib": bench.evaluator.prepared.feature_bytes / 2 ** 20, "load_s": bench.load_s,
        "per_plan": per_plan,
        "trial_s": _median([r["trial_s"] for r in per_plan]), "bare_s": _median([r["bare_s"] for r in per_plan]),
        "naive_s": _median([r["naive_s"] for r in per_plan if "naive_s" in r]) if naive else None,
        "trial_over_bare": _median([r["trial_s"] / r["bare_s"] for r in per_plan]),
        "trial_over_bare_max": max(r["trial_s"] / r["bare_s"] for r in per_plan),
        "naive_over_trial": _median([r["naive_s"] / r["trial_s"] for r in per_plan if "naive_s" in r]) if naive else None,
        # bare recomputes the image features every time; answering with the cache does not
        "uncached_over_cached": _median([r["bare_s"] / r["evaluate_cached_s"] for r in per_plan]),
        "overhead_s": _median([r["trial_s"] - r["evaluate_cached_s"] for r in per_plan]),
        "prefix": {
            "prefill_layer_s": layer_s,
            "pass_s": pass_s,
            "first_touched_layer": firsts,
            "mean_saving_of_trial": sum(saved) / len(saved),
            # a boundary at layer k holds its hidden states and the K/V of the k layers below it
            "mib_hidden": position_bytes * geometry.lm_head.in_features / 2 ** 20,
            "mib_kv_per_layer": position_bytes * 2 * layer.kv_heads * layer.head_dim / 2 ** 20,
        },
    }


# ---- part: pruners ------------------------------------------------------------------------------


def _questions_scored(study: Any, full: int) -> int:
    from optuna.trial import TrialState

    total = 0
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("infeasible") or "dedup_of" in t.user_attrs:
            continue
        if t.state == TrialState.COMPLETE:
            total += full
        elif t.state == TrialState.PRUNED:
            total += int(t.user_attrs.get("pruned_at", 0))
    return total


def measure_pruners(bench: Bench, trials: int) -> dict:
    """The ``pruners`` part: the same TPE study with each pruner."""
    from searchskip.search.evaluations import trial_counts

    bench.evaluator  # prepared before the clocks start
    out = {}
    for pruner in ("none", "median", "halving"):
        seconds, result = _timed(lambda: bench.study(f"pruner-{pruner}", trials, pruner=pruner, sampler="tpe"))
        board = leaderboard(result.study)
        counts = trial_counts(result.study)
        out[pruner] = {"trials": counts["counted"], "seconds": seconds, "trials_per_hour": 3600 * counts["counted"] / seconds,
                       "complete": counts["complete"], "pruned": counts["pruned"], "infeasible": counts["infeasible"],
                       "evaluations": result.evaluations,
                       "questions_scored": _questions_scored(result.study, len(bench.dataset)),
                       "best_accuracy": board[0].user_attrs["accuracy"] if board else None,
                       "best_plan": board[0].user_attrs["plan"] if board else None}
        bench.console.print(f"pruner {pruner}: {out[pruner]['trials_per_hour']:.0f} trials/h, best "
                            f"{out[pruner]['best_accuracy']}")
    return {"budget": dataclasses.asdict(bench.job.search.budget), "trials": trials, "by_pruner": out}


# ---- part: latency ------------------------------------------------------------------------------


def _latency_plans(bench: Bench, quality: dict | None) -> list[tuple[str, Any, str]]:
    """``(label, plan, note)``: the default search's 50% plan (first seed) and BI skip_block at 50% when
    a quality run (:mod:`searchskip.bench.quality`) left them, structured FFN-channel pruning,
    parallel attention||FFN, unstructured Wanda."""
    from searchskip.plan import Plan
    from searchskip.search.baselines import block_influence_plan

    plans: list[tuple[str, Any, str]] = []
    quality = quality or {}
    default = quality.get("default_method")
    runs = quality.get("by_budget", {}).get("0.5", {}).get(default, {}).get("runs") or [{}]
    if "plan" in runs[0]:
        plans.append((f"search ({default}) at 50% LLM FLOPs", Plan.from_yaml_text(runs[0]["plan"]), ""))
    bi = quality.get("block_influence")
    if bi is not None:
        plan = block_influence_plan(bi, bench.arch, bench.workload, bench.budget(0.5), op="skip_block")
        if plan is not None:
            plans.append(("Block Influence skip_block at 50%", plan, "layers removed from the export"))
    inner = list(range(1, bench.num_layers - 1))
    plans.append(("ffn_channels 50% (Wanda) on every layer", Plan.from_dict({
        "version": 1, "prune": {"method": "wanda", "structure": "ffn_channels", "sparsity": 0.5, "targets": ["ffn"],
                                "calibration": {"samples": 64}}}), "structured: smaller FFN matrices"))
    plans.append((f"parallel_attn_ffn on layers {inner[0]}-{inner[-1]}",
                  Plan(layers={i: "parallel_attn_ffn" for i in inner}), "same FLOPs, less depth"))
    plans.append(("unstructured Wanda 50%", Plan.from_dict({
        "version": 1, "prune": {"method": "wanda", "structure": "unstructured", "sparsity": 0.5,
                                "targets": ["attn", "ffn"], "calibration": {"samples": 64}}}),
                  "zeros in dense matrices: no dense FLOPs saved"))
    return plans


def _phase_ratios(bench: Bench, plan: Any) -> tuple[float, float]:
    mine, base = bench.flops(plan).by_component(), bench.baseline.by_component()
    return (mine["llm_prefill"] / base["llm_prefill"], mine["llm_decode"] / base["llm_decode"])


class _ForwardTimer:
    """Times one model's forward calls inside ``generate`` on one prepared batch (hooks on the
    model during :meth:`run`): the first call is the prefill, the others decode one token each.
    The batch's image features are given (``mm_encoder_outputs``), so the vision tower is outside
    both; ``generate``'s own per-step work (logits processing, stopping checks) is outside too."""

    def __init__(self, loaded: Any, batch: Any, new_tokens: int):
        self.loaded, self.batch, self.new_tokens = loaded, batch, new_tokens
        self.timed: list[tuple[float, float]] = []

    def run(self, keep: bool) -> None:
        """One ``generate`` of ``1 + new_tokens`` tokens (forced); ``keep``: record ``(prefill s, median decode s)``."""
        import torch

        calls: list[float] = []
        began: list[float] = []
        model = self.loaded.model
        # CUDA runs kernels asynchronously: wait for them at both ends, or a call's time is its launch time
        sync = torch.cuda.synchronize if str(self.loaded.device).startswith("cuda") else (lambda: None)

        def start(*_: Any) -> None:
            sync()
            began.append(time.perf_counter())

        def stop(*_: Any) -> None:
            sync()
            calls.append(time.perf_counter() - began.pop())

        hooks = [model.register_forward_pre_hook(start), model.register_forward_hook(stop)]
        try:
            with torch.inference_mode():
                model.generate(**self.batch.generate_inputs(), max_new_tokens=1 + self.new_tokens,
                               min_new_tokens=1 + self.new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=self.loaded.processor.tokenizer.pad_token_id)
        finally:
            for hook in hooks:
                hook.remove()
        if keep:
            self.timed.append((calls[0], _median(calls[1:])))

    def medians_ms(self) -> dict[str, float]:
        return {"prefill_ms": 1000 * _median([t[0] for t in self.timed]),
                "decode_ms": 1000 * _median([t[1] for t in self.timed])}


def _export(bench: Bench, plan: Any, target: Path) -> Any:
    """``plan``'s compressed model written to ``target`` and loaded back as users load it."""
    from searchskip.eval.planned import plan_calibration
    from searchskip.export.load import load_compressed
    from searchskip.export.model import compress, save_compressed
    from searchskip.models import load_model

    fresh = load_model(bench.job.model)
    compressed = compress(fresh, plan, calibration=plan_calibration(fresh, bench.job, plan))
    save_compressed(fresh, target, runtime_plan=compressed.runtime_plan, prompt_template=fresh.template,
                    source_model=bench.job.model.id)
    return load_compressed(str(target))


def measure_latency(bench: Bench, quality: dict | None, batch_sizes: list[int], repeats: int, new_tokens: int,
                    warmup: int = 3, *, plans: list[tuple[str, Any, str]] | None = None,
                    export: Any = None) -> dict:
    """The ``latency`` part (see the module doc). The exports are timed round-robin (each repeat runs
    every model once), so a burst of load on a shared machine hits them all alike. ``plans``:
    ``(label, plan, note)`` rows (default: :func:`_latency_plans`); ``export(plan, folder)``: the
    exported model of a plan (default: written to ``folder`` and loaded back)."""
    import torch

    from searchskip.arch import get_adapter
    from searchskip.eval.prepared import prepare_subset

    out_rows, timers = [], []
    folder = Path(tempfile.mkdtemp(prefix="searchskip-bench-export-"))
    try:
        export = export or (lambda plan, target: _export(bench, plan, target))
        rows = plans if plans is not None else _latency_plans(bench, quality)
        for k, (label, plan, note) in enumerate([("unplanned", None, ""), *rows]):
            model = bench.loaded if plan is None else export(plan, folder / f"m{k}")
            row = {"label": label, "plan": None if plan is None else plan.to_yaml(), "note": note,
                   "layers": len(get_adapter(model.model).layers(model.model)),
                   "llm_flops_ratio": 1.0 if plan is None else bench.llm_ratio(plan),
                   "prefill_flops_ratio": 1.0, "decode_flops_ratio": 1.0, "by_batch": {}}
            if plan is not None:
                row["prefill_flops_ratio"], row["decode_flops_ratio"] = _phase_ratios(bench, plan)
            for b in batch_sizes:  # the first b questions, tokenized and image features computed once
                prepared = prepare_subset(model, bench.dataset.select(range(b)), b, feature_cache="memory")
                timers.append((row, str(b), _ForwardTimer(model, prepared.batches[0], new_tokens)))
            out_rows.append(row)
        for repeat in range(warmup + repeats):
            for _, _, timer in timers:
                timer.run(keep=repeat >= warmup)
        for row, b, timer in timers:
            row["by_batch"][b] = timer.medians_ms()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = out_rows[0]["by_batch"]
    for row in out_rows:
        for b, cell in row["by_batch"].items():
            cell["prefill_ratio"] = cell["prefill_ms"] / base[b]["prefill_ms"]
            cell["decode_ratio"] = cell["decode_ms"] / base[b]["decode_ms"]
        bench.console.print(f"latency {row['label']}: {row['by_batch']}")
    return {"rows": out_rows, "repeats": repeats, "warmup": warmup, "decode_tokens": new_tokens,
            "batch_sizes": batch_sizes, "device": bench.job.model.device, "threads": torch.get_num_threads()}


# ---- part: ray ----------------------------------------------------------------------------------


def measure_ray(bench: Bench, trials: int, workers: list[int]) -> dict:
    """The ``ray`` part: the Ray backend with each worker count, ``trials`` trials, pruner off."""
    from searchskip.search.run import run_search

    out = {}
    for n in workers:
        job = search_job(bench.job, bench.folder / "studies", backend="ray", workers=n, ray_allow_network=True,
                         pruner="none", seed_plans=False)
        bench.console.print(f"[bold]ray[/]: {n} worker(s), {trials} trials")
        seconds, result = _timed(lambda: run_search(job, trials, study_name=f"ray-{n}", force_new_study=True,
                                                    progress=False))
        done = sorted((t for t in result.study.get_trials(deepcopy=False) if t.datetime_complete is not None),
                      key=lambda t: t.datetime_complete)
        span = (done[-1].datetime_complete - min(t.datetime_start for t in done)).total_seconds() if done else 0.0
        out[str(n)] = {"trials": len(done), "wall_s": seconds, "trials_per_min_wall": 60 * len(done) / seconds,
                       "trials_per_min_steady": 60 * len(done) / span if span > 0 else None,
                       "evaluations": result.evaluations,
                       "evaluations_per_min_steady": 60 * result.evaluations / span if span > 0 else None}
        bench.console.print(f"ray {n}: {out[str(n)]}")
    return {"trials": trials, "by_workers": out}


# ---- output -------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _cost_md(cost: dict) -> list[str]:
    pre = cost["prefix"]
    rows = [("bare `generate` of the planned model (vision included, pre-tokenized)", f"{cost['bare_s']:.3f}", "the floor"),
            ("searchskip trial (optuna start to finish)", f"{cost['trial_s']:.3f}",
             f"**{cost['trial_over_bare']:.2f}x bare** (max {cost['trial_over_bare_max']:.2f}x; target <= 1.2x)"),
            ("naive trial (load model + data, process images, answer)", f"{cost['naive_s']:.3f}",
             f"**{cost['naive_over_trial']:.1f}x the searchskip trial** (target >= 3x)"),
            ("answering without the feature cache (bare)", "", f"{cost['uncached_over_cached']:.2f}x answering with it"),
            ("trial overhead (sampling, FLOP count, storage)", f"{cost['overhead_s']:.3f}", "")]
    return (["### What a trial costs", "",
             f"{cost['plans_timed']} plans of a {cost['trials']}-trial TPE study (pruner off), {cost['questions']} "
             f"validation questions; bare and answering times are medians of {cost['repeats']} runs.", ""]
            + markdown_table(("per plan (median)", "seconds", ""), rows, ("l", "r", "l"))
            + ["", f"Once per worker: loading {cost['load_s']:.2f} s, preparing the subset {cost['prepare_s']:.2f} s "
               f"(feature cache: {cost['feature_cache']}, {cost['feature_mib']:.2f} MiB). A prefix hidden-state cache "
               f"could save at most {100 * pre['mean_saving_of_trial']:.1f}% of a trial on these plans (the prefill time "
               f"of the untouched first layers, measured with hooks, over that pass's wall time; first touched layer {min(pre['first_touched_layer'])}"
               f"-{max(pre['first_touched_layer'])}); a boundary at layer k would hold {pre['mib_hidden']:.1f} MiB of "
               f"hidden states plus {pre['mib_kv_per_layer']:.1f} MiB of K/V per layer below it.", ""])


def _pruners_md(pruners: dict) -> list[str]:
    rows = [(name, f"{row['trials_per_hour']:.0f}", row["complete"], row["pruned"], row["questions_scored"],
             f"{_pct(row['best_accuracy'])}%") for name, row in pruners["by_pruner"].items()]
    return (["### Pruners", "", f"The same {pruners['trials']}-trial TPE study (the job's budget) with each pruner.", ""]
            + markdown_table(("pruner", "trials/hour", "full evaluations", "pruned", "questions scored",
                              "best validation acc."), rows, ("l", "r", "r", "r", "r", "r")) + [""])


def _latency_md(latency: dict) -> list[str]:
    sizes = [str(b) for b in latency["batch_sizes"]]
    rows = []
    for row in latency["rows"]:
        cells = row["by_batch"]
        rows.append((row["label"], row["layers"], f"{row['prefill_flops_ratio']:.2f}",
                     *(f"{cells[b]['prefill_ms']:.1f} ms ({cells[b]['prefill_ratio']:.2f})" for b in sizes),
                     f"{row['decode_flops_ratio']:.2f}",
                     *(f"{cells[b]['decode_ms']:.2f} ms ({cells[b]['decode_ratio']:.2f})" for b in sizes), row["note"]))
    header = ("export", "layers", "prefill FLOPs", *(f"prefill b={b}" for b in sizes), "decode FLOPs",
              *(f"decode b={b}" for b in sizes), "note")
    return (["### Exported models: latency", "",
             f"The model's forward calls inside `generate` ({latency['decode_tokens'] + 1} tokens): prefill = the "
             f"first call, decode = the median of the others; medians of {latency['repeats']} runs after "
             f"{latency['warmup']} warm-up runs, the models taking turns, {latency['device']}, {latency['threads']} threads. Image features "
             f"precomputed, so both phases are the language model's. Ratios to the unplanned model in brackets; "
             f"FLOP ratios from the analytic count of each phase.", ""]
            + markdown_table(header, rows, ("l", "r", "r", *("r" for _ in sizes), "r", *("r" for _ in sizes), "l"))
            + [""])


def _ray_md(ray: dict) -> list[str]:
    def rate(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    rows = [(n, row["evaluations"], rate(row.get("evaluations_per_min_steady")), rate(row["trials_per_min_steady"]),
             rate(row["trials_per_min_wall"]), f"{row['wall_s']:.1f}") for n, row in ray["by_workers"].items()]
    return (["### Ray backend", "",
             f"{ray['trials']} trials (the job's budget, pruner off); steady rates run from the first trial's start "
             "to the last one's end, wall rates include starting Ray and loading the model in each actor.", ""]
            + markdown_table(("workers", "model evaluations", "evaluations/min (steady)", "trials/min (steady)",
                              "trials/min (wall)", "wall s"), rows, ("r", "r", "r", "r", "r", "r")) + [""])


SECTIONS = {"cost": _cost_md, "pruners": _pruners_md, "latency": _latency_md, "ray": _ray_md}


def markdown(result: dict) -> str:
    """The README's tables, one section per part measured."""
    out = [f"Performance benchmark ({result['job']}, {result['model']}, device {result['device']}, "
           f"{result['cpus']} CPUs); last run: `{result['command']}`.", ""]
    for part in PARTS:
        data = result.get(part)
        if data:
            lines = SECTIONS[part](data)
            if "command" in data:  # a part re-measured alone says so
                lines[2:2] = [f"Measured {data['measured']} by `{data['command']}`.", ""]
            out += lines
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import os

    from rich.console import Console

    from searchskip.config.loader import load_job
    from searchskip.errors import SearchSkipError

    p = argparse.ArgumentParser(prog="python -m searchskip.bench.performance",
                                description="Trial cost, pruners, export latency and Ray scaling "
                                            "(search quality: python -m searchskip.bench.quality)")
    p.add_argument("job")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--cost-trials", type=int, default=24)
    p.add_argument("--cost-plans", type=int, default=8)
    p.add_argument("--pruner-trials", type=int, default=60)
    p.add_argument("--ray-trials", type=int, default=16)
    p.add_argument("--ray-workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (cost: 5; latency: 4x this)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    a = p.parse_args(argv)
    console = Console(stderr=True)
    try:
        job = load_job(a.job)
        if job.search is None:
            raise SearchSkipError(f"{a.job}: search: the benchmark needs a job with a `search` section")
        folder = Path(job.outputs) / "bench"
        previous_file = folder / f"{NAME}-{job.name}.json"
        result = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
        bench = Bench(job, console, folder)
        result.update(command="python -m searchskip.bench.performance " + " ".join(argv if argv is not None else sys.argv[1:]),
                      job=job.name, model=job.model.id, device=job.model.device, cpus=os.cpu_count())
        for part in a.parts:
            began = time.perf_counter()
            if part == "cost":
                result["cost"] = measure_cost(bench, a.cost_trials, a.cost_plans, a.repeats)
            elif part == "pruners":
                result["pruners"] = measure_pruners(bench, a.pruner_trials)
            elif part == "latency":
                quality_file = folder / f"quality-{job.name}.json"
                quality = json.loads(quality_file.read_text()) if quality_file.is_file() else None
                result["latency"] = measure_latency(bench, quality, a.batch_sizes, 4 * a.repeats, new_tokens=8)
            elif part == "ray":
                result["ray"] = measure_ray(bench, a.ray_trials, a.ray_workers)
            result[part].update(seconds=time.perf_counter() - began, measured=time.strftime("%Y-%m-%d %H:%M"),
                                command=result["command"])
            write_result(job, NAME, result, markdown(result))  # each part is kept as soon as it is measured
    except SearchSkipError as err:
        console.print(f"[red]{err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
