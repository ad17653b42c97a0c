"""Analytic FLOPs of the plan-level token keys, ``visual_tokens`` and ``early_exit``: by hand on
a tiny config and on LLaVA-1.5-7B, composed with layer ops, drop and prune, monotone, and
against torch's FlopCounterMode on the planned models (that last test needs the runtime of
:mod:`searchskip.ops.tokens`).

The tiny LLaVA-Llama (``searchskip.testing``): hidden 32, 4 heads x 8, FFN 64 (gate, up, down),
4 decoder layers, 16 image tokens per image; the workload of ``tests/test_flops.py``: 2 text
tokens, the image, 10 more text tokens (S = 28), 4 generated tokens (3 decode steps, at
positions 28, 29, 30).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchskip import cli
from searchskip.flops import RANK_SCORES, Workload, causal_pairs, count_flops, known_config
from searchskip.plan import DropSpec, EarlyExitSpec, LayerOp, Plan, PruneSpec, VisualTokensSpec, kept_visual_tokens
from searchskip.testing import FAMILIES
from tests.test_flops import BEFORE, GENERATED, TEXT, check_matches_flop_counter, model_of, workload_of

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]

IMG = 16                                   # image tokens of the tiny LLaVA models
S = IMG + TEXT                             # 28 prompt positions
DECODE = GENERATED - 1                     # 3 decode steps
PROJ = 2 * 32 * 32                         # one of q, k, v, o, per token
MLP = 3 * 2 * 32 * 64                      # gate + up + down, per token
PAIR = 2 * 4 * 8                           # one of: q.k scores, weighted sum, per query-key pair
CONVENTIONS = [(c, a) for c in ("dense", "sparse") for a in ("causal", "kernel")]

def entry(report, component: str, layer: int, part: str, attention: str = "causal") -> float:
    return sum(e.value("dense", attention) for e in report.entries
               if (e.component, e.layer, e.part) == (component, layer, part))


def tokens(report, component: str, layer: int, part: str) -> float:
    """Positions a linear ran for at one layer (its FLOPs over its per-token FLOPs)."""
    return entry(report, component, layer, part) / (PROJ if part in "qkvo" else 2 * 32 * 64)


def visual(after_layer: int, keep: float, rank: str = "attention", **kw) -> Plan:
    return Plan(visual_tokens=VisualTokensSpec(after_layer, keep, rank), **kw)


# --------------------------------------------------------------------------------------
# The tiny LLaVA-Llama, by hand
# --------------------------------------------------------------------------------------


def test_prefill_runs_the_kept_tokens_from_after_layer_on():
    config = model_of("llava-llama").config
    report = count_flops(config, visual(2, 0.5), workload_of("llava-llama"))
    kept = kept_visual_tokens(IMG, 0.5)
    assert kept == 8
    reduced = S - (IMG - kept)  # 20
    for layer, n in enumerate([S, S, reduced, reduced]):
        for part in ("q", "k", "v", "o", "gate", "up", "down"):
            assert tokens(report, "llm_prefill", layer, part) == n, (layer, part)
        # causal: a query at reduced position p attends p + 1 keys; kernel: the S' x S' square
        assert entry(report, "llm_prefill", layer, "scores") == PAIR * n * (n + 1) // 2
        assert entry(report, "llm_prefill", layer, "weighted_sum", "kernel") == PAIR * n * n
    unplanned = count_flops(config, None, workload_of("llava-llama"))
    for part in ("vision", "projector", "lm_head"):
        assert report.by_component()[part] == unplanned.by_component()[part]
    llm = 2 * (S * (4 * PROJ + MLP) + 2 * PAIR * S * (S + 1) // 2) \
        + 2 * (reduced * (4 * PROJ + MLP) + 2 * PAIR * reduced * (reduced + 1) // 2)
    decode = 4 * DECODE * (4 * PROJ + MLP) + 2 * 2 * PAIR * (29 + 30 + 31) + 2 * 2 * PAIR * (21 + 22 + 23)
    rank = PAIR * S
    assert report.by_component()["llm_prefill"] == llm + rank
    assert report.by_component()["llm_decode"] == decode


def test_decode_attends_over_the_reduced_cache():
    config = model_of("llava-llama").config
    report = count_flops(config, visual(1, 0.25, "uniform"), workload_of("llava-llama"))
    reduced = S - (IMG - 4)  # 16: decode steps at reduced positions 16, 17, 18
    assert entry(report, "llm_decode", 0, "scores") == PAIR * (29 + 30 + 31)
    for layer in (1, 2, 3):
        assert entry(report, "llm_decode", layer, "scores") == PAIR * (17 + 18 + 19)
        assert entry(report, "llm_decode", layer, "scores", "kernel") == PAIR * (17 + 18 + 19)
        assert entry(report, "llm_decode", layer, "q") == DECODE * PROJ
        assert tokens(report, "llm_prefill", layer, "k") == reduced


def test_rank_scores_are_the_last_query_against_every_prompt_key():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    attention = count_flops(config, visual(2, 0.5), w)
    uniform = count_flops(config, visual(2, 0.5, "uniform"), w)
    ranks = [e for e in attention.entries if e.part == RANK_SCORES]
    assert len(ranks) == 1
    (rank,) = ranks
    assert (rank.component, rank.layer) == ("llm_prefill", 1)
    assert rank.dense == rank.sparse == rank.kernel == 2 * 4 * 8 * S  # q (H,1,hd) @ k^T (H,hd,S)
    assert not [e for e in uniform.entries if e.part == RANK_SCORES]
    for c, a in CONVENTIONS:
        assert attention.total(c, a) - uniform.total(c, a) == 2 * 4 * 8 * S
    # in the per-layer table it is part of layer 1's q.k
    rows, base = attention.by_layer(), uniform.by_layer()
    assert rows[1]["scores"] - base[1]["scores"] == 2 * 4 * 8 * S and rows[1]["mlp"] == base[1]["mlp"]
    assert attention.layer_ops == ("keep", "keep, ranks image tokens", "keep, 50% image tokens",
                                   "keep, 50% image tokens")
    assert uniform.layer_ops[1] == "keep"


def test_keep_zero_and_keep_close_to_one():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    unplanned = count_flops(config, None, w)
    none = count_flops(config, visual(2, 0.0), w)
    for layer in (2, 3):  # text only: the 2 tokens before the image and the 10 after it
        assert tokens(none, "llm_prefill", layer, "q") == TEXT
        assert entry(none, "llm_prefill", layer, "scores") == PAIR * TEXT * (TEXT + 1) // 2
        assert entry(none, "llm_decode", layer, "scores") == PAIR * (13 + 14 + 15)
    # 0.99 * 16 rounds to 16: every image token stays; only the ranking is extra
    assert kept_visual_tokens(IMG, 0.99) == IMG
    almost = count_flops(config, visual(2, 0.99), w)
    assert almost.total() == unplanned.total() + PAIR * S
    assert count_flops(config, visual(2, 0.99, "uniform"), w).total() == unplanned.total()
    # 0.95 * 16 = 15.2 rounds to 15: one image token fewer from layer 2 on
    one_less = count_flops(config, visual(2, 0.95, "uniform"), w)
    assert kept_visual_tokens(IMG, 0.95) == 15
    assert tokens(one_less, "llm_prefill", 3, "v") == S - 1
    assert none.total() < one_less.total() < unplanned.total()


def test_early_exit_is_skip_block_generated_after_the_exit_layer():
    for family in ("llava-llama", "mistral", "llava-opt"):
        config = model_of(family).config
        for e in range(3):
            exit_plan = Plan(early_exit=EarlyExitSpec(e))
            skips = Plan(layers={i: LayerOp("skip_block", "generated") for i in range(e + 1, 4)})
            for g in (1, GENERATED):
                w = workload_of(family, g)
                a, b = count_flops(config, exit_plan, w), count_flops(config, skips, w)
                assert sorted(a.entries, key=repr) == sorted(b.entries, key=repr), (family, e, g)
                assert a.depth == b.depth
                assert a.by_component()["lm_head"] == g * 2 * 32 * 100  # once per generated token
            assert count_flops(config, exit_plan, workload_of(family)).depth.decode == 2 * (e + 1)
    labels = count_flops(model_of("llama").config, Plan(early_exit=EarlyExitSpec(1)), workload_of("llama")).layer_ops
    assert labels == ("keep", "keep", "keep, generated exited", "keep, generated exited")


def test_early_exit_composes_with_layer_ops():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    # layer 3 skips its attention for the prompt; after the exit, generated tokens compute nothing
    # there either: no attention at all (no K/V), the FFN for the prompt only
    plan = Plan(layers={3: LayerOp("skip_attn", "prompt")}, early_exit=EarlyExitSpec(2))
    report = count_flops(config, plan, w)
    assert report.by_phase_layer()["llm_decode"][3] == 0
    assert report.by_phase_layer()["llm_prefill"][3] == S * MLP
    assert report.layer_ops[3] == "skip_attn [prompt], generated exited"
    # a parallel_blocks pair after the exit: the prompt's depth is 2 there, the decode's 0
    pair = count_flops(config, Plan(layers={2: "parallel_blocks"}, early_exit=EarlyExitSpec(1)), w)
    assert pair.depth.to_dict() == {"prefill": 6, "decode": 4}


def test_visual_tokens_compose_with_scopes_drop_and_prune():
    config = model_of("llava-llama").config
    w = workload_of("llava-llama")
    # non_visual at a reduced layer: the 8 kept image queries, K/V up to the last kept image token
    scoped = count_flops(config, visual(2, 0.5, layers={3: LayerOp("skip_block", "non_visual")}), w)
    assert tokens(scoped, "llm_prefill", 3, "q") == 8 and tokens(scoped, "llm_prefill", 3, "up") == 8
    assert tokens(scoped, "llm_prefill", 3, "k") == BEFORE + 8
    assert entry(scoped, "llm_prefill", 3, "scores") == PAIR * (causal_pairs(2, 10, None))
    assert entry(scoped, "llm_prefill", 3, "scores", "kernel") == PAIR * 8 * 10
    assert scoped.by_phase_layer()["llm_decode"][3] == 0
    # keep 0: nothing runs at that layer, and the prefill's path loses its two sublayers
    empty = count_flops(config, visual(2, 0.0, layers={3: LayerOp("skip_block", "non_visual")}), w)
    assert empty.by_phase_layer()["llm_prefill"][3] == 0
    assert empty.depth.to_dict() == {"prefill": 6, "decode": 6}
    # drop: the dropped layer costs nothing; the others count over the reduced classes
    dropped = count_flops(config, visual(1, 0.5, drop=DropSpec(2, 3)), w)
    assert [tokens(dropped, "llm_prefill", i, "q") for i in range(4)] == [S, 20, 0, 20]
    assert dropped.layer_ops == ("keep, ranks image tokens", "keep, 50% image tokens", "dropped",
                                 "keep, 50% image tokens")
    # prune ffn_channels: reduced tokens times the kept channels
    prune = PruneSpec(method="magnitude", structure="ffn_channels", sparsity=0.5, targets=("ffn",))
    pruned = count_flops(config, visual(2, 0.5, "uniform", prune=prune), w)
    assert entry(pruned, "llm_prefill", 3, "down") == 20 * 2 * 32 * 32
    assert entry(pruned, "llm_prefill", 0, "down") == S * 2 * 32 * 32


def test_sliding_windows_count_in_reduced_positions():
    """Mistral's window 8 counted over the kept positions (the causal convention: exact when the
    window covers the sequence, an upper bound otherwise, since the runtime masks the window in
    absolute positions; here it documents the convention)."""
    config = model_of("llava-mistral").config
    report = count_flops(config, visual(2, 0.5, "uniform"), workload_of("llava-mistral"))
    assert entry(report, "llm_prefill", 3, "scores") == PAIR * causal_pairs(0, 20, 8)
    assert entry(report, "llm_prefill", 1, "scores") == PAIR * causal_pairs(0, S, 8)
    assert entry(report, "llm_decode", 3, "scores") == PAIR * 8 * DECODE


def test_text_only_and_image_free_workloads_have_nothing_to_drop():
    """No image tokens: nothing to rank or drop; visual_tokens changes nothing, adds nothing."""
    for family, w in (("llama", workload_of("llama")), ("mistral", workload_of("mistral")),
                      ("llava-llama", Workload(prompt_tokens=TEXT, generated_tokens=GENERATED, images=0))):
        config = model_of(family).config
        base = count_flops(config, None, w)
        for plan in (visual(1, 0.0), visual(2, 0.5), visual(2, 0.5, "uniform")):
            report = count_flops(config, plan, w)
            assert report.entries == base.entries, (family, plan.describe())
            assert report.depth == base.depth


# --------------------------------------------------------------------------------------
# LLaVA-1.5-7B, by hand
# --------------------------------------------------------------------------------------

VISION, PROJECTOR = 381_918_216_192, 24_159_191_040          # tests/test_flops.py works them out
LLM_TOKEN = 4 * 2 * 4096 * 4096 + 3 * 2 * 4096 * 11008        # q,k,v,o + gate,up,down, per token
ATTN = 4 * 32 * 128                                           # scores + weighted sum, per pair
LM_HEAD = 2 * 4096 * 32064


def layer_7b(s: int) -> tuple[int, int]:
    """(prefill, one decode step) of one Llama-2-7B layer over ``s`` prompt positions."""
    return s * LLM_TOKEN + ATTN * s * (s + 1) // 2, LLM_TOKEN + ATTN * (s + 1)


def test_llava_1_5_7b_visual_tokens_and_early_exit_by_hand():
    config = known_config("llava-hf/llava-1.5-7b-hf")
    w = Workload(prompt_tokens=40, generated_tokens=2)   # the README's VQAv2-like workload
    s, kept = 616, 288                                   # 576 image tokens, half of them kept
    assert kept_visual_tokens(576, 0.5) == kept
    base = count_flops(config, None, w)
    unplanned = VISION + PROJECTOR + 32 * sum(layer_7b(s)) + 2 * LM_HEAD
    assert base.total() == unplanned
    report = count_flops(config, visual(2, 0.5), w)
    rank = 2 * 32 * 128 * s                              # layer 1: last prompt query x 616 keys
    by_hand = VISION + PROJECTOR + 2 * sum(layer_7b(s)) + 30 * sum(layer_7b(s - 288)) + rank + 2 * LM_HEAD
    assert report.total() == by_hand
    assert report.ratio(base) == pytest.approx(by_hand / unplanned, rel=1e-12)  # the README's 0.5806
    assert report.total(attention="kernel") == by_hand + 2 * ATTN * s * (s - 1) // 2 \
        + 30 * ATTN * (s - 288) * (s - 289) // 2
    # the seed paper's exit mode: every image token leaves after layer 2
    gone = count_flops(config, visual(2, 0.0, "uniform"), w)
    assert gone.total() == VISION + PROJECTOR + 2 * sum(layer_7b(s)) + 30 * sum(layer_7b(40)) + 2 * LM_HEAD
    # early exit after layer 27: layers 28..31 run the prompt only
    exit_27 = count_flops(config, Plan(early_exit=EarlyExitSpec(27)), w)
    assert exit_27.total() == unplanned - 4 * layer_7b(s)[1]
    assert exit_27.depth.to_dict() == {"prefill": 64, "decode": 56}


def test_llava_1_5_7b_image_tokens_frozen_by_hand():
    """ShortV's setting (arXiv 2504.00502): image tokens frozen (skip_block, scope visual) in 19 of
    32 layers: there the 40 text queries run q/o, attention over their causal prefix and the FFN,
    and K/V are projected for all 616 prompt positions (the text attends to the image)."""
    config = known_config("llava-hf/llava-1.5-7b-hf")
    w = Workload(prompt_tokens=40, generated_tokens=2)
    s, t = 616, 40
    proj, mlp = 2 * 4096 * 4096, 3 * 2 * 4096 * 11008
    frozen = t * (2 * proj + mlp) + s * 2 * proj + ATTN * (s * (s + 1) // 2 - (s - t) * (s - t + 1) // 2)
    ffn_only = t * 2 * proj + s * 2 * proj + ATTN * (s * (s + 1) // 2 - (s - t) * (s - t + 1) // 2) + s * mlp
    attention_only = s * 4 * proj + ATTN * s * (s + 1) // 2 + t * mlp
    unplanned = count_flops(config, None, w).total()
    shipped = REPO / "spaces" / "plans" / "llava-1.5-7b"  # the README's rows
    for op, layer, name in (("skip_block", frozen, "image-tokens-frozen"), ("skip_attn", ffn_only, "image-tokens-ffn-only"),
                            ("skip_ffn", attention_only, "image-tokens-attention-only")):
        plan = Plan(layers={i: LayerOp(op, "visual") for i in range(13, 32)})
        assert Plan.load(shipped / f"{name}.yaml") == plan
        report = count_flops(config, plan, w)
        assert report.total() == unplanned - 19 * (layer_7b(s)[0] - layer), op
        assert report.by_component()["llm_decode"] == count_flops(config, None, w).by_component()["llm_decode"]


# --------------------------------------------------------------------------------------
# Monotone: dropping more tokens, exiting earlier never costs more
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava-llama", "llava-mistral", "llava-qwen2"])
def test_dropping_more_tokens_and_exiting_earlier_never_cost_more(family):
    config = model_of(family).config
    workloads = [workload_of(family, g) for g in (1, 5)]
    workloads.append(Workload(prompt_tokens=7.5, generated_tokens=2.5, text_before_image=3.25))
    ops = [{}, {1: LayerOp("skip_ffn", "prompt")}, {3: LayerOp("skip_block", "non_visual")},
           {2: LayerOp("skip_attn", "generated")}, {0: LayerOp("parallel_blocks")}]
    keeps = [0.0, 0.1, 0.25, 0.5, 0.75, 0.99]
    for w in workloads:
        base = count_flops(config, None, w)
        for layers in ops:
            for rank in ("attention", "uniform"):
                for after in (1, 2, 3):
                    if 0 in layers and after == 1:  # the pair 0+1 may not straddle after_layer 1
                        continue
                    costs = [count_flops(config, visual(after, k, rank, layers=layers), w) for k in keeps]
                    for a, b in zip(costs, costs[1:]):
                        for c, att in CONVENTIONS:
                            assert a.total(c, att) <= b.total(c, att) * (1 + 1e-12), (layers, rank, after, c, att)
                    if rank == "uniform":
                        assert costs[-1].total() <= count_flops(config, Plan(layers=layers), w).total()
            # an earlier after_layer (same keep) drops the tokens in more layers
            by_after = [count_flops(config, visual(a, 0.5, "uniform", layers=layers), w)
                        for a in (3, 2, 1) if not (0 in layers and a == 1)]
            for a, b in zip(by_after, by_after[1:]):
                for c, att in CONVENTIONS:
                    assert b.total(c, att) <= a.total(c, att) * (1 + 1e-12)
            exits = [count_flops(config, Plan(layers=layers, early_exit=EarlyExitSpec(e)), w)
                     for e in (2, 1, 0) if not (0 in layers and e == 0)]
            for a, b in zip(exits, exits[1:]):
                for c, att in CONVENTIONS:
                    assert b.total(c, att) <= a.total(c, att) * (1 + 1e-12)
                assert b.depth.decode <= a.depth.decode
            assert exits[0].total() <= base.total()


# --------------------------------------------------------------------------------------
# The command shows them
# --------------------------------------------------------------------------------------


def test_flops_command_shows_the_token_keys(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    assert cli.main(["flops", "jobs/demo.yaml", "--plan", "spaces/plans/visual_tokens.yaml",
                     "--prompt-tokens", "11", "--generated-tokens", "2"]) == 0
    out, _ = capsys.readouterr()
    for text in ("visual tokens: 50% kept from layer 2 (attention)", "keep, ranks image tokens",
                 "keep, 50% image tokens", "visual tokens: 8 of 16 image tokens kept from layer 2 on "
                 "(prompt 27 -> 19 positions), rank attention; ranking scores at layer 1"):
        assert text in out, text
    assert cli.main(["flops", "jobs/demo.yaml", "--plan", "spaces/plans/early_exit.yaml",
                     "--prompt-tokens", "11", "--generated-tokens", "2", "--json"]) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert [row["op"] for row in data["breakdown"]["layers"]][5:] == ["keep", "keep, generated exited",
                                                                     "keep, generated exited"]
    assert data["depth"]["decode"] == 12 and data["unplanned"]["depth"]["decode"] == 16
    assert 0 < data["ratio"] < 1


# --------------------------------------------------------------------------------------
# Against FlopCounterMode, through searchskip.apply (needs searchskip.ops.tokens)
# --------------------------------------------------------------------------------------

TOKEN_PLANS: dict[str, Plan] = {
    "visual-attention-1-0.5": visual(1, 0.5),
    "visual-attention-2-0.5": visual(2, 0.5),
    "visual-attention-2-0": visual(2, 0.0),
    "visual-uniform-1-0": visual(1, 0.0, "uniform"),
    "visual-uniform-2-0.5": visual(2, 0.5, "uniform"),
    "exit-1": Plan(early_exit=EarlyExitSpec(1)),
    "visual+exit": Plan(visual_tokens=VisualTokensSpec(2, 0.5), early_exit=EarlyExitSpec(1)),
    "visual+ops": visual(2, 0.5, layers={0: LayerOp("skip_attn", "generated"),
                                         2: LayerOp("skip_block", "non_visual"),
                                         3: LayerOp("skip_ffn", "prompt")}),
    "visual+drop": visual(1, 0.5, drop=DropSpec(2, 3)),
    "visual-uniform+parallel_blocks": visual(2, 0.5, "uniform", layers={2: "parallel_blocks"}),
    "exit+ops+drop": Plan(layers={0: "parallel_attn_ffn", 3: LayerOp("skip_attn", "prompt")},
                          drop=DropSpec(1, 2), early_exit=EarlyExitSpec(2)),
    "visual+exit+prune": Plan(visual_tokens=VisualTokensSpec(1, 0.5, "uniform"), early_exit=EarlyExitSpec(2),
                              prune=PruneSpec(method="magnitude", structure="ffn_channels", sparsity=0.3,
                                              targets=("ffn",))),
    # scope visual (image positions skip the sublayer) with token dropping, early exit, drop, prune
    "visual-scope+tokens": visual(2, 0.5, layers={0: LayerOp("skip_block", "visual"),
                                                  1: LayerOp("skip_ffn", "visual"),
                                                  3: LayerOp("skip_attn", "visual")}),
    "visual-scope+exit": Plan(layers={1: LayerOp("skip_attn", "visual"), 2: LayerOp("skip_block", "visual"),
                                      3: LayerOp("skip_ffn", "visual")}, early_exit=EarlyExitSpec(1)),
    "visual-scope+all": Plan(layers={0: LayerOp("skip_block", "visual"), 2: LayerOp("parallel_attn_ffn", "visual")},
                             drop=DropSpec(1, 2), visual_tokens=VisualTokensSpec(3, 0.25, "uniform"),
                             early_exit=EarlyExitSpec(2),
                             prune=PruneSpec(method="magnitude", structure="ffn_channels", sparsity=0.3,
                                             targets=("ffn",))),
}


@pytest.mark.parametrize("name", list(TOKEN_PLANS))
@pytest.mark.parametrize("family", FAMILIES)
def test_token_plans_match_flop_counter(family, name):
    check_matches_flop_counter(family, TOKEN_PLANS[name])
