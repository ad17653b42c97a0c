"""`searchskip export` end to end on the embedded model: study and hand-written plans, plain
transformers loading, load_compressed, manifest, atomicity, the recipe and bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from searchskip.cli import main
from searchskip.config.loader import load_job
from searchskip.export.atomic import verify_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = 32


def small_job(folder: Path, **search) -> Path:
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(folder / "out")
    data["data"]["validation_subset"]["size"] = QUESTIONS
    data["eval"]["batch_size"] = 16
    data["search"].update({"space": str(REPO / "spaces/per-layer.yaml"), "trials": 8, **search})
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export-study")
    job_file = small_job(folder)
    assert main(["search", str(job_file), "--no-progress"]) == 0
    return folder / "out" / "demo", job_file


def test_best_trial_export_has_every_file_and_verifies(study, capsys):
    study_dir, _ = study
    out = study_dir.parent / "best"
    assert main(["export", str(study_dir), "--out", str(out), "--no-progress"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"plan.yaml", "metrics.json", "model", "finetune.yaml", "report.md", "pareto.png", "manifest.json"} <= names
    assert verify_manifest(out) == []
    metrics = json.loads((out / "metrics.json").read_text())
    check = metrics["export_check"]
    assert check["same_answers"] == check["questions"] == QUESTIONS
    assert metrics["validation"]["accuracy"] == pytest.approx(metrics["search"]["accuracy"])
    assert metrics["flops"]["ratio"] == pytest.approx(metrics["search"]["flops_ratio"])
    assert metrics["flops"]["ratio"] <= 0.8
    recipe = load_job(out / "finetune.yaml")  # the recipe is itself a valid job, pointing at the final folder
    assert Path(recipe.model.id) == out / "model"
    assert "searchskip finetune" in (out / "finetune.yaml").read_text().split("\n\n")[0]
    report = (out / "report.md").read_text()
    assert "## Layer map" in report and "pareto.png" in report
    assert "identical answers" in capsys.readouterr().out


def test_pareto_export_writes_one_folder_per_front_trial(study):
    from searchskip.commands.ls import open_existing
    from searchskip.search.leaderboard import pareto

    study_dir, _ = study
    front = [t.number for t in pareto(open_existing(str(study_dir)))]
    assert main(["export", str(study_dir), "--trial", "pareto", "--no-progress"]) == 0
    written = sorted(p.name for p in (study_dir / "export").iterdir() if not p.name.startswith("."))
    assert written == sorted(f"trial-{n}" for n in front)
    for name in written:
        assert verify_manifest(study_dir / "export" / name) == []


PLAIN_PLANS = {"skip_block.yaml": [0, 1, 2, 4, 6, 7], "skip_ffn.yaml": list(range(8)),
               "skip_attn.yaml": list(range(8))}
"""Plans a plain model runs (blocks removed; sublayer skips for every token zeroed in the weights),
with the layers each export keeps."""


@pytest.mark.parametrize("plan_name", sorted(PLAIN_PLANS))
def test_plain_export_loads_with_plain_transformers_and_answers_like_the_planned_model(tmp_path, plan_name):
    from searchskip.apply import apply
    from searchskip.data.splits import load_eval_split
    from searchskip.eval.generate import answer_batch
    from searchskip.models import load_model
    from searchskip.plan import Plan

    job_file = small_job(tmp_path)
    plan_file = REPO / "spaces/plans" / plan_name
    out = tmp_path / "exp"
    assert main(["export", "--job", str(job_file), "--plan", str(plan_file), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_dir"]["plain_transformers"] is True
    assert metrics["model_dir"]["kept_layers"] == PLAIN_PLANS[plan_name]

    job = load_job(job_file)
    rows = load_eval_split(job.data, "validation").select(range(16))
    loaded = load_model(job.model)
    with apply(loaded.model, Plan.load(plan_file)):
        want = answer_batch(loaded, rows["image"], rows["question"], job.eval.max_new_tokens)
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(rows["image"]):
        image.save(images / f"{i}.png")
    (tmp_path / "questions.json").write_text(json.dumps(list(rows["question"])))
    script = f"""
import json, sys, torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
torch.set_num_threads(1)
folder = {str(out / 'model')!r}
model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
processor = AutoProcessor.from_pretrained(folder)
processor.tokenizer.padding_side = "left"
template = json.load(open(folder + "/searchskip_export.json"))["prompt_template"]
questions = json.load(open({str(tmp_path / 'questions.json')!r}))
images = [Image.open({str(images)!r} + f"/{{i}}.png") for i in range(len(questions))]
inputs = processor(images=images, text=[template.format(question=q) for q in questions], return_tensors="pt", padding=True)
with torch.inference_mode():
    out = model.generate(**inputs, max_new_tokens={job.eval.max_new_tokens}, do_sample=False, num_beams=1,
                         pad_token_id=processor.tokenizer.pad_token_id)
texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
assert not any(m.startswith("searchskip") for m in sys.modules), "searchskip was imported"
print(json.dumps([t.strip() for t in texts]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == want
    # logits, finer than answers: plain loading == the planned model, != the unplanned one
    import torch
    from transformers import LlavaForConditionalGeneration

    from searchskip.eval.generate import prompt_inputs

    inputs = prompt_inputs(loaded, rows["image"][:4], rows["question"][:4])
    plain = LlavaForConditionalGeneration.from_pretrained(out / "model").eval()
    with torch.inference_mode():
        unplanned = loaded.model(**inputs).logits[:, -1]
        with apply(loaded.model, Plan.load(plan_file)):
            planned = loaded.model(**inputs).logits[:, -1]
        got = plain(**inputs).logits[:, -1]
    torch.testing.assert_close(got, planned, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, unplanned, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("plan_name", ["scoped.yaml", "parallel_attn_ffn.yaml", "early_exit.yaml"])
def test_an_export_a_plain_model_cannot_run_is_refused_by_plain_transformers(tmp_path, plan_name):
    """Plain ``from_pretrained`` of a folder whose plan needs hooks must refuse, never build the
    unplanned model of the kept layers; searchskip's own loader loads it."""
    import searchskip
    from transformers import LlavaForConditionalGeneration

    from searchskip.export.held import HELD_WEIGHTS

    job_file = small_job(tmp_path)
    out = tmp_path / "exp"
    assert main(["export", "--job", str(job_file), "--plan", str(REPO / "spaces/plans" / plan_name),
                 "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "model" / "searchskip_export.json").read_text())
    assert info["plain_transformers"] is False and info["weights"] == HELD_WEIGHTS
    assert not (out / "model" / "model.safetensors").exists()
    assert "load_compressed" in (out / "model" / "README.md").read_text()
    with pytest.raises(OSError, match="model.safetensors"):
        LlavaForConditionalGeneration.from_pretrained(out / "model")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["SearchSkipLlavaForConditionalGeneration"]  # a stock server refuses it
    assert searchskip.load_compressed(out / "model").model is not None
    assert verify_manifest(out) == []


def test_sublayer_export_loads_through_load_compressed(tmp_path):
    import searchskip
    from searchskip.apply import applied_plan

    job_file = small_job(tmp_path)
    out = tmp_path / "exp"
    assert main(["export", "--job", str(job_file), "--plan", str(REPO / "spaces/plans/scoped.yaml"),
                 "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_dir"]["plain_transformers"] is False
    assert metrics["model_dir"]["kept_layers"] == [0, 1, 2, 3, 4, 5, 7]  # 6: skip_block for all tokens
    assert metrics["export_check"]["same_answers"] == QUESTIONS
    loaded = searchskip.load_compressed(out / "model")
    runtime = applied_plan(loaded.model).plan
    assert runtime.op_for(5).op == "skip_ffn" and runtime.op_for(5).scope == "prompt"
    stored = json.loads((out / "model" / "searchskip_export.json").read_text())["prompt_template"]
    assert loaded.template == stored == load_model_template(job_file)


def load_model_template(job_file: Path) -> str:
    from searchskip.models import load_model

    return load_model(load_job(job_file).model).template


def _first_export(tmp_path: Path) -> tuple[list[str], Path, str]:
    """Export skip_block.yaml into ``tmp_path/exp``: ``(the export argv, the folder, its manifest text)``;
    ``argv[4]`` is the plan file, for a second export into the same folder."""
    job_file = small_job(tmp_path)
    out = tmp_path / "exp"
    args = ["export", "--job", str(job_file), "--plan", str(REPO / "spaces/plans/skip_block.yaml"),
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return args, out, (out / "manifest.json").read_text()


def _no_leftovers(tmp_path: Path) -> bool:
    """No temporary export folder is left next to ``tmp_path/exp``."""
    return [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")] == []


def test_interrupted_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    import searchskip.export.writer as writer

    args, out, before = _first_export(tmp_path)

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write_report", crash)
    args[4] = str(REPO / "spaces/plans/skip_ffn.yaml")
    assert main(args) == 130
    assert (out / "manifest.json").read_text() == before and verify_manifest(out) == []
    assert _no_leftovers(tmp_path)


def test_export_check_mismatch_exits_2_unless_allowed(tmp_path, monkeypatch, capsys):
    """An exported model that answers differently from the planned source model is an error
    (exit 2, the previous export intact, nothing written) unless --allow-mismatch."""
    import torch

    import searchskip.export.model as export_model

    args, out, before = _first_export(tmp_path)
    capsys.readouterr()

    real_save = export_model.save_compressed

    def perturbed_save(loaded, folder, **kw):
        # zero the outputs of decoder layer 0 (= skipping it): the export now answers very differently
        layer = loaded.model.model.language_model.layers[0]
        with torch.no_grad():
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        return real_save(loaded, folder, **kw)

    monkeypatch.setattr(export_model, "save_compressed", perturbed_save)
    args[4] = str(REPO / "spaces/plans/skip_ffn.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "differently from the planned source model" in err and "Traceback" not in err
    assert (out / "manifest.json").read_text() == before and verify_manifest(out) == []
    assert yaml.safe_load((out / "plan.yaml").read_text())["layers"] == {3: "skip_block", 5: "skip_block"}
    assert _no_leftovers(tmp_path)

    assert main([*args, "--allow-mismatch"]) == 0
    assert verify_manifest(out) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["plan"]["layers"] == {"5": "skip_ffn", "6": "skip_ffn"}
    check = metrics["export_check"]
    assert check["same_answers"] < check["questions"] == QUESTIONS
    assert check["accuracy_export"] < check["accuracy_planned"]


@pytest.mark.parametrize("argv, message", [
    (["--trial", "999"], "no trial 999"),
    (["--trial", "first"], "must be best, pareto or a trial number"),
    (["--job", "x.yaml"], "needs --job JOB.yaml --plan PLAN.yaml --out DIR"),
])
def test_bad_export_arguments_exit_2(study, capsys, argv, message):
    study_dir, _ = study
    assert main(["export", str(study_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_infeasible_trial_is_not_exported(study, capsys):
    from searchskip.commands.ls import open_existing

    import optuna

    from searchskip.plan import Plan

    study_dir, _ = study
    opened = open_existing(str(study_dir))
    infeasible = [t.number for t in opened.get_trials() if t.user_attrs.get("infeasible")]
    if not infeasible:  # the sampler drew no over-budget plan: record one as the search does
        opened.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            user_attrs={"plan": Plan().to_yaml(), "infeasible": True, "flops_ratio": 1.0}))
        infeasible = [t.number for t in opened.get_trials() if t.user_attrs.get("infeasible")]
    assert main(["export", str(study_dir), "--trial", str(infeasible[0])]) == 2
    assert "over the budget" in capsys.readouterr().err


def test_target_vllm_refuses_a_plan_the_plugin_cannot_serve_naming_each_part(tmp_path, capsys):
    out = tmp_path / "exp"
    plan = REPO / "spaces/plans/scoped.yaml"
    assert main(["export", "--job", str(small_job(tmp_path)), "--plan", str(plan), "--out", str(out),
                 "--target", "vllm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(plan) in err and "--target vllm" in err
    for part in ("layers.1: skip_attn for 'generated' tokens", "layers.4: skip_block for 'non_visual' tokens",
                 "layers.5: skip_ffn for 'prompt' tokens"):
        assert part in err, err
    assert not out.exists()


def test_target_vllm_names_the_plugins_classes_and_the_report_says_who_serves(tmp_path):
    out = tmp_path / "exp"
    assert main(["export", "--job", str(small_job(tmp_path)), "--plan", str(REPO / "spaces/plans/skip_ffn.yaml"),
                 "--out", str(out), "--target", "vllm", "--no-progress"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["SearchSkipLlavaForConditionalGeneration"]
    serving = json.loads((out / "metrics.json").read_text())["serving"]
    assert serving == {"plain_transformers_and_stock_vllm": True, "vllm_plugin": True, "vllm_plugin_problems": []}
    assert "Serving: serves with plain transformers and stock vLLM" in (out / "report.md").read_text()
    assert verify_manifest(out) == []
    plain = tmp_path / "plain"  # without the target: the export keeps the stock class
    assert main(["export", "--job", str(small_job(tmp_path)), "--plan", str(REPO / "spaces/plans/early_exit.yaml"),
                 "--out", str(plain), "--no-progress"]) == 0
    serving = json.loads((plain / "metrics.json").read_text())["serving"]
    assert serving["vllm_plugin"] is False and serving["vllm_plugin_problems"] == ["early_exit"]


@pytest.mark.parametrize("target", [(), ("--target", "vllm")])
def test_uneven_ffn_widths_are_recorded_and_target_vllm_names_the_plugin_for_them(tmp_path, target):
    """FFN-channel pruning per layer: the export records each layer's own width (the plugin builds
    it); with ``--target vllm`` the config names the plugin's classes, without it the stock class."""
    out = tmp_path / "exp"
    assert main(["export", "--job", str(small_job(tmp_path)), "--plan", str(REPO / "spaces/plans/prune_ffn_channels.yaml"),
                 "--out", str(out), "--no-progress", *target]) == 0
    info = json.loads((out / "model" / "searchskip_export.json").read_text())
    config = json.loads((out / "model" / "config.json").read_text())
    full = config["text_config"]["intermediate_size"]
    assert info["ffn_widths"][4] == full - round(0.25 * full) and info["ffn_widths"][5] == full - round(0.5 * full)
    assert json.loads((out / "metrics.json").read_text())["model_dir"]["ffn_widths"] == info["ffn_widths"]
    assert config["architectures"] == [("SearchSkip" if target else "") + "LlavaForConditionalGeneration"]
    assert info["plain_transformers"] is True
