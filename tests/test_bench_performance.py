"""searchskip.bench.performance: every part runs from the one command and writes what it measured."""

from __future__ import annotations

import json

import pytest
import yaml

from searchskip.bench import performance as bench
from searchskip.plan import LayerOp, Plan
from tests.helpers import demo_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_first_touched_layer():
    n = 8
    assert bench.first_touched_layer(Plan(), n) == n
    assert bench.first_touched_layer(Plan(layers={5: "skip_ffn", 3: "parallel_attn_ffn"}), n) == 3
    assert bench.first_touched_layer(Plan(layers={2: "skip_block"}, scope="generated"), n) == n
    assert bench.first_touched_layer(Plan(layers={2: "skip_block", 4: LayerOp("skip_attn", "all")},
                                          scope="generated"), n) == 4
    assert bench.first_touched_layer(Plan.from_dict({"version": 1, "visual_tokens": {
        "after_layer": 4, "keep": 0.5, "rank": "attention"}}), n) == 3  # layer 3 ranks the tokens
    assert bench.first_touched_layer(Plan.from_dict({"version": 1, "prune": {
        "method": "magnitude", "structure": "unstructured", "sparsity": 0.5, "targets": ["ffn"]}}), n) == 0


def _job(tmp_path, **search):
    path = demo_job(tmp_path, questions=16, **search)
    data = yaml.safe_load(path.read_text())
    data["data"]["test_subset"]["size"] = 24
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_cost_pruners_and_latency_are_measured_and_written(tmp_path):
    job = _job(tmp_path)
    quality = {"default_method": "evo", "block_influence": [0.5, 0.1, 0.2, 0.05, 0.3, 0.1, 0.2, 0.4],
               "by_budget": {"0.5": {"evo": {"runs": [{"plan": Plan(layers={3: "skip_block", 5: "skip_ffn"}).to_yaml()}]}}}}
    (tmp_path / "out/bench").mkdir(parents=True)
    (tmp_path / "out/bench/quality-demo.json").write_text(json.dumps(quality))  # what bench.quality leaves
    argv = [str(job), "--parts", "cost", "pruners", "latency",
            "--cost-trials", "5", "--cost-plans", "2", "--pruner-trials", "6", "--repeats", "1", "--batch-sizes", "1", "2"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "out/bench/performance-demo.json").read_text())
    assert result["command"].endswith(" ".join(argv))

    cost = result["cost"]
    assert cost["feature_cache"] == "memory" and cost["plans_timed"] == 2 and cost["questions"] == 16
    for row in cost["per_plan"]:
        assert 0 < row["evaluate_cached_s"] and 0 < row["bare_s"] and 0 < row["trial_s"]
    assert cost["trial_over_bare"] == pytest.approx(
        sorted(r["trial_s"] / r["bare_s"] for r in cost["per_plan"])[0] / 2
        + sorted(r["trial_s"] / r["bare_s"] for r in cost["per_plan"])[1] / 2)
    assert cost["naive_s"] > 0 and len(cost["prefix"]["prefill_layer_s"]) == 8
    assert 0 < sum(cost["prefix"]["prefill_layer_s"]) < cost["prefix"]["pass_s"]  # the layers are part of the pass
    assert 0 <= cost["prefix"]["mean_saving_of_trial"] < 1  # 0 when every plan drawn touches layer 0
    assert all(0 <= k <= 8 for k in cost["prefix"]["first_touched_layer"])  # the space covers every layer

    pruners = result["pruners"]["by_pruner"]
    assert set(pruners) == {"none", "median", "halving"} and pruners["none"]["pruned"] == 0
    assert all(row["trials"] == 6 and row["trials_per_hour"] > 0 for row in pruners.values())

    latency = result["latency"]
    labels = [row["label"] for row in latency["rows"]]
    assert labels[0] == "unplanned" and labels[1] == "search (evo) at 50% LLM FLOPs"  # bench.quality's 50% plan
    assert any(label.startswith("Block Influence") for label in labels)
    for row in latency["rows"]:
        assert set(row["by_batch"]) == {"1", "2"}
        assert all(cell["prefill_ms"] > 0 and cell["decode_ms"] > 0 for cell in row["by_batch"].values())
    bi = next(row for row in latency["rows"] if row["label"].startswith("Block Influence"))
    assert bi["layers"] < 8 and bi["prefill_flops_ratio"] < 0.6  # skipped blocks are removed from the export

    md = (tmp_path / "out/bench/performance-demo.md").read_text()
    for heading in ("What a trial costs", "Pruners", "Exported models: latency"):
        assert heading in md
    # a part run alone replaces its own entry and keeps the others
    assert bench.main([str(job), "--parts", "pruners", "--pruner-trials", "5"]) == 0
    again = json.loads((tmp_path / "out/bench/performance-demo.json").read_text())
    assert again["pruners"]["trials"] == 5 and again["latency"] == latency


def test_ray_part_counts_trials_per_minute(tmp_path):
    job = _job(tmp_path)
    assert bench.main([str(job), "--parts", "ray", "--ray-trials", "3", "--ray-workers", "1"]) == 0
    ray = json.loads((tmp_path / "out/bench/performance-demo.json").read_text())["ray"]["by_workers"]["1"]
    assert ray["trials"] == 3 and ray["trials_per_min_wall"] > 0
    assert ray["trials_per_min_steady"] >= ray["trials_per_min_wall"]  # the steady span leaves Ray's start out


def test_a_bad_job_exits_2_without_output(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: demo\nsearch: {space: spaces/nope.yaml, budget: {flops_ratio: 0.5}}\n")
    assert bench.main([str(bad)]) == 2
    assert "search.space" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
