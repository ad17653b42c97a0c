"""searchskip.bench.quality: every method at every budget, equal evaluation counts, several seeds."""

from __future__ import annotations

import json

import pytest
import yaml

from searchskip.bench import quality as bench
from searchskip.plan import Plan
from tests.helpers import demo_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_method_is_measured_at_every_budget_and_written(tmp_path):
    path = demo_job(tmp_path, questions=16)
    data = yaml.safe_load(path.read_text())
    data["data"]["test_subset"]["size"] = 24
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [str(path), "--budgets", "0.5", "0.35", "--seeds", "0", "1", "--evaluations", "5",
            "--finetune", "0.5", "--finetune-train-limit", "16", "--methods", "evo", "tpe", "random", "tpe_unfitted"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "out/bench/quality-demo.json").read_text())
    assert result["command"].endswith(" ".join(argv)) and result["default_method"] == "evo"
    assert result["test_questions"] == 24 and result["validation_questions"] == 16
    for ratio, row in result["by_budget"].items():
        assert set(row) == {"evo", "tpe", "random", "tpe_unfitted", *bench.BASELINES}
        for method in ("evo", "tpe", "random", "tpe_unfitted"):
            runs = row[method]["runs"]
            assert [r["seed"] for r in runs] == [0, 1]
            for run in runs:
                # the same model evaluations for every search, and no over-budget plan ever scored
                assert run["evaluations"] == 5 and run["over_budget_scored"] == 0
                assert run["proposals"] >= run["evaluations"] + run["rejected"] - run["duplicates"]
                assert 0 <= run["rejected_seconds"] <= run["seconds"] and 0 <= run["fit_seconds"] <= run["seconds"]
                assert run["llm_flops_ratio"] <= float(ratio) + 1e-9
                assert Plan.from_yaml_text(run["plan"]).key()
            tests = [r["test"] for r in runs]
            assert row[method]["test"]["mean"] == pytest.approx(sum(tests) / 2)
        for name in ("evo", "tpe", "random"):  # fitted: nothing rejected
            assert all(r["rejected"] == 0 for r in row[name]["runs"])
        for name in bench.BASELINES:
            cell = row[name]
            if cell is not None:
                assert cell["llm_flops_ratio"] <= float(ratio) + 1e-9, (ratio, name)
                assert 0 <= cell["test"] <= 1 and cell["evaluations"] >= 1
    assert result["by_budget"]["0.35"]["greedy"]["evaluations"] > result["by_budget"]["0.5"]["greedy"]["evaluations"]
    tokens = Plan.from_yaml_text(result["by_budget"]["0.5"]["tokens"]["plan"])
    assert tokens.visual_tokens is not None and not tokens.layers
    tuned = result["finetune"]["0.5"]
    for method in ("projector", "lora"):
        assert 0 <= tuned[method]["after"] <= 1 and tuned[method]["steps"] == 1
    md = (tmp_path / "out/bench/quality-demo.md").read_text()
    assert "**(the job's default search)**" in md and "rejected" in md and "lora" in md

    lc = result["layer_contribution"]
    assert len(lc) == 8 and all(v >= 0 for v in lc)
    frozen = result["by_budget"]["0.5"]["layer_contribution"]
    assert frozen is None or all(op.scope == "visual" for _, op in Plan.from_yaml_text(frozen["plan"]).layers)

    # a second run with more methods reuses every cell measured the same way and adds the new ones: the
    # richest joint space (ops with their own scope), and image-token skips alone, which cannot reach
    # 35% of the LLM's FLOPs on this model (K/V and the text tokens remain): a cell that says so
    before = {ratio: {m: row[m] for m in ("evo", "tpe")} for ratio, row in result["by_budget"].items()}
    assert bench.main([str(path), "--budgets", "0.5", "0.35", "--seeds", "0", "1", "--evaluations", "5",
                       "--finetune", "0.5", "--methods", "evo", "evo_richest", "evo_visual"]) == 0
    again = json.loads((tmp_path / "out/bench/quality-demo.json").read_text())
    for ratio, row in again["by_budget"].items():
        assert row["evo"] == before[ratio]["evo"] and row["greedy"] == result["by_budget"][ratio]["greedy"]
        assert [r["seed"] for r in row["evo_richest"]["runs"]] == [0, 1] and "tpe" not in row
        assert all(r["evaluations"] == 5 and r["over_budget_scored"] == 0 for r in row["evo_richest"]["runs"])
    assert all("search.budget" not in r.get("no_fit", "") and "no plan of the space" in r["no_fit"]
               for r in again["by_budget"]["0.35"]["evo_visual"]["runs"])
    assert "no plan of the space fits" in (tmp_path / "out/bench/quality-demo.md").read_text()
    assert again["finetune"] == result["finetune"] and again["greedy_evaluations"] == result["greedy_evaluations"] > 0


def test_token_plans_fit_and_use_the_largest_keep(tmp_path):
    from rich.console import Console

    from searchskip.bench.harness import Bench
    from searchskip.config.loader import load_job

    job = load_job(str(demo_job(tmp_path, questions=8)))
    b = Bench(job, Console(stderr=True), tmp_path / "bench")
    budget = b.budget(0.5)
    plans = bench.token_plans_at(b, budget)
    assert plans
    for _label, plan in plans:
        assert budget.allows(b.flops(plan), b.baseline)
        spec = plan.visual_tokens
        bigger = round(spec.keep + 0.05, 2)
        if bigger < 1:  # the next keep up does not fit
            from searchskip.plan import VisualTokensSpec

            assert not budget.allows(b.flops(Plan(visual_tokens=VisualTokensSpec(spec.after_layer, bigger, spec.rank))),
                                     b.baseline)
