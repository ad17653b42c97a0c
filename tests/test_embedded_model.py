"""The embedded tiny LLaVA: loads offline from package files, is a real LLaVA, answers easy-VQA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from searchskip.config.job import DataSpec, ModelSpec, SubsetSpec
from searchskip.zoo import embedded_model

WEIGHTS = embedded_model("tiny-llava-easyvqa").path


@pytest.fixture(scope="module")
def loaded():
    from searchskip.models import load_model

    return load_model(ModelSpec())


@pytest.fixture(scope="module")
def validation_rows():
    from searchskip.data.splits import load_split
    from searchskip.data.subset import select_subset

    return select_subset(load_split(DataSpec(), "validation", check_disjoint=False), SubsetSpec(size=96, seed=1))


def test_weights_ship_as_small_safetensors():
    files = {p.name: p.stat().st_size for p in WEIGHTS.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sum(files.values()) <= 25 * 2**20


def test_is_a_real_llava_with_clip_and_llama(loaded):
    from transformers import CLIPVisionModel, LlamaModel, LlavaForConditionalGeneration

    model = loaded.model
    assert type(model) is LlavaForConditionalGeneration
    assert isinstance(model.model.vision_tower, CLIPVisionModel)
    assert isinstance(model.model.language_model, LlamaModel)
    assert len(model.model.language_model.layers) >= 8
    assert not model.training


def test_loads_with_plain_transformers_offline():
    """``from_pretrained`` on the package folder needs neither searchskip nor the network."""
    code = (
        "import sys; from transformers import LlavaForConditionalGeneration, AutoProcessor;"
        f"m = LlavaForConditionalGeneration.from_pretrained({str(WEIGHTS)!r}); AutoProcessor.from_pretrained({str(WEIGHTS)!r});"
        "assert 'searchskip' not in sys.modules; print(m.config.text_config.num_hidden_layers)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) >= 8


def test_answers_easy_vqa_validation_questions(loaded, validation_rows):
    from searchskip.eval.runner import evaluate

    result = evaluate(loaded, validation_rows, batch_size=32, max_new_tokens=2)
    assert result.score.n == 96
    assert result.score.accuracy >= 0.85, result.score.to_dict()
    assert set(result.score.per_question_type) == {"color", "shape", "yes/no color", "yes/no shape"}


def test_generation_is_deterministic_and_batch_independent(loaded, validation_rows):
    """Greedy answers do not depend on the batch size (left padding is handled)."""
    from searchskip.eval.generate import answer_all

    rows = validation_rows.select(range(24))
    assert answer_all(loaded, rows, 24, 2) == answer_all(loaded, rows, 5, 2) == answer_all(loaded, rows, 24, 2)


def test_eval_cli_prints_json(repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "searchskip", "eval", "jobs/demo.yaml", "--limit", "40", "--json"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == 40 and 0.0 <= result["accuracy"] <= 1.0
    assert result["split"] == "validation" and result["per_question_type"]
    assert result["samples_per_s"] > 0


def test_eval_cli_rich_table_on_test_split(repo_root):
    out = subprocess.run(
        [sys.executable, "-m", "searchskip", "eval", "jobs/demo.yaml", "--split", "test", "--limit", "16"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "accuracy per question type" in out.stdout and "samples/s" in out.stdout


def test_eval_cli_bad_limit_is_a_clean_error(repo_root):
    out = subprocess.run([sys.executable, "-m", "searchskip", "eval", "jobs/demo.yaml", "--limit", "0"],
                         cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--limit" in out.stderr and "Traceback" not in out.stderr + out.stdout


def test_eval_cli_scores_a_hand_written_plan(repo_root, tmp_path):
    """The plan is applied, not only echoed: skipping block 0 wrecks the answers of the same questions."""
    plan = tmp_path / "early.yaml"
    plan.write_text("version: 1\nlayers:\n  0: skip_block\n")

    def run(*extra):
        out = subprocess.run([sys.executable, "-m", "searchskip", "eval", "jobs/demo.yaml", "--limit", "40", "--json",
                              *extra], cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    result = run("--plan", str(plan))
    assert result["n"] == 40 and result["plan"]["layers"]
    unplanned = run()
    assert unplanned["n"] == 40 and unplanned["plan"] is None
    assert result["accuracy"] < unplanned["accuracy"] - 0.3, (result["accuracy"], unplanned["accuracy"])


def test_eval_cli_plan_out_of_range_for_the_model(repo_root, tmp_path):
    plan = tmp_path / "far.yaml"
    plan.write_text("version: 1\nlayers:\n  11: skip_block\n")
    out = subprocess.run(
        [sys.executable, "-m", "searchskip", "eval", "jobs/demo.yaml", "--limit", "8", "--plan", str(plan)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert str(plan) in out.stderr and "layers.11" in out.stderr and "8 decoder layers" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_skipping_an_early_block_hurts_more_than_a_late_ffn(loaded, validation_rows):
    """The trained model responds to skipping with structure (the point of the embedded default)."""
    from searchskip.apply import apply
    from searchskip.eval.runner import evaluate
    from searchskip.plan import Plan

    def accuracy(plan):
        with apply(loaded.model, plan):
            return evaluate(loaded, validation_rows, batch_size=48, max_new_tokens=2).score.accuracy

    assert accuracy(Plan(layers={0: "skip_block"})) < accuracy(Plan(layers={7: "skip_ffn"})) - 0.2


def test_wanda_calibration_is_built_once_per_cache(loaded, monkeypatch, repo_root):
    """A search worker calibrates Wanda once per (samples, seed), not once per trial."""
    import searchskip.ops.calibration as calibration
    from searchskip.eval.planned import apply_plan
    from searchskip.config.loader import load_job
    from searchskip.plan import CalibrationSpec, Plan, PruneSpec

    built = []
    real = calibration.calibration_batches
    monkeypatch.setattr(calibration, "calibration_batches", lambda *a, **k: built.append(a[2:4]) or real(*a, **k))
    job = load_job(repo_root / "jobs" / "demo.yaml")
    cache: dict = {}
    for sparsity in (0.2, 0.4):
        plan = Plan(prune=PruneSpec(method="wanda", sparsity=sparsity, calibration=CalibrationSpec(samples=4, seed=1)))
        apply_plan(loaded, job, plan, source="test", calibration_cache=cache).restore()
    assert built == [(4, 1)]
    apply_plan(loaded, job, plan, source="test").restore()  # no cache: built again
    assert built == [(4, 1), (4, 1)]
