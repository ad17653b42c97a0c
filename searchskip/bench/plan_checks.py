"""Correctness of plans on the device a model runs on: :func:`check_plans`.

What the conformance suite asserts on tiny CPU models, measured on any loaded model (a 7B on a
GPU included) for a set of plans covering every registered op at every scope it takes, a
block-skip pattern, image-token dropping and early exit (:func:`check_plan_set`):

* **cache** -- greedy generation with the KV cache gives the tokens of a no-cache recompute of
  the same sequence (the recompute's argmax at every generated position equals the generated
  token), and the largest logit difference between the two;
* **restore** -- the unplanned logits after the plan is applied, run and restored are
  bit-identical to those before;
* **flops** -- the analytic count (:func:`searchskip.flops.count_flops`) of one question's
  ``generate`` against torch's ``FlopCounterMode`` of the same call, in both attention
  conventions: ``kernel`` (the full query x key rectangle each attention kernel is handed, what
  torch's SDPA formulas count, on CPU and CUDA) and ``causal`` (only the pairs a causal mask keeps).
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_plan_set", "check_plans", "summary"]


def check_plan_set(num_layers: int) -> dict[str, Any]:
    """Name -> :class:`~searchskip.plan.Plan`: every registered op at every scope it takes (at
    layer 0, where cache slot 0 is the pitfall; ``drop`` removes layers 0-1), skip_block on every
    other layer of the second half, parallel_blocks averaged, visual-token dropping (attention and
    uniform ranking), early exit, and a mix of scoped ops with dropping and exit."""
    from searchskip.ops import DROP, REGISTRY
    from searchskip.plan import SCOPE_ALL, SCOPES, DropSpec, EarlyExitSpec, LayerOp, Plan, VisualTokensSpec

    n = num_layers
    plans: dict[str, Any] = {}
    for handler in REGISTRY:
        if handler.name == "keep":
            continue
        for scope in (SCOPES if handler.scoped else (SCOPE_ALL,)):
            plans[f"{handler.name}/{scope}"] = (Plan(drop=DropSpec(0, 2)) if handler.name == DROP
                                                else Plan(layers={0: LayerOp(handler.name, scope)}))
    plans["parallel_blocks/all/average"] = Plan(layers={n // 2: LayerOp("parallel_blocks", SCOPE_ALL, True)})
    plans["skip_block every other layer of the second half"] = Plan.from_pattern(2, n // 2, n, "skip_block", num_layers=n)
    plans["visual_tokens keep 50% after layer 2 (attention)"] = Plan(visual_tokens=VisualTokensSpec(2, 0.5, "attention"))
    plans["visual_tokens keep 25% after layer 1 (uniform)"] = Plan(visual_tokens=VisualTokensSpec(1, 0.25, "uniform"))
    plans[f"early_exit after layer {n // 2}"] = Plan(early_exit=EarlyExitSpec(n // 2))
    plans["scoped ops + visual_tokens + early_exit"] = Plan(
        layers={0: LayerOp("skip_attn", "generated"), 1: LayerOp("skip_ffn", "prompt"),
                2: LayerOp("skip_block", "non_visual"), 3: LayerOp("skip_attn", "visual")},
        visual_tokens=VisualTokensSpec(2, 0.5), early_exit=EarlyExitSpec(n - 2))
    return {name: plan.validate(n) for name, plan in plans.items()}


def _logits(model: Any, inputs: dict, prompt_length: int | None = None) -> Any:
    """Logits at every position without a cache, zero at left padding (no query there has keys)."""
    import torch

    from searchskip.apply import plan_context

    with torch.inference_mode(), plan_context(model, prompt_length=prompt_length):
        logits = model(**inputs, use_cache=False).logits.float()
    return logits * inputs["attention_mask"][:, -logits.shape[1]:, None].to(logits.dtype)


def _cache_check(loaded: Any, inputs: dict, steps: int) -> dict:
    import torch

    from searchskip.eval.generate import greedy_generate
    from searchskip.testing.inputs import append_tokens

    n = inputs["input_ids"].shape[1]
    out = greedy_generate(loaded, inputs, steps, min_new_tokens=steps, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, n:]
    recomputed = _logits(loaded.model, append_tokens(inputs, new), n)[:, n - 1:-1]
    cached = torch.stack(out.logits, dim=1).float()
    config = loaded.model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    barred = [t for t in [*(config.suppress_tokens or []), *eos] if t is not None]  # generate could not pick them
    recomputed[..., barred] = float("-inf")
    top2 = recomputed.topk(2, dim=-1).values
    return {"same_tokens": bool(torch.equal(recomputed.argmax(-1), new)),
            "max_logit_diff": float((cached - recomputed).nan_to_num(posinf=0.0, neginf=0.0).abs().max()),
            "min_top2_gap": float((top2[..., 0] - top2[..., 1]).min())}


def _flop_check(loaded: Any, plan: Any, inputs: dict, steps: int) -> dict:
    """One question (no padding): FlopCounterMode of ``generate`` vs the analytic count."""
    from searchskip.eval.generate import greedy_generate
    from searchskip.flops import Workload, count_flops
    from searchskip.flops.measure import flop_counter

    config = loaded.model.config
    ids = inputs["input_ids"][0]
    image = ids == config.image_token_id
    first = int(image.nonzero()[0]) if bool(image.any()) else 0
    with flop_counter() as counter:
        out = greedy_generate(loaded, inputs, steps, min_new_tokens=steps)
    measured = counter.get_total_flops()
    generated = out.shape[1] - ids.shape[0]
    workload = Workload(prompt_tokens=int((~image).sum()), generated_tokens=generated, images=1, text_before_image=first)
    report = count_flops(config, plan, workload)
    kernel, causal = report.total(attention="kernel"), report.total(attention="causal")
    return {"measured": measured, "kernel": kernel, "causal": causal,
            "kernel_rel_err": (kernel - measured) / measured, "causal_rel_err": (causal - measured) / measured}


def check_plans(loaded: Any, batch: dict, single: dict, plans: dict[str, Any], steps: int = 3) -> list[dict]:
    """One row per plan of ``plans`` (see the module doc): ``batch`` (several questions, left
    padded) for the cache and restore checks, ``single`` (one question) for the FLOP count."""
    import torch

    from searchskip.apply import apply

    model = loaded.model
    before = _logits(model, batch)
    rows = []
    for name, plan in plans.items():
        with apply(model, plan):
            row = {"plan": name, **_cache_check(loaded, batch, steps),
                   "flops": _flop_check(loaded, plan, single, steps)}
        row["restore_bit_identical"] = bool(torch.equal(_logits(model, batch), before))
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Counts over :func:`check_plans`' rows, and which attention convention the measured FLOPs
    match (the one whose largest relative error is smaller)."""
    kernel = max(abs(r["flops"]["kernel_rel_err"]) for r in rows)
    causal = max(abs(r["flops"]["causal_rel_err"]) for r in rows)
    return {"plans": len(rows), "same_tokens": sum(r["same_tokens"] for r in rows),
            "restore_bit_identical": sum(r["restore_bit_identical"] for r in rows),
            "max_logit_diff": max(r["max_logit_diff"] for r in rows),
            "flops_max_rel_err": {"kernel": kernel, "causal": causal},
            "flops_convention": "kernel" if kernel <= causal else "causal"}
