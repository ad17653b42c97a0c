"""searchskip.bench.tokens: the visual_tokens grid against layer-skip plans at no more FLOPs."""

from __future__ import annotations

import json

import pytest

from searchskip.bench import tokens as bench
from searchskip.plan import Plan, VisualTokensSpec
from tests.helpers import demo_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_leaves_out_what_cannot_drop_or_rank():
    plans = bench.token_plans([0, 2], [0.0, 0.5, 1.0], ["attention", "uniform"])
    assert plans == [Plan(visual_tokens=VisualTokensSpec(0, 0.0, "uniform")),
                     Plan(visual_tokens=VisualTokensSpec(0, 0.5, "uniform")),
                     Plan(visual_tokens=VisualTokensSpec(2, 0.0, "uniform")),  # keep 0: nothing to rank
                     Plan(visual_tokens=VisualTokensSpec(2, 0.5, "attention")),
                     Plan(visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))]


def test_pool_holds_every_block_subset_and_only_layer_skips():
    pool = bench.skip_pool(4, n_random=5)
    plans = [plan for _, plan in pool]
    subsets = [p for label, p in pool if label.startswith("skip_block ")]
    assert len(subsets) == 2 ** 4 - 2  # every non-empty proper subset of 4 layers
    assert all(p.visual_tokens is None and p.early_exit is None and not p.is_empty for p in plans)


def test_bench_writes_measured_json_and_markdown(tmp_path):
    job = demo_job(tmp_path, questions=16)
    assert bench.main([str(job), "--after", "2", "--keep", "0.5", "--rank", "uniform", "attention", "--random", "2",
                       "--max-subset", "0"]) == 0
    result = json.loads((tmp_path / "out/bench/tokens-demo.json").read_text())
    assert result["n"] == 16 and len(result["tokens"]) == 2
    assert any(row["best_skip"] is not None for row in result["tokens"])  # the comparison happened
    for row in result["tokens"]:
        assert 0 < row["flops_ratio"] < 1 and row["llm_flops_ratio"] < row["flops_ratio"]
        assert 0.0 <= row["accuracy"] <= 1.0
        best = row["best_skip"]
        assert best is None or best["flops_ratio"] <= row["flops_ratio"] + 1e-12
        assert best is None or best["accuracy"] == max(p["accuracy"] for p in result["pool"]
                                                       if p["flops_ratio"] <= row["flops_ratio"] + 1e-12)
    # both ranks keep half the image tokens from layer 2: the same FLOPs but for the rank scores
    ranked = {r["plan"]["visual_tokens"]["rank"]: r["flops_ratio"] for r in result["tokens"]}
    assert ranked["attention"] > ranked["uniform"]
    md = (tmp_path / "out/bench/tokens-demo.md").read_text()
    assert md.count("\n| 2 | 0.5 |") == 2
