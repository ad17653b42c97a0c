"""``searchskip flops``: JSON and tables, measured and given workloads, the shipped LLaVA-1.5-7B config."""

from __future__ import annotations

import json

import pytest

from searchskip import cli
from searchskip.flops import Workload, count_flops, known_config
from searchskip.plan import Plan


def run_json(capsys, *argv: str) -> dict:
    assert cli.main(["flops", *argv, "--json"]) == 0
    out, _ = capsys.readouterr()
    return json.loads(out)


def test_flops_is_a_verb():
    assert "flops" in cli.VERBS
    assert "flops" in cli.build_parser().format_help()


def test_demo_json_measures_the_workload(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    data = run_json(capsys, "jobs/demo.yaml")
    for key in ("total_flops", "ratio", "params", "breakdown"):
        assert key in data
    assert data["ratio"] == 1.0
    assert data["workload"]["source"].startswith("measured on 500 questions")
    assert data["workload"]["images"] == 1 and data["workload"]["image_tokens"] == 16
    assert 1 <= data["workload"]["generated_tokens"] <= 2  # eval.max_new_tokens: 2
    assert data["params"]["total"] == data["params"]["stored"] > 0
    assert data["params"]["dtype"] == "float32" and data["params"]["weight_bytes"] == 4 * data["params"]["stored"]
    assert not data["shipped_config"]
    comps = data["breakdown"]["components"]
    assert sum(c["dense_causal"] for c in comps.values()) == pytest.approx(data["total_flops"])
    assert len(data["breakdown"]["layers"]) == 8


def test_demo_with_a_plan_and_given_tokens(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    data = run_json(capsys, "jobs/demo.yaml", "--plan", "spaces/plans/skip_block.yaml",
                    "--prompt-tokens", "11", "--generated-tokens", "2")
    assert data["workload"]["source"].startswith("command line")
    assert 0 < data["ratio"] < 1
    assert [row["op"] for row in data["breakdown"]["layers"]][3] == "skip_block"
    assert data["breakdown"]["layers"][3]["total"] == 0
    kernel = run_json(capsys, "jobs/demo.yaml", "--prompt-tokens", "11", "--generated-tokens", "2",
                      "--attention", "kernel")
    assert kernel["convention"] == {"count": "dense", "attention": "kernel"}
    assert kernel["total_flops"] > data["unplanned"]["total_flops"]


def test_llava_7b_job_offline_uses_the_shipped_config(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = run_json(capsys, "jobs/llava-1.5-7b-vqav2.yaml", "--prompt-tokens", "40", "--generated-tokens", "2",
                    "--plan", "spaces/plans/paper_interval.yaml")
    assert data["shipped_config"] and "config shipped with searchskip" in data["config_source"]
    config = known_config("llava-hf/llava-1.5-7b-hf")
    w = Workload(prompt_tokens=40, generated_tokens=2)
    assert data["total_flops"] == count_flops(config, Plan(layers={6: "skip_block"}), w).total()
    assert data["unplanned"]["total_flops"] == count_flops(config, None, w).total()
    assert data["params"]["total"] == 7_063_427_072
    assert data["params"]["weight_bytes"] == 2 * 7_063_427_072  # float16


def test_llava_7b_job_tables_say_the_config_is_shipped(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["flops", "jobs/llava-1.5-7b-vqav2.yaml", "--prompt-tokens", "40"]) == 0
    out, _ = capsys.readouterr()
    for text in ("config shipped with searchskip", "vision tower", "LLM prefill", "LLM decode", "lm_head",
                 "x the unplanned model", "causal-exact attention", "depth", "parameters",
                 "generated tokens from eval.max_new_tokens (10)"):
        assert text in out, text


def test_llava_7b_job_without_data_or_tokens_names_the_flags(repo_root, capsys, monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["flops", "jobs/llava-1.5-7b-vqav2.yaml"]) == 2
    _, err = capsys.readouterr()
    assert "--prompt-tokens" in err and "Traceback" not in err


def test_bad_plan_and_bad_numbers_exit_2(repo_root, capsys, monkeypatch, write_yaml):
    monkeypatch.chdir(repo_root)
    plan = write_yaml("version: 1\nlayers:\n  12: skip_block\n", name="plan.yaml")
    assert cli.main(["flops", "jobs/demo.yaml", "--plan", str(plan), "--prompt-tokens", "5",
                     "--generated-tokens", "1"]) == 2
    _, err = capsys.readouterr()
    assert f"{plan}: layers.12: `layer < num_layers` must hold" in err
    assert cli.main(["flops", "jobs/demo.yaml", "--prompt-tokens", "5", "--generated-tokens", "0"]) == 2
    _, err = capsys.readouterr()
    assert "--generated-tokens: must be >= 1" in err
