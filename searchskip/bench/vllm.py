"""vLLM serving throughput of exports, against their FLOP ratios.

    python -m searchskip.bench.vllm jobs/demo.yaml --vllm-python .venv-vllm/bin/python [--questions 512]

``--vllm-python``: the python of a virtualenv with vLLM and searchskip's plugin (``bash .ci/vllm-env
DIR`` makes one). For the job's model, unplanned, and for plans at about half of the language
model's FLOPs -- every other block removed (a plain export, stock vLLM), and every other layer's
attention and the other layers' FFN skipped (through searchskip's plugin; and the same export in
stock vLLM, where the skipped sublayers are zeroed but computed) -- this exports the plan, serves
``--questions`` validation questions (repeated when the split is smaller) with vLLM's offline engine
(``python -m searchskip.vllm_plugin.serve``: float32, greedy, ``eval.max_new_tokens``), and reports
questions per second of the generate call (engine start-up excluded; the best of ``--repeats``
runs, each in a fresh engine), the speed-up over the unplanned model, and the FLOP ratios of the
whole model and of the language model alone on the measured workload. Results go to
``<outputs>/bench/vllm-<job>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from searchskip.bench import run_bench

__all__ = ["PLANS", "main", "measure", "serve_request"]

NAME = "vllm"


def _half_blocks(n: int) -> dict:
    return {"version": 1, "layers": {i: "skip_block" for i in range(1, n, 2)}}


def _half_sublayers(n: int) -> dict:
    return {"version": 1, "layers": {i: ("skip_attn" if i % 2 else "skip_ffn") for i in range(n)}}


PLANS = {
    "unplanned": (None, "stock"),
    "half the blocks removed": (_half_blocks, "stock"),
    "attention / FFN of alternate layers skipped (plugin)": (_half_sublayers, "plugin"),
    "same export, stock vLLM (zeroed, computed)": (_half_sublayers, "stock-zeroed"),
}
"""Row -> (plan for a model of n layers, or None; how vLLM serves it)."""


def _questions(job: Any, count: int, folder: Path) -> tuple[list[dict], Any]:
    from searchskip.data.splits import load_eval_split

    rows = load_eval_split(job.data, "validation")
    out = []
    for i in range(count):
        row = rows[i % len(rows)]
        path = folder / f"q{i % len(rows)}.png"
        if not path.exists():
            row["image"].save(path)
        out.append({"question": row["question"], "image": str(path)})
    return out, rows


def serve_request(python: str, request: dict, folder: Path, *, stock: bool,
                  timeout: float = 1800) -> tuple[dict | None, int, str]:
    """Run ``python -m searchskip.vllm_plugin.serve`` on ``request`` with vLLM's ``python`` (written to
    ``folder``, run there): ``(its RESULT, or None when it printed none; exit code; output)``.
    ``stock``: no plugin loaded (``VLLM_PLUGINS=""``), as a stock vLLM."""
    path = folder / f"request-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(request))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the vLLM virtualenv's own packages only
    if stock:
        env["VLLM_PLUGINS"] = ""
    done = subprocess.run([python, "-m", "searchskip.vllm_plugin.serve", str(path)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=folder)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1].removeprefix("RESULT ")) if lines else None
    return result, done.returncode, done.stdout + done.stderr


def _serve(python: str, request: dict, folder: Path, stock: bool) -> dict:
    result, _, log = serve_request(python, request, folder, stock=stock)
    if result is None or "error" in result:
        raise RuntimeError(f"vLLM could not serve {request['model']}: {(result or {}).get('error') or log[-2000:]}")
    return result


def measure(job: Any, console: Any, *, python: str, questions: int, repeats: int) -> dict:
    """The benchmark (see the module doc)."""
    from searchskip.arch import get_adapter
    from searchskip.export.held import name_plugin_classes
    from searchskip.export.model import compress, save_compressed
    from searchskip.flops import count_flops, measure_workload
    from searchskip.models import load_model, resolve_source
    from searchskip.plan import Plan

    folder = Path(tempfile.mkdtemp(prefix="searchskip-bench-vllm-"))
    asked, rows = _questions(job, questions, folder)
    loaded = load_model(job.model)
    n = get_adapter(loaded.model).num_layers(loaded.model)
    workload = measure_workload(loaded, rows, job.eval.max_new_tokens)
    baseline = count_flops(loaded.model.config, None, workload)
    results = []
    for label, (make, how) in PLANS.items():
        plan = Plan.from_dict(make(n)) if make else None
        if plan is None:
            model_dir = Path(resolve_source(job.model)[0])
        else:
            model_dir = folder / make.__name__.strip("_") / "model"  # one export per plan
            if not model_dir.exists():
                fresh = load_model(job.model)
                compressed = compress(fresh, plan)
                save_compressed(fresh, model_dir, runtime_plan=compressed.runtime_plan, prompt_template=fresh.template,
                                source_model=job.model.id)
                if compressed.runtime_plan is not None:
                    name_plugin_classes(model_dir)
        request = {"model": str(model_dir), "template": loaded.template, "dtype": "float32",
                   "max_tokens": job.eval.max_new_tokens, "questions": asked}
        if how == "stock-zeroed":  # the plugin's export, as the stock class: its zeroed sublayers computed
            request["hf_overrides"] = {"architectures": ["LlavaForConditionalGeneration"]}
        seconds = []
        for _ in range(repeats):
            console.print(f"serving: {label} ({len(asked)} questions)")
            seconds.append(_serve(python, request, folder, stock=how != "plugin")["seconds"])
        report = count_flops(loaded.model.config, plan, workload)
        results.append({"plan": label, "served_by": "searchskip's plugin" if how == "plugin" else "stock vLLM",
                        "questions": len(asked), "seconds": min(seconds), "questions_per_s": len(asked) / min(seconds),
                        "flops_ratio": report.ratio(baseline), "llm_flops_ratio": report.llm_ratio(baseline)})
    base = results[0]["questions_per_s"]
    for row in results:
        row["speedup"] = row["questions_per_s"] / base
    return {"command": "python -m searchskip.bench.vllm " + " ".join(sys.argv[1:]), "job": job.name,
            "model": job.model.id, "cpus": os.cpu_count(), "repeats": repeats,
            "measured": time.strftime("%Y-%m-%d %H:%M"), "rows": results}


def markdown(result: dict) -> str:
    out = [f"# vLLM serving throughput: {result['job']} ({result['model']})", "",
           f"`{result['command']}` on {result['cpus']} CPU cores, {result['measured']}; best of "
           f"{result['repeats']} runs, each in a fresh engine; the generate call alone.", "",
           "| plan | served by | questions/s | speed-up | FLOPs ratio | LLM FLOPs ratio |",
           "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        out.append(f"| {r['plan']} | {r['served_by']} | {r['questions_per_s']:.1f} | {r['speedup']:.2f}x | "
                   f"{r['flops_ratio']:.3f} | {r['llm_flops_ratio']:.3f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m searchskip.bench.vllm",
                                description="vLLM questions/s of exports at about half the LLM's FLOPs")
    p.add_argument("job")
    p.add_argument("--vllm-python", required=True, help="python of a virtualenv with vLLM and searchskip's plugin")
    p.add_argument("--questions", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    python = str(Path(a.vllm_python).absolute())  # not resolved: a virtualenv's python is a link out of it
    return run_bench(a.job, NAME, lambda job, console: measure(job, console, python=python,
                                                                questions=a.questions, repeats=a.repeats), markdown)


if __name__ == "__main__":
    sys.exit(main())
