"""Search quality at tight budgets: every method, the same number of model evaluations, several seeds.

    python -m searchskip.bench.quality jobs/demo.yaml [--budgets 0.5 0.35 0.25] [--seeds 0 1 2]
                                       [--evaluations 100] [--finetune 0.5 0.35]

For each budget (a fraction of the **language model's** FLOPs; no plan changes the vision side)
every method picks one plan on the job's validation subset, and the table shows that plan's
accuracy on the whole test split (mean ± std over the seeds; validation in brackets):

* the searches -- ``evo``, ``tpe`` and ``random`` (optuna's RandomSampler), each with its proposals
  fitted to the budget (:mod:`searchskip.search.budget_fit`), and ``tpe`` with ``fit_budget:
  false`` (over-budget proposals rejected, as before the fit existed). Each runs until it has
  made ``--evaluations`` model evaluations (``search.trials``: seeds and pruned trials included,
  duplicates and over-budget proposals not), once per ``search.seed`` of ``--seeds``. The job's
  default sampler (``auto``) is marked;
* the one-shot baselines, deterministic, so measured once: greedy sublayer removal over every
  layer (FinerCut-style, :func:`~searchskip.search.baselines.greedy_sublayer_removal`; its
  evaluations are counted and shown, and it gets no cap), ShortGPT's Block Influence plans, ShortV's
  Layer Contribution plans (image tokens frozen in the least contributing layers), the seed paper's
  best interval plan, and the best token-dropping plan (``visual_tokens``) that fits;
* for every search: the share of proposals rejected before the model ran and the share of the
  search's wall time they took, and the time the budget fit took;
* ``--finetune``: the default search's plan (first seed) at those budgets, exported
  (:func:`~searchskip.export.writer.export_plan`) and fine-tuned with the emitted recipe
  (projector only, the seed paper's training with skipping) and with ``method: lora``; test
  accuracy after each.

Results go to ``<outputs>/bench/quality-<job>.{json,md}``; the studies stay under
``<outputs>/bench/quality-studies/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from searchskip.bench import run_bench
from searchskip.bench.harness import Bench, plan_of, timed
from searchskip.export.report import markdown_table

__all__ = ["SEARCHES", "BASELINES", "measure", "markdown", "main"]

NAME = "quality"

PER_LAYER, JOINT = "spaces/per-layer.yaml", "spaces/tokens.yaml"
VISUAL, RICHEST = "spaces/visual.yaml", "spaces/joint.yaml"
SEARCHES: dict[str, dict[str, Any]] = {
    "evo": {"sampler": "evo", "space": PER_LAYER},
    "tpe": {"sampler": "tpe", "space": PER_LAYER},
    "random": {"sampler": "random", "space": PER_LAYER},
    "tpe_unfitted": {"sampler": "tpe", "fit_budget": False, "space": PER_LAYER},
    "evo_joint": {"sampler": "evo", "space": JOINT},
    "evo_visual": {"sampler": "evo", "space": VISUAL},
    "evo_richest": {"sampler": "evo", "space": RICHEST},
}
"""The searches compared: ``search`` section overrides of the job (pruner ``auto`` throughout). The
shipped spaces resolve against the checkout (:func:`~searchskip.config.loader.resolve_space`)."""

LABELS = {
    "evo": "searchskip `evo`, layer skips only (`spaces/per-layer.yaml`)",
    "tpe": "searchskip `tpe`, layer skips only",
    "random": "random plans fitted to the budget, layer skips only",
    "tpe_unfitted": "`tpe`, layer skips only, over-budget proposals rejected (`fit_budget: false`)",
    "evo_joint": "searchskip `evo`, layer skips + token dropping + early exit (`spaces/tokens.yaml`)",
    "evo_visual": "searchskip `evo`, image-token skips only (`spaces/visual.yaml`)",
    "evo_richest": "searchskip `evo`, layer skips + image-token skips + token dropping + early exit "
                   "(`spaces/joint.yaml`)",
    "greedy": "greedy sublayer removal (FinerCut-style), every layer",
    "block_influence": "ShortGPT Block Influence (best of its 3 ops)",
    "layer_contribution": "ShortV Layer Contribution: image tokens frozen / attention only / FFN only (best)",
    "paper": "best interval plan of the seed paper",
    "tokens": "token dropping (`visual_tokens`), best that fits",
}
BASELINES = ("greedy", "block_influence", "layer_contribution", "paper", "tokens")

TOKEN_KEEPS = tuple(round(0.05 * k, 2) for k in range(20))
"""``visual_tokens.keep`` values tried: 0, 0.05, ..., 0.95 (the largest that fits is kept per layer and rank)."""


class _Scores:
    """An evaluator's accuracy per plan key: each plan is scored once however often it is asked for."""

    def __init__(self, evaluator: Any):
        self.evaluator, self.cache = evaluator, {}

    def __call__(self, plan: Any) -> float:
        key = plan.key()
        if key not in self.cache:
            self.cache[key] = self.evaluator(plan, None).accuracy
        return self.cache[key]


def _best(plans: list[tuple[str, Any]], scores: _Scores) -> dict | None:
    """The plan of ``plans`` best on validation (the first of equals), with how many were scored."""
    best = None
    for label, plan in plans:
        acc = scores(plan)
        if best is None or acc > best["validation"]:
            best = {"label": label, "plan": plan, "validation": acc}
    if best is not None:
        best["evaluations"] = len(plans)
    return best


def token_plans_at(bench: Bench, budget: Any) -> list[tuple[str, Any]]:
    """For every layer and rank, the ``visual_tokens`` plan with the largest ``keep`` of
    :data:`TOKEN_KEEPS` that fits ``budget`` (``attention`` rank needs a layer before the drop)."""
    from searchskip.plan import Plan, VisualTokensSpec

    out = []
    for after in range(bench.num_layers):
        for rank in ("attention", "uniform"):
            if after == 0 and rank == "attention":
                continue
            for keep in reversed(TOKEN_KEEPS):
                plan = Plan(visual_tokens=VisualTokensSpec(after, keep, rank))
                if budget.allows(bench.flops(plan), bench.baseline):
                    out.append((f"visual_tokens after {after}, keep {keep:g}, {rank}", plan))
                    break
    return out


def _search(bench: Bench, method: str, ratio: float, seed: int, evaluations: int) -> dict:
    """One search at the LLM budget ``ratio``: its pick, its counts and what rejected proposals cost."""
    from searchskip.errors import ConfigError
    from searchskip.search.evaluations import runs_model, trial_counts
    from searchskip.search.leaderboard import leaderboard

    try:
        seconds, result = timed(lambda: bench.study(f"quality-{method}-{ratio:g}-s{seed}", evaluations,
                                                    budget=bench.llm_budget(ratio), seed=seed, **SEARCHES[method]))
    except ConfigError as err:  # the space's cheapest plan misses the budget: the search stops before any trial
        if not any(p.key == "search.budget" for p in err.problems):
            raise
        return {"seed": seed, "no_fit": "; ".join(p.rule for p in err.problems), **_NOTHING_RUN}
    study, budget = result.study, bench.budget(ratio)
    trials = study.get_trials(deepcopy=False)
    rejected = [t for t in trials if t.user_attrs.get("infeasible")]
    counts = trial_counts(study)
    cell: dict[str, Any] = {
        "seed": seed, "seconds": seconds, "evaluations": result.evaluations, "proposals": len(trials),
        "rejected": len(rejected), "rejected_seconds": sum(t.user_attrs.get("seconds", 0.0) for t in rejected),
        "fit_seconds": sum(t.user_attrs.get("fit_seconds", 0.0) for t in trials),
        "pruned": counts["pruned"], "duplicates": counts["dedup"],
        # priced again here, apart from the search's own check: a plan that ran the model over the budget
        "over_budget_scored": sum(1 for t in trials if runs_model(t)
                                  and not budget.allows(bench.flops(plan_of(t)), bench.baseline)),
    }
    board = leaderboard(study)  # COMPLETE trials only: never an over-budget one
    if board:
        top = board[0]
        cell.update(label=f"trial {top.number}" + (f" (seed {top.user_attrs['seed']})" if "seed" in top.user_attrs else ""),
                    plan=plan_of(top), validation=top.user_attrs["accuracy"])
    return cell


_NOTHING_RUN = {"seconds": 0.0, "evaluations": 0, "proposals": 0, "rejected": 0, "rejected_seconds": 0.0,
                "fit_seconds": 0.0, "pruned": 0, "duplicates": 0, "over_budget_scored": 0}
"""The counts of a search that stopped before its first trial."""


def _finetune(bench: Bench, plan: Any, ratio: float, folder: Path, train_limit: int | None) -> dict:
    """``plan`` exported and fine-tuned by the emitted recipe (projector) and by ``method: lora``."""
    from searchskip.config.loader import load_job
    from searchskip.export.writer import ExportSource, export_plan
    from searchskip.finetune.trainer import run_finetune

    export = folder / f"finetune-{ratio:g}"
    export_plan(bench.job, plan, export, ExportSource(label=f"bench quality {ratio:g}"), progress=False,
                dataset=bench.dataset)
    recipe = load_job(str(export / "finetune.yaml"))
    out: dict[str, Any] = {"export": str(export)}
    for method in ("projector", "lora"):
        spec = dataclasses.replace(recipe.finetune, method=method, train_limit=train_limit,
                                   out=str(folder / f"finetune-{ratio:g}-{method}"))
        seconds, result = timed(lambda: run_finetune(dataclasses.replace(recipe, finetune=spec), progress=False,
                                                     restart=True))
        out[method] = {"before": result.metrics["accuracy_before"], "after": result.metrics["accuracy_after"],
                       "steps": result.steps, "seconds": seconds}
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def default_method(search: Any) -> str | None:
    """The method of :data:`SEARCHES` that a job's ``search`` section runs with ``sampler`` left at its
    default: the same resolved sampler and space, the budget fitted (``None``: none is)."""
    from searchskip.config.job import SearchSpec
    from searchskip.config.loader import resolve_space
    from searchskip.search.samplers import resolved_sampler

    sampler = resolved_sampler(dataclasses.replace(search, sampler=SearchSpec.sampler))
    space = Path(resolve_space(search.space)).resolve()
    for name, over in SEARCHES.items():
        if (over["sampler"] == sampler and over.get("fit_budget", True) == search.fit_budget
                and Path(resolve_space(over["space"])).resolve() == space):
            return name
    return None


def _reusable(previous: dict | None, evaluations: int, seeds: list[int], questions: tuple[int, int]) -> dict:
    """The cells of a previous result measured the same way (``{ratio: {method: cell}}``), to reuse."""
    if not previous or previous.get("evaluations") != evaluations or list(previous.get("seeds", [])) != seeds \
            or (previous.get("validation_questions"), previous.get("test_questions")) != questions:
        return {}
    return previous.get("by_budget", {})


def measure(bench: Bench, budgets: list[float], seeds: list[int], evaluations: int, finetune: list[float],
            methods: list[str], train_limit: int | None = None, previous: dict | None = None) -> dict:
    """Every method at every budget (see the module doc). Cells of ``previous`` (an earlier result of
    the same job, evaluation count, seeds and subsets) are reused, so a killed or extended run
    measures only what is missing."""
    from searchskip.data.splits import load_eval_split
    from searchskip.plan import Plan
    from searchskip.search.baselines import (
        block_influence, greedy_sublayer_removal, labelled_block_influence_plans, labelled_layer_contribution_plans,
        labelled_paper_plans, layer_contribution,
    )
    from searchskip.search.objective import ModelEvaluator
    from searchskip.search.seeds import calibration_questions

    job, say = bench.job, bench.console.print
    default = default_method(job.search)
    test = load_eval_split(job.data, "test")
    old = _reusable(previous, evaluations, seeds, (len(bench.dataset), len(test)))
    validation = _Scores(bench.evaluator)
    on_test = _Scores(ModelEvaluator(bench.loaded, test, job.eval.batch_size, job.eval.max_new_tokens,
                                     feature_cache=job.search.feature_cache,
                                     memory_limit_gb=job.search.cache_memory_gb, apply_fn=bench.evaluator.apply_fn))
    unplanned = {"validation": validation(Plan()), "test": on_test(Plan())}
    calibration = calibration_questions(job, bench.loaded, bench.dataset)  # what a study measures them on
    bi = block_influence(bench.loaded.model, calibration)
    lc = layer_contribution(bench.loaded.model, calibration)
    greedy_s, greedy, greedy_evaluations = 0.0, [], 0
    if any("greedy" not in old.get(f"{r:g}", {}) for r in budgets):
        greedy_s, greedy = timed(lambda: greedy_sublayer_removal(
            validation, bench.arch, bench.workload, bench.budget(min(budgets)),
            on_step=lambda s: say(f"greedy: -{s.removed} -> {100 * s.score:.2f}% at {s.flops_ratio:.3f}")))
        greedy_evaluations = greedy[-1].evaluations if greedy else 0
    elif previous:  # every budget's greedy cell is reused
        greedy_s, greedy_evaluations = previous.get("greedy_seconds", 0.0), previous.get("greedy_evaluations", 0)

    def finish(cell: dict | None) -> dict | None:
        if cell is not None and "plan" in cell:
            cell["test"] = on_test(cell["plan"])
            cell["llm_flops_ratio"] = bench.llm_ratio(cell["plan"])
            cell["plan"] = cell["plan"].to_yaml()
        return cell

    by_budget: dict[str, dict] = {}
    for ratio in budgets:
        budget = bench.budget(ratio)
        row: dict[str, Any] = {}
        kept = old.get(f"{ratio:g}", {})
        if "greedy" in kept:
            row["greedy"] = kept["greedy"]
        else:
            step = next((s for s in greedy if budget.allows(bench.flops(s.plan), bench.baseline)), None)
            row["greedy"] = finish(None if step is None else {
                "label": f"{greedy.index(step) + 1} sublayers removed", "plan": step.plan, "validation": step.score,
                "evaluations": step.evaluations})
        for name, plans in (("block_influence", lambda: labelled_block_influence_plans(bi, bench.arch, bench.workload,
                                                                                      budget)),
                            ("layer_contribution", lambda: labelled_layer_contribution_plans(
                                lc, bench.arch, bench.workload, budget)),
                            ("paper", lambda: [(label, p) for label, p in labelled_paper_plans(bench.num_layers)
                                               if budget.allows(bench.flops(p), bench.baseline)]),
                            ("tokens", lambda: token_plans_at(bench, budget))):
            row[name] = kept[name] if name in kept else finish(_best(plans(), validation))
        for method in methods:
            if method in kept:
                row[method] = kept[method]
                continue
            runs = [finish(_search(bench, method, ratio, seed, evaluations)) for seed in seeds]
            scored = [r for r in runs if "test" in r]
            row[method] = {"runs": runs, **({"test": _stats([r["test"] for r in scored]),
                                              "validation": _stats([r["validation"] for r in scored])} if scored else {})}
            say(f"quality {ratio:g} {method}: " + ", ".join(f"{100 * r['test']:.2f}%" for r in scored))
        by_budget[f"{ratio:g}"] = row
        say(f"quality {ratio:g}: " + ", ".join(f"{m} {100 * c['test']:.2f}%" for m, c in row.items()
                                               if c is not None and isinstance(c.get("test"), float)))
    tuned: dict[str, Any] = {}
    for ratio in finetune:
        runs = by_budget.get(f"{ratio:g}", {}).get(default, {}).get("runs", [])
        done = ((previous or {}).get("finetune") or {}).get(f"{ratio:g}")
        if done and runs and "plan" in runs[0] and "plan" in done and (
                Plan.from_yaml_text(done["plan"]).key() == Plan.from_yaml_text(runs[0]["plan"]).key()):
            tuned[f"{ratio:g}"] = done
        elif runs and "plan" in runs[0]:
            tuned[f"{ratio:g}"] = {**_finetune(bench, Plan.from_yaml_text(runs[0]["plan"]), ratio,
                                               bench.folder / "quality-finetune", train_limit), "plan": runs[0]["plan"]}
    return {"budgets": budgets, "seeds": seeds, "evaluations": evaluations, "methods": methods,
            "default_method": default, "unplanned": unplanned, "test_questions": len(test),
            "validation_questions": len(bench.dataset), "space": str(job.search.space), "block_influence": bi,
            "layer_contribution": lc,
            "greedy_seconds": greedy_s, "greedy_evaluations": greedy_evaluations,
            "by_budget": by_budget, "finetune": tuned, "seed_plans": job.search.seed_plans}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _cell(c: dict | None) -> str:
    if c is not None and c.get("runs") and all("no_fit" in r for r in c["runs"]):
        return "no plan of the space fits"
    if c is None or "test" not in c:
        return "–"
    if isinstance(c["test"], dict):
        return f"{_pct(c['test']['mean'])} ± {_pct(c['test']['std'])} ({_pct(c['validation']['mean'])})"
    return f"{_pct(c['test'])} ({_pct(c['validation'])}; {c['evaluations']} ev.)"


def markdown(result: dict) -> str:
    """The README's tables."""
    q = result
    budgets = list(q["by_budget"])
    order = [m for m in q["methods"]] + list(BASELINES)
    rows = []
    for key in order:
        label = LABELS.get(key, key) + (" **(the job's default search)**" if key == q["default_method"] else "")
        rows.append((label, *(_cell(q["by_budget"][b].get(key)) for b in budgets)))
    lines = [f"Search quality ({q['job']}, {q['model']}, {q['cpus']} CPUs); measured {q['measured']} by `{q['command']}`.",
             "",
             f"Test accuracy (%) on {q['test_questions']} questions of the plan each method picks on "
             f"{q['validation_questions']} validation questions, at budgets of the language model's FLOPs. Searches: "
             f"mean ± std over seeds {q['seeds']}, {q['evaluations']} model evaluations each (seeds and pruned trials "
             "included), validation mean in brackets; baselines are deterministic (validation and their model "
             f"evaluations in brackets). Unplanned: {_pct(q['unplanned']['test'])}% test, "
             f"{_pct(q['unplanned']['validation'])}% validation. Every search's proposals are fitted to the "
             f"budget except where it says not; the job's own space is `{q['space']}`.", ""]
    lines += markdown_table(("method", *(f"{float(b):.0%} LLM FLOPs" for b in budgets)), rows,
                            ("l", *("r" for _ in budgets)))
    cost_rows = []
    for method in q["methods"]:
        runs = [r for b in budgets for r in q["by_budget"][b][method]["runs"]]
        proposals = sum(r["proposals"] for r in runs)
        rejected = sum(r["rejected"] for r in runs)
        wall = sum(r["seconds"] for r in runs)
        duplicates = sum(r["duplicates"] for r in runs)
        cost_rows.append((LABELS.get(method, method), proposals, f"{rejected} ({100 * rejected / max(1, proposals):.1f}%)",
                          f"{duplicates} ({100 * duplicates / max(1, proposals):.1f}%)",
                          f"{100 * sum(r['rejected_seconds'] for r in runs) / max(wall, 1e-9):.2f}%",
                          f"{100 * sum(r['fit_seconds'] for r in runs) / max(wall, 1e-9):.2f}%",
                          sum(r["over_budget_scored"] for r in runs), f"{wall / max(1, len(runs)):.0f} s"))
    lines += ["", "Proposals, over all budgets and seeds: rejected before the model ran (over budget), duplicates of "
              "a plan already scored (no model run either), the share of the searches' wall time the rejected ones "
              "took, the share the budget fit took, over-budget plans scored (must be 0), and the mean wall time "
              "of one search.", ""]
    lines += markdown_table(("search", "proposals", "rejected", "duplicates", "rejected: wall", "fit: wall",
                             "over budget scored", "wall per search"), cost_rows, ("l", "r", "r", "r", "r", "r", "r", "r"))
    if q.get("finetune"):
        ft_rows = []
        for b, cell in q["finetune"].items():
            for method in ("projector", "lora"):
                m = cell[method]
                ft_rows.append((f"{float(b):.0%}", method, _pct(m["before"]), _pct(m["after"]),
                                f"{100 * m['after'] / q['unplanned']['test']:.1f}%", m["steps"], f"{m['seconds']:.0f} s"))
        lines += ["", f"Fine-tuning the default search's plan (seed {q['seeds'][0]}) with the emitted recipe "
                  "(projector only: the seed paper's training with skipping) and with `method: lora`; test accuracy "
                  "before and after, and after as a share of the unplanned model's.", ""]
        lines += markdown_table(("LLM FLOPs", "recipe", "test before", "test after", "of unplanned", "steps", "time"),
                                ft_rows, ("r", "l", "r", "r", "r", "r", "r"))
    lines += ["", f"Greedy removal scored {q['greedy_evaluations']} plans down to the smallest budget in "
              f"{q['greedy_seconds']:.0f} s; its evaluations per budget are in brackets.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os
    import sys

    p = argparse.ArgumentParser(prog="python -m searchskip.bench.quality",
                                description="Search quality against greedy removal and one-shot baselines")
    p.add_argument("job")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.35, 0.25],
                   help="budgets as fractions of the language model's FLOPs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--evaluations", type=int, default=100, help="model evaluations per search")
    p.add_argument("--methods", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    p.add_argument("--finetune", nargs="*", type=float, default=[0.5, 0.35],
                   help="budgets whose default-search plan is exported and fine-tuned")
    p.add_argument("--finetune-train-limit", type=int, default=None, help="train questions (default: the recipe's)")
    p.add_argument("--fresh", action="store_true",
                   help="measure everything again (default: reuse the cells of an earlier result measured the same way)")
    a = p.parse_args(argv)

    def run(job: Any, console: Any) -> dict:
        from searchskip.errors import SearchSkipError

        if job.search is None:
            raise SearchSkipError(f"{a.job}: search: the benchmark needs a job with a `search` section")
        bench = Bench(job, console, Path(job.outputs) / "bench", studies="quality-studies")
        began = time.perf_counter()
        earlier = bench.folder / f"{NAME}-{job.name}.json"
        previous = json.loads(earlier.read_text()) if earlier.is_file() and not a.fresh else None
        result = measure(bench, a.budgets, a.seeds, a.evaluations, a.finetune, a.methods, a.finetune_train_limit,
                         previous)
        result.update(command="python -m searchskip.bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
                      job=job.name, model=job.model.id, cpus=os.cpu_count(), seconds=time.perf_counter() - began,
                      measured=time.strftime("%Y-%m-%d %H:%M"))
        return result

    return run_bench(a.job, NAME, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
