"""The GPU path, proven in one command: ``python -m searchskip.bench.gpu [--out DIR]``.

On a CUDA machine, with no hub access, in a few minutes:

1. **builds** LLaVA-1.5-7B from the shipped config (``llava-hf/llava-1.5-7b-hf``) with random
   weights in float16 directly on the GPU (:mod:`searchskip.bench.random_model`: meta device, then
   materialized), and takes the demo job's easy-VQA validation questions as the workload (images
   resized by the processor to 336 x 336: 576 image tokens per question);
2. **checks** plans of every op and scope, token dropping and early exit on the GPU
   (:mod:`searchskip.bench.plan_checks`): KV-cache generation == no-cache recompute, restore
   bit-identical, analytic FLOPs vs ``FlopCounterMode`` in both attention conventions;
3. **measures** a trial's time against a bare ``generate`` of the planned model over the subset
   (the ``cost`` part of :mod:`searchskip.bench.performance`: a short TPE study on the model), the
   prefill and decode latency of exported plans at about half the LLM's FLOPs against their FLOP
   ratios at batch 1 and a large batch (the ``latency`` part; exports compressed in GPU memory:
   :func:`searchskip.export.compress` + the runtime plan, as ``load_compressed`` gives them), and
   the peak GPU memory of each step;
4. **writes** ``gpu.json`` and ``gpu.md`` into ``--out`` (default ``outputs/bench``) and prints a
   short table.

``--tiny`` runs the same code on CPU with the embedded model's config (random weights, float32, a
few questions): the test suite runs it, so the command cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "main", "run"]

MODEL_ID = "llava-hf/llava-1.5-7b-hf"

SETTINGS = {
    "gpu": {"device": "cuda", "dtype": "float16", "questions": 128, "eval_batch": 32, "trials": 10, "plans_timed": 3,
            "repeats": 3, "batch_sizes": [1, 32], "decode_tokens": 8, "check_questions": 2},
    "tiny": {"device": "cpu", "dtype": "float32", "questions": 12, "eval_batch": 6, "trials": 3, "plans_timed": 2,
             "repeats": 1, "batch_sizes": [1, 4], "decode_tokens": 3, "check_questions": 2},
}
"""What each mode runs (``--tiny``: the same steps, small)."""


def _config(tiny: bool) -> Any:
    import transformers

    from searchskip import zoo
    from searchskip.flops.geometry import known_config

    if tiny:
        return transformers.AutoConfig.from_pretrained(zoo.embedded_model(zoo.embedded_names()[0]).path)
    return known_config(MODEL_ID)


def _job(path: str, settings: dict, out: Path) -> Any:
    from searchskip.config.loader import load_job

    job = load_job(path)
    data = dataclasses.replace(job.data, validation_subset=dataclasses.replace(job.data.validation_subset,
                                                                               size=settings["questions"]))
    return dataclasses.replace(job, outputs=str(out / "gpu-run"), data=data,
                               model=dataclasses.replace(job.model, device=settings["device"], dtype=settings["dtype"]),
                               eval=dataclasses.replace(job.eval, batch_size=settings["eval_batch"]))


def _latency_plans(n: int) -> list[tuple[str, Any, str]]:
    """Exported plans at about half the LLM's FLOPs (their measured FLOP ratios are reported)."""
    from searchskip.plan import Plan

    return [
        ("every other block removed", Plan.from_dict({"version": 1, "layers": {i: "skip_block" for i in range(1, n, 2)}}),
         "layers removed from the export"),
        ("attention of odd layers, FFN of even layers skipped",
         Plan.from_dict({"version": 1, "layers": {i: ("skip_attn" if i % 2 else "skip_ffn") for i in range(n)}}),
         "runtime plan: skipped sublayers not run"),
        ("ffn_channels 50% (magnitude) on every layer", Plan.from_dict({
            "version": 1, "prune": {"method": "magnitude", "structure": "ffn_channels", "sparsity": 0.5,
                                    "targets": ["ffn"]}}), "smaller FFN matrices"),
    ]


def _export_in_memory(bench: Any, plan: Any, _folder: Path) -> Any:
    """``plan``'s exported model, compressed in device memory from a copy of the bench's model (a 7B
    is not written to disk and read back): the model ``load_compressed`` gives for the export."""
    from searchskip.apply import apply
    from searchskip.eval.planned import plan_calibration
    from searchskip.export.model import compress

    fresh = dataclasses.replace(bench.loaded, model=copy.deepcopy(bench.loaded.model))
    compressed = compress(fresh, plan, calibration=plan_calibration(fresh, bench.job, plan))
    if compressed.runtime_plan is not None:
        apply(fresh.model, compressed.runtime_plan)
    return fresh


class _Memory:
    """Peak memory (GiB) and seconds per step: on CUDA the allocator's peak, reset before each step;
    on CPU the process's peak resident size so far (it is never reset)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.kind = "GPU memory (allocator peak per step)" if self.cuda else "process memory (peak RSS so far)"
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def step(self, name: str, fn: Any) -> Any:
        import resource

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
            self.peaks[name] = torch.cuda.max_memory_allocated() / 2 ** 30
        else:  # ru_maxrss is KiB on Linux
            self.peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        self.seconds[name] = time.perf_counter() - began
        return out


def run(out: Path, *, tiny: bool = False, job_file: str = "jobs/demo.yaml", console: Any = None,
        command: str | None = None) -> dict:
    """Every step of the module doc; the result written to ``out/gpu.json`` and ``out/gpu.md``."""
    import torch
    import transformers
    from rich.console import Console

    from searchskip.arch import get_adapter
    from searchskip.bench.harness import Bench
    from searchskip.bench.performance import measure_cost, measure_latency
    from searchskip.bench.plan_checks import check_plan_set, check_plans, summary
    from searchskip.bench.random_model import random_llava
    from searchskip.errors import SearchSkipError
    from searchskip.eval.generate import prompt_inputs

    console = console or Console(stderr=True)
    mode = "tiny" if tiny else "gpu"
    s = SETTINGS[mode]
    if s["device"] == "cuda" and not torch.cuda.is_available():
        raise SearchSkipError("python -m searchskip.bench.gpu needs a CUDA GPU (torch.cuda.is_available() is False "
                              "here); --tiny runs the same steps on CPU")
    job = _job(job_file, s, out)  # a bad job file is said before anything is built or written
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    memory = _Memory(s["device"])
    config = _config(tiny)
    console.print(f"[bold]gpu bench[/] ({mode}): building {'the embedded config' if tiny else MODEL_ID} "
                  f"with random weights in {s['dtype']} on {s['device']}")
    loaded = memory.step("build", lambda: random_llava(config, dtype=s["dtype"], device=s["device"]))
    model = loaded.model
    n = get_adapter(model).num_layers(model)
    bench = memory.step("load_data", lambda: Bench(job, console, out / "gpu-run", loaded=loaded))
    rows = bench.dataset[: s["check_questions"]]
    batch = prompt_inputs(loaded, rows["image"], rows["question"])
    single = prompt_inputs(loaded, rows["image"][:1], rows["question"][:1])
    image_tokens = int((single["input_ids"] == model.config.image_token_id).sum())
    plans = check_plan_set(n)
    console.print(f"checks: {len(plans)} plans (cache vs recompute, restore, FLOPs)")
    checks = memory.step("checks", lambda: check_plans(loaded, batch, single, plans))
    console.print(f"cost: a {s['trials']}-trial TPE study on {len(bench.dataset)} questions")
    cost = memory.step("cost", lambda: measure_cost(bench, s["trials"], s["plans_timed"], s["repeats"], naive=0))
    console.print(f"latency: exports at about half the LLM's FLOPs, batch sizes {s['batch_sizes']}")
    latency = memory.step("latency", lambda: measure_latency(
        bench, None, s["batch_sizes"], s["repeats"], s["decode_tokens"], warmup=2, plans=_latency_plans(n),
        export=lambda plan, folder: _export_in_memory(bench, plan, folder)))
    result = {
        "mode": mode, "command": command,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if s["device"] == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "model": MODEL_ID if not tiny else "embedded config", "dtype": s["dtype"], "layers": n,
        "params": sum(p.numel() for p in model.parameters()), "image_tokens": image_tokens,
        "questions": len(bench.dataset), "checks": {"summary": summary(checks), "rows": checks},
        "cost": cost, "latency": latency, "memory_gib": memory.peaks, "memory_kind": memory.kind,
        "step_seconds": memory.seconds, "seconds": time.perf_counter() - began,
    }
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The short table: checks, trial cost, export latency vs FLOPs, peak memory."""
    from searchskip.export.report import markdown_table

    c = result["checks"]["summary"]
    cost = result["cost"]
    mem = result["memory_gib"]
    gib = lambda k: "–" if mem.get(k) is None else f"{mem[k]:.1f}"  # noqa: E731
    params = result["params"]
    size = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.2f} M"
    lines = [f"GPU benchmark ({result['mode']}): {result['model']}, {size} parameters, "
             f"{result['dtype']}, on {result['device']} (torch {result['torch']}, transformers {result['transformers']}), "
             f"{result['measured']}, {result['seconds']:.0f} s in all; {result['questions']} questions, "
             f"{result['image_tokens']} image tokens each.", "",
             *markdown_table(["check", "result"], [
                 ["KV-cache generation == no-cache recompute (same tokens)", f"{c['same_tokens']}/{c['plans']} plans"],
                 ["largest logit difference, cache vs recompute", f"{c['max_logit_diff']:.3g}"],
                 ["restore() bit-identical", f"{c['restore_bit_identical']}/{c['plans']} plans"],
                 ["analytic FLOPs vs FlopCounterMode, largest relative error",
                  f"kernel {c['flops_max_rel_err']['kernel']:.2e}, causal {c['flops_max_rel_err']['causal']:.2e}: "
                  f"the `{c['flops_convention']}` convention matches"],
             ]), "",
             *markdown_table(["trial cost", "seconds"], [
                 ["trial (median)", f"{cost['trial_s']:.3f}"],
                 ["bare generate of the planned model, images encoded (median)", f"{cost['bare_s']:.3f}"],
                 ["answering with the feature cache (median)", f"{cost['per_plan'][0]['evaluate_cached_s']:.3f}"
                  if cost["per_plan"] else "–"],
                 ["trial / bare", f"{cost['trial_over_bare']:.2f}x"],
             ]), ""]
    rows = []
    for row in result["latency"]["rows"]:
        for b, cell in row["by_batch"].items():
            rows.append([row["label"], b, f"{cell['prefill_ms']:.2f}", f"{cell['prefill_ratio']:.2f}",
                         f"{row['prefill_flops_ratio']:.2f}", f"{cell['decode_ms']:.2f}", f"{cell['decode_ratio']:.2f}",
                         f"{row['decode_flops_ratio']:.2f}"])
    lines += [*markdown_table(["export", "batch", "prefill ms", "prefill ratio", "prefill FLOPs ratio", "decode ms/token",
                              "decode ratio", "decode FLOPs ratio"], rows), "",
              f"Peak {result['memory_kind']}, GiB: build {gib('build')}, checks {gib('checks')}, "
              f"cost {gib('cost')}, latency {gib('latency')}. Seconds: "
              + ", ".join(f"{k} {v:.0f}" for k, v in result["step_seconds"].items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m searchskip.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench", help="folder for gpu.json and gpu.md (default: outputs/bench)")
    p.add_argument("--tiny", action="store_true", help="the same steps on CPU with the embedded model's config")
    p.add_argument("--job", default="jobs/demo.yaml", help="the job whose validation questions are the workload")
    a = p.parse_args(argv)
    from rich.console import Console

    from searchskip.bench import exit_code

    console = Console(stderr=True)
    command = "python -m searchskip.bench.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    return exit_code(console, lambda: run(Path(a.out), tiny=a.tiny, job_file=a.job, console=console, command=command))


if __name__ == "__main__":
    raise SystemExit(main())
