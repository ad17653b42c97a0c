"""``searchskip flops JOB.yaml [--plan PLAN.yaml] [--json]``: FLOPs per sample of a job's model under a plan.

Counted from the model's config alone (no weights are loaded; see :mod:`searchskip.flops`).
The workload (prompt and answer lengths) is measured on the job's validation subset with
the model's processor when the data and the processor are available; ``--prompt-tokens`` /
``--generated-tokens`` override it (both given: nothing is loaded), and stand in when the
data cannot be loaded (``--generated-tokens`` then defaults to ``eval.max_new_tokens``).
A hub model that is neither cached nor reachable uses the config shipped with searchskip,
when there is one, and the output says so.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "flops", help="FLOPs per sample of a job's model under a plan (no weights needed)",
        description="Count the FLOPs of one sample of the job's workload through its model, from the model's "
                    "config alone: vision tower, projector, LLM prefill and decode, lm_head, per layer and "
                    "sublayer; the ratio to the unplanned model; depth; parameters and weight memory.")
    p.add_argument("job", help="job YAML file")
    p.add_argument("--plan", metavar="PLAN.yaml", default=None, help="plan file (default: the unplanned model)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--prompt-tokens", type=float, default=None, metavar="N",
                   help="prompt text tokens per sample (image tokens excluded); overrides the measured mean")
    p.add_argument("--generated-tokens", type=float, default=None, metavar="N",
                   help="generated tokens per sample (answer + end of sequence); overrides the measured mean")
    p.add_argument("--image-size", default=None, metavar="HxW",
                   help="one image of H x W pixels per sample, resized as the model's processor does (models whose "
                        "vision tower takes images at their own resolution: Qwen-VL, LLaVA-NeXT); overrides the "
                        "measured image sizes")
    p.add_argument("--count", choices=("dense", "sparse"), default="dense",
                   help="which FLOPs the total and ratio use: dense (default) or sparse (pruned weights not counted)")
    p.add_argument("--attention", choices=("causal", "kernel"), default="causal",
                   help="causal (default): query i attends i+1 keys; kernel: as SDPA computes it (full prefill square)")
    p.set_defaults(func=run)


def _positive(name: str, value: float | None, minimum: float) -> None:
    from searchskip.errors import ConfigError

    if value is not None and not value >= minimum:
        raise ConfigError(f"--{name}: must be >= {minimum:g}, but got {value:g}")


def image_shape_flag(value: str | None, vision: Any, job: Any = None) -> tuple[int, ...] | None:
    """The image shape of ``--image-size HxW`` for ``vision`` (``None`` when the flag is not given),
    resized within the bounds of ``job``'s image processor when it can be read here (else the
    image processor class's defaults); :class:`ConfigError` for a malformed size or a
    fixed-resolution tower."""
    from searchskip.errors import ConfigError

    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--image-size: must be HxW in pixels (e.g. 480x640), but got {value!r}")
    if vision is None or vision.image_tokens is not None:
        what = "the model is text-only" if vision is None else f"its vision tower takes {vision.image_tokens} tokens per image"
        raise ConfigError(f"--image-size: applies to models that take images at their own resolution (Qwen-VL, "
                          f"LLaVA-NeXT / OneVision, InternVL); {what}")
    try:
        return vision.shape_for(int(parts[0]), int(parts[1]), _processor_size(job) if job is not None else None)
    except (ValueError, ArithmeticError) as err:  # the processor's own bounds (Qwen-VL: aspect ratio < 200)
        raise ConfigError(f"--image-size: the model's processor cannot resize a {value} image: {err}") from None


def _processor_size(job: Any) -> dict:
    """The image processor's ``size`` (Qwen-VL: ``shortest_edge`` / ``longest_edge`` pixels;
    InternVL: the tile's ``height`` / ``width``, with its tiling: ``min_patches``,
    ``max_patches``, ``crop_to_patches`` as the processor calls it) of the job's model when its
    processor is local or cached; ``{}`` otherwise."""
    from searchskip.models import resolve_source
    from searchskip.processors import image_defaults, load_processor

    try:
        source, _ = resolve_source(job.model)
        processor = load_processor(source, revision=job.model.revision, local_files_only=True)
        image_processor = processor.image_processor
        settings = dict(getattr(image_processor, "size", None) or {})
        for key in ("min_patches", "max_patches", "crop_to_patches"):
            if getattr(image_processor, key, None) is not None:
                settings[key] = getattr(image_processor, key)
        settings.update(image_defaults(processor))
        return settings
    except Exception:  # noqa: BLE001 - no processor here: the defaults stand
        return {}


def job_workload(job: Any, config: Any, multimodal: bool, prompt_tokens: float | None,
                 generated_tokens: float | None, image_shape: tuple[int, ...] | None = None) -> Any:
    """The workload of ``job``: measured on its validation subset, with the given overrides
    (``image_shape``: every image of that shape)."""
    workload = _job_workload(job, config, multimodal, prompt_tokens, generated_tokens)
    if image_shape is None:
        return workload
    return replace(workload, image_shape=image_shape, image_tokens=None, variants=(),
                   source=f"{workload.source}; images of the --image-size shape {image_shape}")


def _job_workload(job: Any, config: Any, multimodal: bool, prompt_tokens: float | None,
                  generated_tokens: float | None) -> Any:
    from searchskip.errors import ConfigError, DataError, ModelError, OfflineError
    from searchskip.flops import Workload

    images = 1 if multimodal else 0
    if prompt_tokens is not None and generated_tokens is not None:
        return Workload(prompt_tokens=prompt_tokens, generated_tokens=generated_tokens, images=images,
                        source="command line (--prompt-tokens, --generated-tokens)")
    try:
        measured = _measure(job)
    except (DataError, OfflineError, ModelError, OSError, ConnectionError) as err:
        if prompt_tokens is None:
            raise ConfigError(
                f"cannot measure the workload on the job's validation subset: {err}; give it with "
                "--prompt-tokens N and --generated-tokens N"
            ) from None
        generated = generated_tokens if generated_tokens is not None else float(job.eval.max_new_tokens)
        what = ("--generated-tokens" if generated_tokens is not None
                else f"eval.max_new_tokens ({job.eval.max_new_tokens})")
        return Workload(prompt_tokens=prompt_tokens, generated_tokens=generated, images=images,
                        source=f"command line (--prompt-tokens; generated tokens from {what}): the validation "
                               "data could not be loaded")
    overrides = {}
    if prompt_tokens is not None:
        overrides["prompt_tokens"] = prompt_tokens
        overrides["text_before_image"] = min(measured.text_before_image, prompt_tokens)
    if generated_tokens is not None:
        overrides["generated_tokens"] = generated_tokens
    if overrides:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in overrides if k != "text_before_image")
        overrides["source"] = f"{measured.source} on the validation subset, {flags} from the command line"
        return replace(measured, **overrides)
    return replace(measured, source=f"{measured.source} of the validation subset")


def _measure(job: Any) -> Any:
    from searchskip.data.splits import load_eval_split
    from searchskip.errors import ConfigError, ModelError, OfflineError, Problem
    from searchskip.flops import measure_workload
    from searchskip.models import checked_processor, resolve_source

    from searchskip.model_files import check_model_files

    source, _ = resolve_source(job.model)
    try:
        try:
            check_model_files(source, processor=True)  # the processor's files, whole, before it is built
        except ModelError as err:
            raise ModelError(f"model.id: '{job.model.id}': {err}") from None
        processor, template = checked_processor(job.model)
    except OfflineError:
        raise OfflineError(f"the processor of '{source}' is not in the local Hugging Face cache and the hub "
                           "could not be reached") from None
    except ModelError as err:  # a processor that disagrees with its config: the model cannot run as priced
        raise ConfigError([Problem(job.source_file, "", str(err))]) from None
    dataset = load_eval_split(job.data, "validation")

    class _Loaded:
        pass

    loaded = _Loaded()
    loaded.processor, loaded.template = processor, template
    return measure_workload(loaded, dataset, job.eval.max_new_tokens)


def run(args) -> int:
    from rich.console import Console

    from searchskip.errors import in_job
    from searchskip.config.loader import load_job
    from searchskip.errors import SearchSkipError
    from searchskip.flops import count_flops
    from searchskip.models import model_geometry
    from searchskip.plan import Plan

    _positive("prompt-tokens", args.prompt_tokens, 0)
    _positive("generated-tokens", args.generated_tokens, 1)
    job = load_job(args.job)
    err = Console(stderr=True)
    with err.status("reading the model's config"):
        try:
            config, config_source, geometry = model_geometry(job.model)
        except SearchSkipError as e:  # name the job file and the key (an unsupported family, no config)
            raise in_job(args.job, e, "model.id") from None
    plan = Plan() if args.plan is None else Plan.load(args.plan)
    plan.validate(geometry.num_layers, file=args.plan)
    shape = image_shape_flag(args.image_size, geometry.vision, job)
    with err.status("measuring the workload"):
        workload = job_workload(job, config, geometry.is_multimodal, args.prompt_tokens, args.generated_tokens, shape)
    report = count_flops(geometry, plan, workload, count=args.count, attention=args.attention)
    baseline = count_flops(geometry, None, workload, count=args.count, attention=args.attention)
    dtype = job.model.dtype
    if args.json:
        data = report.to_dict(baseline)
        data["params"].update(dtype=dtype, weight_bytes=report.params.weight_bytes(dtype),
                              nonzero_weight_bytes=report.params.weight_bytes(dtype, nonzero=True))
        out = {"job": job.name, "model": job.model.id, "config_source": config_source,
               "shipped_config": config_source.startswith("config shipped"), "plan_file": args.plan, **data}
        print(json.dumps(out))
    else:
        print_report(Console(width=max(Console().width, 120)), job, config_source, args.plan, report, baseline)
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _scale(flops: float) -> tuple[float, str]:
    for factor, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if flops >= factor:
            return factor, unit
    return 1.0, "FLOPs"


def _si(n: float) -> str:
    for factor, unit in ((1e9, " B"), (1e6, " M"), (1e3, " k")):
        if n >= factor:
            return f"{n / factor:.3f}{unit}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    for factor, unit in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n:g} B"


def token_lines(report) -> list[str]:
    """What the plan's token keys (``visual_tokens``, ``early_exit``) do on the report's
    workload, one line each (none for a plan without them)."""
    from searchskip.flops import RANK_SCORES
    from searchskip.plan import kept_visual_tokens

    out = []
    plan, w = report.plan, report.workload
    if plan.visual_tokens is not None:
        v = plan.visual_tokens
        sizes = [r.workload.image_positions() for _, r in report.variants] or [w.image_positions()]
        n_img = max(sizes)
        if report.variants:
            kept_of = ", ".join(f"{kept_visual_tokens(n, v.keep)} of {n}" for n in sizes)
            text = f"visual tokens: image tokens kept from layer {v.after_layer} on, per image size: {kept_of}; rank {v.rank}"
        else:
            kept = kept_visual_tokens(n_img, v.keep)
            text = (f"visual tokens: {kept} of {n_img} image tokens kept from layer {v.after_layer} on "
                    f"(prompt {w.prompt_length:g} -> {w.prompt_length - (n_img - kept):g} positions), rank {v.rank}")
        if n_img == 0:
            text += " (no image tokens: nothing is dropped)"
        rank = report.by_part("llm_prefill").get(RANK_SCORES, 0.0)
        if rank:
            factor, unit = _scale(rank)
            text += f"; ranking scores at layer {v.after_layer - 1} (in its q.k): {rank / factor:,.3f} {unit}"
        out.append(text)
    if plan.early_exit is not None:
        e = plan.early_exit
        out.append(f"early exit: {e.scope} tokens leave after layer {e.layer}; layers {e.layer + 1}.. run for the "
                   "prompt only")
    return out


def variants_table(report, baseline, factor: float, unit: str):
    """One row per image size of a workload whose samples differ: grid, image tokens, share of
    the samples, FLOPs and ratio to the unplanned model on the same images."""
    from rich.table import Table

    table = Table(title=f"per image size ({unit} per sample; the budget holds for every row and for the mean)")
    for col in ("image shape", "image tokens", "share", "FLOPs", "unplanned", "ratio"):
        table.add_column(col, justify="right")
    for (weight, r), (_, b) in zip(report.variants, baseline.variants):
        table.add_row(str(r.workload.image_shape), str(r.workload.image_tokens), f"{100 * weight:.1f}%",
                      f"{r.total() / factor:,.3f}", f"{b.total() / factor:,.3f}", f"{r.ratio(b):.4f}")
    return table


def print_report(console, job, config_source: str, plan_file: str | None, report, baseline) -> None:
    """Rich tables: components, decoder layers, then totals, ratio, depth and parameters."""
    from rich.table import Table
    from rich.text import Text

    from searchskip.flops.report import COMPONENT_TITLES, COMPONENTS

    count, attention = report.count, report.attention
    total = report.total()

    def line(text: Text) -> None:  # one logical line, never hard-wrapped (copy-paste and grep friendly)
        console.print(text, soft_wrap=True)
    factor, unit = _scale(total)

    def f(x: float) -> str:
        return f"{x / factor:,.3f}" if x else "-"

    line(Text(f"{job.name}: {job.model.id}", style="bold"))
    shipped = config_source.startswith("config shipped")
    line(Text(f"config: {config_source}", style="yellow" if shipped else ""))
    line(Text(f"workload per sample: {report.workload.describe()} ({report.workload.source})"))
    lines = report.plan.describe()
    if lines:
        plan_text = f"plan: {plan_file}: " + "; ".join(lines)
    else:
        plan_text = f"plan: {plan_file or 'none'} (the unplanned model)"
    line(Text(plan_text))
    line(Text(
        f"budget convention: {count} FLOPs, "
        + ("causal-exact attention (query i attends i+1 keys)" if attention == "causal"
           else "attention as the kernel computes it (full S x S square in the prefill)")
        + "; matmuls and attention only (elementwise ops ignored)"))

    comp = Table(title=f"FLOPs per sample ({unit})")
    comp.add_column("component")
    for col in ("dense", "sparse", "kernel", "share", "unplanned"):
        comp.add_column(col, justify="right")
    dense, sparse, kernel = (report.by_component(c, a) for c, a in
                             (("dense", "causal"), ("sparse", "causal"), ("dense", "kernel")))
    chosen, base = report.by_component(), baseline.by_component()
    for name in COMPONENTS:
        if not (dense[name] or base[name]):
            continue
        comp.add_row(COMPONENT_TITLES[name], f(dense[name]), f(sparse[name]), f(kernel[name]),
                     f"{100 * chosen[name] / total:.1f}%" if total else "-", f(base[name]))
    comp.add_row("total", f(report.total("dense", "causal")), f(report.total("sparse", "causal")),
                 f(report.total("dense", "kernel")), "100.0%", f(baseline.total()), style="bold")
    console.print(comp)

    rows = report.by_layer()
    layer_factor, layer_unit = _scale(max((r["total"] for r in rows), default=0.0))

    def g(x: float) -> str:
        return f"{x / layer_factor:,.2f}" if x else "-"

    layers = Table(title=f"decoder layers, prefill + decode ({layer_unit}, {count}, {attention} attention)")
    for col in ("layer", "op", "q", "k", "v", "o", "q.k", "att.v", "MLP", "total"):
        layers.add_column(col, justify="left" if col == "op" else "right")
    for row in rows:
        layers.add_row(str(row["layer"]), Text(row["op"]), *(g(row[k]) for k in
                       ("q", "k", "v", "o", "scores", "weighted_sum", "mlp", "total")))
    console.print(layers)
    line(Text("q.k: attention scores; att.v: weighted sum of values; '-': not computed"))
    for text in token_lines(report):
        line(Text(text))
    if report.variants:
        console.print(variants_table(report, baseline, factor, unit))

    ratio = report.ratio(baseline)
    line(Text(f"total: {total / factor:,.4f} {unit} per sample ({count}, {attention} attention) = "
                       f"{ratio:.4f} x the unplanned model ({baseline.total() / factor:,.4f} {unit})", style="bold"))
    line(Text(f"causal correction (kernel - causal, dense): {report.causal_correction / factor:,.4f} {unit}"))
    line(Text(f"depth (sequential decoder sublayers): prefill {report.depth.prefill} "
                       f"(unplanned {baseline.depth.prefill}), decode step {report.depth.decode} "
                       f"(unplanned {baseline.depth.decode})"))
    p, dtype = report.params, job.model.dtype
    line(Text(f"parameters: {_si(p.stored)} stored (unplanned {_si(p.total)}), {_si(p.nonzero)} nonzero; "
                       f"weights {_bytes(p.weight_bytes(dtype))} in {dtype}"))
    if shipped:
        line(Text("note: the hub could not be reached; the counts use the config shipped with searchskip",
                           style="yellow"))
