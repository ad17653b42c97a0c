"""Token reduction against layer skipping: accuracy vs FLOPs of ``visual_tokens`` plans.

    python -m searchskip.bench.tokens jobs/demo.yaml [--after 1 2 4 6] [--keep 0 0.25 0.5]
                                      [--rank attention uniform] [--random 100] [--limit N]
                                      [--max-subset R]

Every ``visual_tokens: {after_layer, keep, rank}`` of the grid is applied to the one loaded
model and scored on the job's validation subset. Beside each, the best **layer-skip-only**
plan whose FLOPs are at most the token plan's: the best of a pool scored the same way --
every ``skip_block`` subset of at most ``--max-subset`` decoder layers (default: every
proper subset), the paper's interval plans (every mode), and ``--random`` plans drawn (seeded) from
``spaces/per-layer.yaml``. FLOP ratios are analytic (:func:`searchskip.flops.count_flops`,
the search's convention: dense, causal) on the workload measured on the subset, of the whole
model and of the LLM alone. Results go to ``outputs/bench/tokens-<job>.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from pathlib import Path
from typing import Any, Callable

from searchskip.bench import run_bench
from searchskip.export.report import markdown_table

def token_plans(after: list[int], keep: list[float], ranks: list[str]) -> list[Any]:
    """The grid of ``visual_tokens`` plans (``keep`` 1.0 is the unplanned model and is left out)."""
    from searchskip.plan import Plan, VisualTokensSpec

    plans = []
    for a, k, r in itertools.product(after, keep, ranks):
        if a == 0 and r == "attention":
            continue
        plan = Plan(visual_tokens=VisualTokensSpec(a, k, r))
        if not plan.is_empty and plan not in plans:
            plans.append(plan)
    return plans


def largest_subset(num_layers: int, max_subset: int | None) -> int:
    """The most layers a skip_block subset of :func:`skip_pool` holds (``None``: every proper subset)."""
    return num_layers - 1 if max_subset is None else min(max_subset, num_layers - 1)


def skip_pool(num_layers: int, n_random: int, seed: int = 0, max_subset: int | None = None) -> list[tuple[str, Any]]:
    """``(label, plan)`` of the layer-skip-only plans the token plans are compared with: every
    skip_block subset of at most ``max_subset`` layers (``None``: every proper subset; 0: none),
    the paper's interval plans and ``n_random`` random per-layer plans."""
    from searchskip.plan import Plan
    from searchskip.search.baselines import labelled_paper_plans
    from searchskip.search.space import Space

    pool: dict[Any, str] = {}
    for r in range(1, largest_subset(num_layers, max_subset) + 1):
        for subset in itertools.combinations(range(num_layers), r):
            pool.setdefault(Plan(layers={i: "skip_block" for i in subset}), "skip_block " + ",".join(map(str, subset)))
    for label, plan in labelled_paper_plans(num_layers):
        pool.setdefault(plan, label)
    if n_random:
        import optuna

        space = Space.load(Path(__file__).resolve().parents[2] / "spaces" / "per-layer.yaml")
        rng = random.Random(seed)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=rng.randrange(2 ** 31)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for _ in range(n_random):
            trial = study.ask()
            plan = space.suggest(trial, num_layers)
            study.tell(trial, 0.0)
            if not plan.is_empty:
                pool.setdefault(plan, "random per-layer")
    return [(label, plan) for plan, label in pool.items()]


def measure(job: Any, after: list[int], keep: list[float], ranks: list[str], n_random: int,
            limit: int | None = None, on_result: Callable[[str, dict], None] | None = None,
            max_subset: int | None = None) -> dict:
    """Score the token grid and the layer-skip pool; see the module docstring."""
    from searchskip.arch import get_adapter
    from searchskip.flops import count_flops, measure_workload
    from searchskip.plan import Plan
    from searchskip.search.worker import load_worker_inputs, make_evaluator

    loaded, dataset = load_worker_inputs(job)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    workload = measure_workload(loaded, dataset, job.eval.max_new_tokens)
    arch = loaded.model.config
    base = count_flops(arch, None, workload)
    num_layers = get_adapter(loaded.model).num_layers(loaded.model)

    evaluator = make_evaluator(job, loaded, dataset)  # the subset prepared once, as a search worker does

    def score(plan: Any) -> dict:
        report = count_flops(arch, plan, workload)
        began = time.perf_counter()
        accuracy = evaluator(plan, None).accuracy
        return {"plan": plan.to_dict(), "describe": "; ".join(plan.describe()), "accuracy": accuracy,
                "flops_ratio": report.ratio(base), "llm_flops_ratio": report.llm_ratio(base),
                "seconds": time.perf_counter() - began}

    unplanned = evaluator(Plan(), None).accuracy
    tokens = []
    for plan in token_plans(after, keep, ranks):
        tokens.append(score(plan))
        if on_result:
            on_result("tokens", tokens[-1])
    pool = []
    for label, plan in skip_pool(num_layers, n_random, max_subset=max_subset):
        pool.append(dict(score(plan), label=label))
        if on_result:
            on_result("skips", pool[-1])
    for row in tokens:
        fitting = [p for p in pool if p["flops_ratio"] <= row["flops_ratio"] + 1e-12]
        best = max(fitting, key=lambda p: (p["accuracy"], -p["flops_ratio"]), default=None)
        row["best_skip"] = best and {k: best[k] for k in ("describe", "label", "accuracy", "flops_ratio",
                                                          "llm_flops_ratio")}
    return {"job": job.name, "model": job.model.id, "n": len(dataset), "layers": num_layers,
            "workload": workload.to_dict(), "unplanned": unplanned, "tokens": tokens,
            "pool_size": len(pool), "max_subset": largest_subset(num_layers, max_subset), "pool": pool}


def markdown(result: dict) -> str:
    """The table: one row per token plan, with the best layer-skip plan at no more FLOPs."""
    w = result["workload"]
    rows = []
    for row in sorted(result["tokens"], key=lambda r: r["flops_ratio"]):
        v = row["plan"]["visual_tokens"]
        best = row["best_skip"]
        skip = ((best["describe"], f"{best['flops_ratio']:.3f}", f"{100 * best['accuracy']:.2f}%") if best
                else ("none fits", "–", "–"))
        rows.append((v["after_layer"], f"{v['keep']:g}", v["rank"], f"{row['flops_ratio']:.3f}",
                     f"{row['llm_flops_ratio']:.3f}", f"{100 * row['accuracy']:.2f}%", *skip))
    table = markdown_table(("after_layer", "keep", "rank", "FLOPs (x unplanned)", "LLM FLOPs", "val. accuracy",
                            "best layer-skip plan at <= FLOPs", "its FLOPs", "its accuracy"),
                           rows, ("r", "r", "l", "r", "r", "r", "l", "r", "r"))
    return (f"`visual_tokens` plans vs the best layer-skip-only plan, {result['model']}, validation subset "
            f"n={result['n']}; unplanned {100 * result['unplanned']:.2f}%. Workload per sample: "
            f"{w['images']} image x {w.get('image_tokens')} tokens, {w['prompt_tokens']:.1f} text tokens, "
            f"{w['generated_tokens']:.2f} generated. Layer-skip pool: {result['pool_size']} plans "
            f"(skip_block subsets of up to {result['max_subset']} layers, the paper's interval plans, "
            "random per-layer plans).\n\n"
            + "\n".join(table) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="visual_tokens plans against layer-skip plans at the same FLOPs")
    p.add_argument("job")
    p.add_argument("--after", type=int, nargs="+", default=[1, 2, 4, 6])
    p.add_argument("--keep", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--rank", nargs="+", default=["attention", "uniform"], choices=["attention", "uniform"])
    p.add_argument("--random", type=int, default=100, help="random per-layer plans in the layer-skip pool")
    p.add_argument("--limit", type=int, default=None, help="score only the first N validation questions")
    p.add_argument("--max-subset", type=int, default=None, metavar="R",
                   help="skip_block subsets of at most R layers in the layer-skip pool (default: all; 0: none)")
    a = p.parse_args(argv)
    return run_bench(a.job, "tokens", lambda job, console: measure(
        job, a.after, a.keep, a.rank, a.random, a.limit, max_subset=a.max_subset,
        on_result=lambda kind, r: console.print(f"{kind}: {r['describe']}: {100 * r['accuracy']:.1f}% at "
                                                f"{r['flops_ratio']:.3f}x")), markdown)


if __name__ == "__main__":
    raise SystemExit(main())
