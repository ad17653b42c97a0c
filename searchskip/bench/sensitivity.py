"""Per-layer sensitivity: the validation accuracy of every single-layer plan, and plan switch time.

    python -m searchskip.bench.sensitivity jobs/demo.yaml [--ops skip_block skip_attn ...] [--limit N]

For each decoder layer i and each op, the plan ``{layers: {i: op}}`` is applied to the
one loaded model, scored on the job's validation subset, and restored. The table shows
which layers matter. Results go to ``outputs/bench/sensitivity-<job>.{json,md}``.
"""

from __future__ import annotations

import argparse
import time

from searchskip.bench import run_bench

DEFAULT_OPS = ("skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn")


def measure(job, ops=DEFAULT_OPS, limit: int | None = None, on_result=None) -> dict:
    """Score the unplanned model and every (layer, op) plan; time apply and restore."""
    from searchskip.apply import apply
    from searchskip.arch import get_adapter
    from searchskip.data.splits import load_eval_split
    from searchskip.eval.runner import evaluate
    from searchskip.models import load_model
    from searchskip.plan import Plan

    dataset = load_eval_split(job.data, "validation")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    loaded = load_model(job.model)
    n_layers = get_adapter(loaded.model).num_layers(loaded.model)

    def run():
        return evaluate(loaded, dataset, job.eval.batch_size, job.eval.max_new_tokens).score.accuracy

    base = run()
    table: dict[str, dict[int, float]] = {}
    switch_s: list[float] = []
    for op in ops:
        table[op] = {}
        for layer in range(n_layers):
            if op == "parallel_blocks" and layer == n_layers - 1:
                continue
            plan = Plan(layers={layer: op})
            t0 = time.perf_counter()
            applied = apply(loaded.model, plan)
            switch_s.append(time.perf_counter() - t0)
            try:
                table[op][layer] = run()
            finally:
                t0 = time.perf_counter()
                applied.restore()
                switch_s[-1] += time.perf_counter() - t0
            if on_result:
                on_result(op, layer, table[op][layer])
    switch_s.sort()
    return {"job": job.name, "model": job.model.id, "n": len(dataset), "layers": n_layers, "unplanned": base,
            "accuracy": {op: {str(k): v for k, v in row.items()} for op, row in table.items()},
            "switch_ms_median": 1000 * switch_s[len(switch_s) // 2], "switch_ms_max": 1000 * switch_s[-1]}


def markdown(result: dict) -> str:
    """The accuracy table: one row per op, one column per layer (percent)."""
    layers = range(result["layers"])
    head = "| op | " + " | ".join(f"L{i}" for i in layers) + " |"
    rows = [head, "|---|" + "---:|" * result["layers"]]
    for op, row in result["accuracy"].items():
        rows.append(f"| {op} | " + " | ".join(f"{100 * row[str(i)]:.1f}" if str(i) in row else "–" for i in layers) + " |")
    return (f"Validation accuracy (%) of single-layer plans, {result['model']}, n={result['n']}; "
            f"unplanned {100 * result['unplanned']:.1f}%. Plan switch (apply + restore): median "
            f"{result['switch_ms_median']:.2f} ms, max {result['switch_ms_max']:.2f} ms.\n\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Per-layer sensitivity of a job's model")
    p.add_argument("job")
    p.add_argument("--ops", nargs="+", default=list(DEFAULT_OPS))
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    return run_bench(a.job, "sensitivity", lambda job, console: measure(
        job, a.ops, a.limit, on_result=lambda op, layer, acc: console.print(f"{op} L{layer}: {100 * acc:.1f}%")),
        markdown)


if __name__ == "__main__":
    raise SystemExit(main())
