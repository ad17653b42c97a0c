"""Analytic FLOP counts (searchskip.flops) against torch's FlopCounterMode, by hand, and monotone.

The analytic count has two attention conventions: ``causal`` (query i attends i+1 keys) and
``kernel`` (what SDPA is given: the full S x S square in a prefill). FlopCounterMode takes
the kernel's shapes, so measured == kernel; measured - causal_correction == causal, with the
correction per decoder layer whose attention runs over the whole prompt of S positions::

    4 h d (S^2 - S(S+1)/2) = 2 h d S (S - 1)           (no sliding window)
    4 h d (S^2 - W(W+1)/2 - (S - W) W)                 (sliding window W < S)
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from searchskip.apply import apply
from searchskip.errors import ConfigError
from searchskip.flops import (
    Budget,
    Workload,
    causal_pairs,
    count_flops,
    geometry_of,
    kept_ffn_channels,
    known_config,
)
from searchskip.flops.measure import flop_counter, measure_flops
from searchskip.plan import SCOPES, DropSpec, EarlyExitSpec, LayerOp, Plan, PruneSpec, VisualTokensSpec
from searchskip.testing import (ANYRES_FAMILIES, FAMILIES, IMAGE_SIZE, QWEN_PATCH, QWEN_VL_FAMILIES, TILED_FAMILIES,
                                is_multimodal, tiny_inputs, tiny_model)
from searchskip.testing.families import GEMMA3_VL_FAMILIES, default_side


pytestmark = pytest.mark.usefixtures("one_thread")


TEXT = 12          # text tokens per prompt (tiny_inputs' seq)
BEFORE = 2         # tiny_inputs puts 2 text tokens before the image
GENERATED = 4      # tokens generated: prefill + 3 decode steps
REL = 0.01         # the tolerance against FlopCounterMode (the counts agree exactly here)

_MODELS: dict[str, torch.nn.Module] = {}


def model_of(family: str):
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


def workload_of(family: str, generated: int = GENERATED, side: int | None = None) -> Workload:
    """What tiny_inputs(batch=1, seq=TEXT) holds; a Qwen-VL image is framed by two text tokens
    (<vision_start>, <vision_end>) and is a (1, side/4, side/4) patch grid."""
    if side is None:
        side = default_side(model_of(family).config) if is_multimodal(family) else IMAGE_SIZE
    if family in QWEN_VL_FAMILIES:
        return Workload(prompt_tokens=TEXT + 2, generated_tokens=generated, images=1, text_before_image=BEFORE + 1,
                        image_shape=(1, side // QWEN_PATCH, side // QWEN_PATCH))
    if family in ANYRES_FAMILIES:  # anyres: the image's size in pixels
        return Workload(prompt_tokens=TEXT, generated_tokens=generated, images=1, text_before_image=BEFORE,
                        image_shape=(side, side))
    if family in TILED_FAMILIES:  # InternVL: the image's tiles, framed by <img> ... </img>
        return Workload(prompt_tokens=TEXT + 2, generated_tokens=generated, images=1, text_before_image=BEFORE + 1,
                        image_shape=geometry_of(model_of(family).config).vision.shape_for(side, side))
    if family in GEMMA3_VL_FAMILIES:  # framed by <start_of_image> ... <end_of_image>
        return Workload(prompt_tokens=TEXT + 2, generated_tokens=generated, images=1, text_before_image=BEFORE + 1)
    image = is_multimodal(family)
    return Workload(prompt_tokens=TEXT, generated_tokens=generated, images=int(image),
                    text_before_image=BEFORE if image else 0)


def generate_flops(model, generated: int = GENERATED) -> int:
    inputs = tiny_inputs(model, batch=1, seq=TEXT)
    total, out = measure_flops(lambda: model.generate(**inputs, max_new_tokens=generated, min_new_tokens=generated,
                                                      do_sample=False))
    assert out.shape[1] == inputs["input_ids"].shape[1] + generated
    return total


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


# --------------------------------------------------------------------------------------
# The unplanned model, every family
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("generated", [1, GENERATED])
@pytest.mark.parametrize("family", FAMILIES)
def test_unplanned_matches_flop_counter(family, generated):
    model = model_of(family)
    measured = generate_flops(model, generated)
    report = count_flops(model.config, None, workload_of(family, generated))
    assert close(report.total(attention="kernel"), measured, REL), (report.total(attention="kernel"), measured)
    assert report.total(attention="kernel") == measured  # in fact exact

    # the causal correction, written out (tiny models: hidden 32, 4 heads of 8, 4 layers)
    g = geometry_of(model.config)
    s = report.workload.prompt_length
    correction = 0
    for layer in g.layers:
        hd = layer.heads * layer.head_dim
        w = layer.sliding_window
        if w is None or w >= s:
            correction += 2 * hd * s * (s - 1)
        else:
            correction += 4 * hd * (s * s - w * (w + 1) // 2 - (s - w) * w)
        if g.bidirectional_images:  # Gemma 3: an image's tokens also see its later tokens, within the causal count
            n = report.workload.image_tokens
            correction -= 4 * hd * n * (n - 1) // 2
    assert report.causal_correction == correction
    assert measured - correction == report.total(attention="causal")


def test_sliding_window_decode_sees_the_window():
    """Mistral (window 8) decodes with a sliding cache: each step attends min(p + 1, 8) keys."""
    report = count_flops(model_of("mistral").config, None, workload_of("mistral"))
    decode_attn = report.by_part("llm_decode")["scores"] + report.by_part("llm_decode")["weighted_sum"]
    assert decode_attn == 4 * 4 * 8 * 8 * 3 * 4  # 4 h d x 8 keys x 3 steps x 4 layers


# --------------------------------------------------------------------------------------
# Every op and scope, every family, through searchskip.apply
# --------------------------------------------------------------------------------------

OP_PLANS: dict[str, Plan] = {
    f"{op}/{scope}": Plan(layers={1: LayerOp(op, scope)})
    for op in ("skip_block", "skip_attn", "skip_ffn", "parallel_attn_ffn", "parallel_blocks")
    for scope in SCOPES
}
OP_PLANS.update({
    "parallel_blocks-average": Plan(layers={2: LayerOp("parallel_blocks", average=True)}),
    "drop": Plan(drop=DropSpec(1, 3)),
    "prune-ffn_channels": Plan(prune=PruneSpec(method="magnitude", structure="ffn_channels", sparsity=0.3,
                                               targets=("ffn",))),
    "prune-unstructured": Plan(prune=PruneSpec(method="magnitude", structure="unstructured", sparsity=0.3)),
    "prune-2:4": Plan(prune=PruneSpec(method="magnitude", structure="2:4", sparsity=0.5)),
    "mixed": Plan(layers={0: LayerOp("skip_attn", "generated"), 1: LayerOp("skip_block", "non_visual"),
                          2: LayerOp("skip_ffn", "prompt"), 3: LayerOp("parallel_attn_ffn", "generated")},
                  prune=PruneSpec(method="magnitude", structure="ffn_channels", sparsity={1: 0.5, 3: 0.25},
                                  targets=("ffn",))),
    "mixed-drop": Plan(layers={0: LayerOp("skip_block", "prompt"), 3: LayerOp("skip_attn", "non_visual")},
                       drop=DropSpec(1, 2)),
    "mixed-visual": Plan(layers={0: LayerOp("skip_block", "visual"), 1: LayerOp("skip_attn", "visual"),
                                 2: LayerOp("skip_ffn", "visual"), 3: LayerOp("skip_block", "generated")},
                         prune=PruneSpec(method="magnitude", structure="unstructured", sparsity=0.3)),
})


@pytest.mark.parametrize("name", list(OP_PLANS))
@pytest.mark.parametrize("family", FAMILIES)
def test_op_matches_flop_counter(family, name):
    check_matches_flop_counter(family, OP_PLANS[name])


def check_matches_flop_counter(family: str, plan: Plan) -> None:
    """The analytic count of ``plan`` equals FlopCounterMode on the planned ``generate`` (kernel
    convention; causal = measured minus the causal correction)."""
    model = model_of(family)
    with apply(model, plan):
        measured = generate_flops(model)
    report = count_flops(model.config, plan, workload_of(family))
    kernel = report.total(attention="kernel")
    assert close(kernel, measured, REL), (kernel, measured, (kernel - measured) / measured)
    assert measured - report.causal_correction == pytest.approx(report.total(attention="causal"), rel=1e-12)


@pytest.mark.parametrize("family", ["llama", "llava-opt"])
@pytest.mark.parametrize("structure,method", [("unstructured", "magnitude"), ("unstructured", "wanda"),
                                              ("2:4", "magnitude"), ("2:4", "wanda")])
def test_sparse_flops_and_params_match_the_pruned_weights(family, structure, method):
    """sparse FLOPs of a linear = its dense FLOPs x its nonzero fraction, read off the pruned model."""
    from searchskip.arch import get_adapter

    sparsity = 0.5 if structure == "2:4" else 0.3
    kw = dict(calibration={"samples": 2, "seed": 0}) if method == "wanda" else {}
    plan = Plan.from_dict({"version": 1, "prune": {"method": method, "structure": structure,
                                                   "sparsity": sparsity, **kw}})
    model = model_of(family)
    report = count_flops(model.config, plan, workload_of(family))
    unplanned = count_flops(model.config, None, workload_of(family))
    assert report.total("dense") == unplanned.total("dense")
    calibration = [tiny_inputs(model, batch=2, seq=TEXT, seed=s) for s in range(2)] if method == "wanda" else None
    with apply(model, plan, calibration=calibration):
        adapter = get_adapter(model)
        expected_sparse = 0.0
        zeroed = 0
        by_key = {(e.component, e.layer, e.part): e for e in report.entries}
        for i, layer in enumerate(adapter.layers(model)):
            linears = {**adapter.attn_linears(layer), **adapter.mlp_linears(layer)}
            for name, lin in linears.items():
                zeros = int((lin.weight == 0).sum())
                zeroed += zeros
                for component in ("llm_prefill", "llm_decode"):
                    e = by_key.get((component, i, name))
                    if e is not None:
                        expected_sparse += e.dense * (1 - zeros / lin.weight.numel())
    other = sum(e.sparse for e in report.entries if e.component not in ("llm_prefill", "llm_decode") or
                e.part in ("scores", "weighted_sum") or e.layer is None)
    assert report.total("sparse") == pytest.approx(other + expected_sparse, rel=1e-12)
    assert report.total("sparse") < report.total("dense")
    assert report.params.stored - report.params.nonzero == zeroed


def test_ffn_channel_params_match_the_shrunk_model():
    plan = Plan(prune=PruneSpec(method="magnitude", structure="ffn_channels", sparsity={0: 0.3, 2: 0.5},
                                targets=("ffn",)))
    model = model_of("llava-qwen2")
    report = count_flops(model.config, plan, workload_of("llava-qwen2"))
    assert report.params.total == sum(p.numel() for p in model.parameters())
    with apply(model, plan):
        assert report.params.stored == sum(p.numel() for p in model.parameters())
    assert report.params.stored == report.params.nonzero < report.params.total
    assert kept_ffn_channels(64, 0.3) == 64 - 19 and kept_ffn_channels(64, 0.5) == 32


# --------------------------------------------------------------------------------------
# LLaVA-1.5-7B from its config, on the meta device, and by hand
# --------------------------------------------------------------------------------------

# One 336 px image -> (336 / 14)^2 = 576 patches (the tower also carries the CLS token: 577),
# 41 prompt text tokens: S = 617 LLM positions; one generated token (a forward: lm_head on the
# last position only).
P, TXT = 576, 41
S = P + TXT
# CLIP ViT-L/14-336: width 1024, 24 layers, 16 heads x 64, MLP 4096; all 24 layers run.
PATCH_EMBED = 2 * (3 * 14 * 14) * 1024 * P                        # the patch conv as a matmul
VIT_TOKEN = 4 * 2 * 1024 * 1024 + 2 * 2 * 1024 * 4096             # q,k,v,o + fc1,fc2, per token
VIT_ATTN = 4 * 16 * 64 * (P + 1) ** 2                             # scores + weighted sum, bidirectional
VISION = PATCH_EMBED + 24 * ((P + 1) * VIT_TOKEN + VIT_ATTN)
PROJECTOR = P * (2 * 1024 * 4096 + 2 * 4096 * 4096)               # linear_1, linear_2 per image token
# Llama-2-7B: hidden 4096, 32 layers, 32 heads x 128, MLP 11008 (gate, up, down), vocab 32064
LLM_TOKEN = 4 * 2 * 4096 * 4096 + 3 * 2 * 4096 * 11008            # q,k,v,o + gate,up,down, per token
ATTN_CAUSAL = 4 * 32 * 128 * S * (S + 1) // 2                     # query i attends i+1 keys
ATTN_KERNEL = 4 * 32 * 128 * S * S                                # the square SDPA computes
LM_HEAD = 2 * 4096 * 32064
HAND_CAUSAL = VISION + PROJECTOR + 32 * (S * LLM_TOKEN + ATTN_CAUSAL) + LM_HEAD
HAND_KERNEL = VISION + PROJECTOR + 32 * (S * LLM_TOKEN + ATTN_KERNEL) + LM_HEAD


def test_llava_1_5_7b_hand_arithmetic():
    assert PATCH_EMBED == 693_633_024
    assert VISION == 381_918_216_192               # 0.382 TFLOPs, as measured on the meta device
    assert PROJECTOR == 24_159_191_040
    assert S * LLM_TOKEN + ATTN_KERNEL == 255_968_165_888  # 0.256 TFLOPs per decoder layer
    assert HAND_KERNEL == 8_597_321_383_936        # 8.60 TFLOPs (STACK-FACTS)
    assert HAND_CAUSAL == HAND_KERNEL - 32 * 2 * 32 * 128 * S * (S - 1) == 8_497_687_789_568


def test_llava_1_5_7b_config_is_counted_as_by_hand():
    config = known_config("llava-hf/llava-1.5-7b-hf")
    report = count_flops(config, None, Workload(prompt_tokens=TXT, generated_tokens=1))
    assert report.workload.image_tokens == P
    assert report.total(attention="kernel") == pytest.approx(HAND_KERNEL, rel=1e-3)
    assert report.total(attention="causal") == report.total() == HAND_CAUSAL  # exact
    parts = report.by_component()
    assert parts["vision"] == VISION and parts["projector"] == PROJECTOR and parts["lm_head"] == LM_HEAD
    assert report.params.total == 7_063_427_072


def test_llava_1_5_7b_on_the_meta_device_matches_the_hand_count():
    """Built on the meta device (no memory); vision tower, splice and language model run as
    separate steps because LlavaModel.get_placeholder_mask calls .item()."""
    import transformers

    config = known_config("llava-hf/llava-1.5-7b-hf")
    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(config).eval()
    with flop_counter() as counter, torch.no_grad():
        pixels = torch.empty(1, 3, 336, 336, device="meta")
        features = model.model.get_image_features(pixels, vision_feature_layer=-2,
                                                  vision_feature_select_strategy="default").pooler_output[0]
        assert features.shape == (P, 4096)
        embeds = torch.empty(1, S, 4096, device="meta")  # the splice is a copy: no FLOPs
        mask = torch.empty(1, 1, S, S, dtype=torch.bool, device="meta")  # 4D: no .item() in mask building
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        model.lm_head(hidden.last_hidden_state[:, -1:])
    measured = counter.get_total_flops()
    assert measured == HAND_KERNEL


def test_llava_1_5_7b_vqav2_workload_and_the_paper_plan():
    """The figures of the report: 1 image, 40 prompt text tokens, 2 generated tokens."""
    config = known_config("llava-hf/llava-1.5-7b-hf")
    w = Workload(prompt_tokens=40, generated_tokens=2)
    base = count_flops(config, None, w)
    s = 616
    decode_token = 32 * (LLM_TOKEN + 4 * 32 * 128 * (s + 1))      # one decode step at position 616
    by_hand = VISION + PROJECTOR + 32 * (s * LLM_TOKEN + 4 * 32 * 128 * s * (s + 1) // 2) + decode_token + 2 * LM_HEAD
    assert base.total() == by_hand
    assert base.by_component()["vision"] / base.total() == pytest.approx(0.0449, abs=1e-4)
    skip_all = count_flops(config, Plan.from_pattern(2, 4, 32, "skip_block"), w)
    skip_gen = count_flops(config, Plan.from_pattern(2, 4, 32, "skip_block", scope="generated"), w)
    assert [i for i, _ in skip_all.plan.layers] == list(range(6, 32, 2))  # 13 layers
    assert skip_all.ratio(base) == pytest.approx(1 - 13 * (s * LLM_TOKEN + 4 * 32 * 128 * s * (s + 1) // 2
                                                          + LLM_TOKEN + 4 * 32 * 128 * (s + 1)) / by_hand)
    assert skip_gen.ratio(base) == pytest.approx(1 - 13 * (LLM_TOKEN + 4 * 32 * 128 * (s + 1)) / by_hand)
    assert skip_all.depth.decode == skip_gen.depth.decode == 64 - 26
    assert skip_gen.depth.prefill == 64 and skip_all.depth.prefill == 38


# --------------------------------------------------------------------------------------
# Monotone: skipping more never costs more
# --------------------------------------------------------------------------------------

SKIPS = ("skip_block", "skip_attn", "skip_ffn")
CONVENTIONS = [(c, a) for c in ("dense", "sparse") for a in ("causal", "kernel")]


def _random_plan(rng: random.Random, n: int) -> Plan:
    layers: dict[int, LayerOp] = {}
    i = 0
    while i < n:
        r = rng.random()
        if r < 0.35:
            layers[i] = LayerOp(rng.choice(SKIPS), rng.choice(SCOPES))
        elif r < 0.45:
            layers[i] = LayerOp("parallel_attn_ffn", rng.choice(SCOPES))
        elif r < 0.5 and i + 1 < n:
            layers[i] = LayerOp("parallel_blocks", rng.choice(SCOPES))
            i += 1
        i += 1
    free = [j for j in range(n) if j not in layers and not (j - 1 in layers and layers[j - 1].op == "parallel_blocks")]
    drop = None
    if free and rng.random() < 0.3:
        j = rng.choice(free)
        drop = DropSpec(j, j + 1)
    prune = None
    if rng.random() < 0.4:
        structure = rng.choice(["unstructured", "ffn_channels"])
        prune = PruneSpec(method="magnitude", structure=structure, sparsity=rng.choice([0.1, 0.3]),
                          targets=("ffn",) if structure == "ffn_channels" else ("attn", "ffn"))
    # token keys (rank uniform: no constraint on layer after_layer - 1); a parallel_blocks pair
    # (i, i + 1) may straddle neither after_layer = i + 1 nor early_exit.layer = i
    pairs = {i for i, op in layers.items() if op.op == "parallel_blocks"}
    visual = early = None
    if rng.random() < 0.3:
        visual = VisualTokensSpec(rng.choice([k for k in range(1, n) if k - 1 not in pairs]),
                                  rng.choice([0.0, 0.3, 0.5]), "uniform")
    if rng.random() < 0.3:
        early = EarlyExitSpec(rng.choice([e for e in range(n - 1) if e not in pairs]))
    return Plan(layers=layers, drop=drop, prune=prune, visual_tokens=visual, early_exit=early)


def _more_skipping(rng: random.Random, plan: Plan, n: int) -> Plan | None:
    """A plan that skips a superset of what ``plan`` skips (one random step), or None."""
    ops = dict(plan.layers)
    dropped = plan.dropped_layers()
    partners = {i + 1 for i, op in ops.items() if op.op == "parallel_blocks"}
    step = rng.randrange(6)
    if step == 0:  # a kept layer gets a skip
        free = [i for i in range(n) if i not in ops and i not in dropped and i not in partners]
        if not free:
            return None
        ops[rng.choice(free)] = LayerOp(rng.choice(SKIPS), rng.choice(SCOPES))
    elif step == 1:  # skip_attn / skip_ffn -> skip_block, same scope
        cand = [i for i, op in ops.items() if op.op in ("skip_attn", "skip_ffn")]
        if not cand:
            return None
        i = rng.choice(cand)
        ops[i] = LayerOp("skip_block", plan.op_for(i).scope)
    elif step == 2:  # a scoped skip -> scope all
        cand = [i for i, op in ops.items() if op.op in SKIPS and plan.op_for(i).scope != "all"]
        if not cand:
            return None
        i = rng.choice(cand)
        ops[i] = LayerOp(ops[i].op, "all")
    elif step == 3:  # a parallel_attn_ffn becomes skip_block
        cand = [i for i, op in ops.items() if op.op == "parallel_attn_ffn"]
        if not cand:
            return None
        ops[rng.choice(cand)] = LayerOp("skip_block", "all")
    elif step == 4:  # more pruning
        p = plan.prune
        if p is None or p.per_layer:
            return None
        return dataclasses.replace(plan, prune=dataclasses.replace(p, sparsity=min(0.9, p.sparsity + 0.2)))
    else:  # fewer image tokens kept, or generated tokens exiting one layer earlier
        v, e = plan.visual_tokens, plan.early_exit
        choices = []
        if v is not None and v.keep > 0:
            fewer = dataclasses.replace(v, keep=max(0.0, v.keep - 0.25))
            choices.append(dataclasses.replace(plan, visual_tokens=fewer))
        if e is not None and e.layer > 0 and not (e.layer - 1 in ops and ops[e.layer - 1].op == "parallel_blocks"):
            choices.append(dataclasses.replace(plan, early_exit=EarlyExitSpec(e.layer - 1)))
        return rng.choice(choices) if choices else None
    scoped = {i: LayerOp(op.op, plan.op_for(i).scope if op.scope is None else op.scope, op.average)
              for i, op in ops.items()}
    return Plan(layers=scoped, drop=plan.drop, prune=plan.prune, visual_tokens=plan.visual_tokens,
                early_exit=plan.early_exit)


@pytest.mark.parametrize("family", ["llava-llama", "mistral"])
def test_skipping_more_never_costs_more(family):
    rng = random.Random(0)
    config = model_of(family).config
    n = geometry_of(config).num_layers
    workloads = [workload_of(family, g) for g in (1, 5)]
    if family.startswith("llava-"):
        workloads.append(Workload(prompt_tokens=7.5, generated_tokens=2.5, text_before_image=3.25))
    checked = 0
    for _ in range(150):
        plan = _random_plan(rng, n)
        bigger = _more_skipping(rng, plan, n)
        if bigger is None:
            continue
        for w in workloads:
            a, b = count_flops(config, plan, w), count_flops(config, bigger, w)
            for c, att in CONVENTIONS:
                assert b.total(c, att) <= a.total(c, att) * (1 + 1e-12), (plan.describe(), bigger.describe(), c, att)
            checked += 1
        # every planned model costs at most the unplanned one, and parallel ops cost the same
        base = count_flops(config, None, workloads[0])
        assert count_flops(config, plan, workloads[0]).total() <= base.total()
    assert checked > 100


def test_scoped_skips_lie_between_keep_and_all():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    keep = count_flops(config, None, w)
    for op in SKIPS + ("parallel_attn_ffn", "parallel_blocks"):
        everything = count_flops(config, Plan(layers={1: LayerOp(op, "all")}), w)
        for scope in SCOPES:
            r = count_flops(config, Plan(layers={1: LayerOp(op, scope)}), w)
            for c, a in CONVENTIONS:
                assert everything.total(c, a) <= r.total(c, a) <= keep.total(c, a), (op, scope, c, a)
            if op.startswith("parallel"):
                assert r.total() == keep.total()


# --------------------------------------------------------------------------------------
# Depth, workloads, budgets, pieces
# --------------------------------------------------------------------------------------


def test_depth():
    config = model_of("llama").config
    w = workload_of("llama")
    assert count_flops(config, None, w).depth.to_dict() == {"prefill": 8, "decode": 8}
    all_parallel = Plan(layers={i: "parallel_attn_ffn" for i in range(4)})
    assert count_flops(config, all_parallel, w).depth.to_dict() == {"prefill": 4, "decode": 4}
    blocks = Plan(layers={0: "parallel_blocks", 2: "parallel_blocks"})
    assert count_flops(config, blocks, w).depth.to_dict() == {"prefill": 4, "decode": 4}
    gen = Plan(layers={1: LayerOp("skip_block", "generated"), 2: LayerOp("parallel_attn_ffn", "generated")})
    assert count_flops(config, gen, w).depth.to_dict() == {"prefill": 8, "decode": 5}
    assert count_flops(config, Plan(drop=DropSpec(0, 2)), w).depth.to_dict() == {"prefill": 4, "decode": 4}


def test_causal_pairs_closed_form():
    for window in (None, 1, 3, 8):
        for start in range(0, 12):
            for end in range(start, 20):
                brute = sum(min(p + 1, window or 10 ** 9) for p in range(start, end))
                assert causal_pairs(start, end, window) == brute


def test_workload_round_trip_and_checks():
    w = Workload(prompt_tokens=40.5, generated_tokens=2.25, images=1, image_tokens=576, text_before_image=5,
                 source="measured")
    assert Workload.from_dict(w.to_dict()) == w
    assert w.to_dict()["version"] == 1
    with pytest.raises(ConfigError, match="generated_tokens >= 1"):
        Workload(prompt_tokens=3, generated_tokens=0)
    with pytest.raises(ConfigError, match="text_before_image"):
        Workload(prompt_tokens=3, text_before_image=4)
    with pytest.raises(ConfigError, match="not a workload key"):
        Workload.from_dict({"prompt_tokens": 3, "answer_tokens": 2})
    with pytest.raises(ConfigError, match="text-only"):
        count_flops(model_of("llama").config, None, Workload(prompt_tokens=3))
    with pytest.raises(ConfigError, match="16 LLM positions per image"):
        count_flops(model_of("llava-llama").config, None, Workload(prompt_tokens=3, image_tokens=10))


def test_plan_is_checked_against_the_model():
    with pytest.raises(ConfigError, match="layer < num_layers"):
        count_flops(model_of("llama").config, Plan(layers={9: "skip_block"}), workload_of("llama"))


def test_budget():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    base = count_flops(config, None, w)
    plan = count_flops(config, Plan(layers={1: "skip_block", 2: "skip_block"}), w)
    half = Budget(ratio=plan.ratio(base))
    assert half.allows(plan, base) and not half.allows(base, base)
    assert Budget(ratio=1.0).allows(base, base)
    assert Budget(gflops=base.total() / 1e9).allows(base)
    assert Budget.from_dict(Budget(gflops=1.5, count="sparse").to_dict()) == Budget(gflops=1.5, count="sparse")
    with pytest.raises(ConfigError, match="exactly one"):
        Budget(ratio=0.5, gflops=1.0)
    with pytest.raises(ConfigError, match="ratio > 0"):
        Budget(ratio=0)


def test_report_dict_has_the_promised_keys():
    config = model_of("llava-opt").config
    w = workload_of("llava-opt")
    base = count_flops(config, None, w)
    report = count_flops(config, Plan(layers={1: "skip_attn"}), w)
    data = report.to_dict(base)
    for key in ("total_flops", "ratio", "params", "breakdown", "depth", "workload", "totals"):
        assert key in data
    assert data["ratio"] == pytest.approx(report.total() / base.total())
    assert set(data["breakdown"]["components"]) == {"vision", "projector", "llm_prefill", "llm_decode", "lm_head"}
    assert math.fsum(r["total"] for r in data["breakdown"]["layers"]) == pytest.approx(
        data["breakdown"]["components"]["llm_prefill"]["dense_causal"]
        + data["breakdown"]["components"]["llm_decode"]["dense_causal"])
    assert sum(e["dense"] for e in data["breakdown"]["entries"]) == pytest.approx(data["total_flops"])


def test_geometry_from_a_dict_and_a_cached_config():
    config = model_of("llava-mistral").config
    g1 = geometry_of(config)
    assert geometry_of(config.to_dict()) == g1
    assert geometry_of(config) is g1
    assert g1.vision.image_tokens == 16 and g1.vision.tokens == 17
    assert [layer.sliding_window for layer in g1.layers] == [8] * 4
    assert g1.layers[0].kv_heads == 2 and g1.layers[0].linear("k").out_features == 16


def test_measure_workload_on_the_embedded_processor():
    from transformers import AutoProcessor

    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.flops import measure_workload
    from searchskip.models import resolve_source

    job = load_job("jobs/demo.yaml")
    source, template = resolve_source(job.model)
    processor = AutoProcessor.from_pretrained(source)
    rows = load_eval_split(job.data, "validation").select(range(12))

    class Loaded:
        pass

    loaded = Loaded()
    loaded.processor, loaded.template = processor, template
    w = measure_workload(loaded, rows, max_new_tokens=2)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    text, before, answer = [], [], []
    for row in rows:  # the slow way: the processor on every row, with its image
        ids = processor(images=[row["image"]], text=[template.format(question=row["question"])],
                        return_tensors="pt")["input_ids"][0].tolist()
        assert ids.count(image_id) == 16
        text.append(len(ids) - 16)
        before.append(ids.index(image_id))
        answer.append(min(len(processor.tokenizer(row["answers"][0], add_special_tokens=False)["input_ids"]) + 1, 2))
    assert w.images == 1 and w.image_tokens == 16
    assert w.prompt_tokens == pytest.approx(sum(text) / 12)
    assert w.text_before_image == pytest.approx(sum(before) / 12)
    assert w.generated_tokens == pytest.approx(sum(answer) / 12)
    assert Workload.from_dict(w.to_dict()) == w


# --------------------------------------------------------------------------- bidirectional images


def _mask_pairs(model, inputs) -> list[int]:
    """Per decoder layer: the (query, key) pairs the mask the model hands the layer allows, in a
    prefill of ``inputs`` (batch 1, no padding)."""
    from searchskip.arch import get_adapter

    counts: list[int] = []
    layers = get_adapter(model).layers(model)
    handles = [layer.register_forward_pre_hook(
        lambda module, args, kwargs: counts.append(int(kwargs["attention_mask"].sum())), with_kwargs=True)
        for layer in layers]
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return counts


@pytest.mark.parametrize("plan", [None, Plan(layers={1: LayerOp("skip_attn", "visual")}),
                                  Plan(layers={2: LayerOp("skip_block", "non_visual")})],
                         ids=["unplanned", "visual-skipped", "text-skipped"])
def test_gemma3_causal_count_is_the_pairs_its_masks_allow(plan):
    """Gemma 3's image tokens see their whole image: the causal count holds every pair the model's
    own masks allow (sliding and full layers), not the lower triangle alone."""
    model = model_of("gemma3-vl")
    inputs = tiny_inputs(model, batch=1, seq=TEXT, left_pad=False)
    assert int(inputs["token_type_ids"].sum()) == 16
    allowed = _mask_pairs(model, inputs)
    report = count_flops(model.config, plan, workload_of("gemma3-vl", generated=1))
    geometry = geometry_of(model.config)
    per_pair = 2 * geometry.layers[0].heads * geometry.layers[0].head_dim
    image = set(range(BEFORE + 1, BEFORE + 1 + 16))
    length = inputs["input_ids"].shape[1]
    for i, pairs in enumerate(allowed):
        scores = sum(e.dense for e in report.entries if e.component == "llm_prefill" and e.layer == i
                     and e.part == "scores")
        op = (plan or Plan()).op_for(i)
        skipped = set() if op.op == "keep" else (image if op.scope == "visual" else set(range(length)) - image)
        mask_rows = _mask_rows(model, inputs, i)
        want = sum(int(mask_rows[q].sum()) for q in range(length) if q not in skipped)
        assert scores == per_pair * want, i
        assert want <= pairs
    bidirectional_extra = 16 * 15 // 2
    plain = sum(min(q + 1, 6) if model.config.text_config.layer_types[0] == "sliding_attention" else q + 1
                for q in range(length))
    assert allowed[0] == plain + bidirectional_extra  # layer 0 is a sliding layer (window 6)


def _mask_rows(model, inputs, index: int) -> torch.Tensor:
    """The boolean mask (queries x keys) the model hands decoder layer ``index``."""
    from searchskip.arch import get_adapter

    kept = {}

    def keep(module, args, kwargs):
        kept.setdefault("mask", kwargs["attention_mask"][0, 0])

    layer = get_adapter(model).layers(model)[index]
    handle = layer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return kept["mask"]
