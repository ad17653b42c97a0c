"""The fine-tune recipe (``finetune.yaml``) and ``searchskip finetune`` on the embedded model.

The real runs train the tiny embedded LLaVA for one short epoch (16 steps of 16 questions) on
one CPU thread: a few seconds each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from searchskip import cli
from searchskip.config.loader import job_from_data, load_job
from searchskip.errors import ConfigError
from searchskip.export.recipe import RECIPE_FILE, render_recipe, write_recipe
from searchskip.zoo import embedded_model, embedded_names

pytestmark = pytest.mark.usefixtures("one_thread")

# Skipping layer 0 (and 3-5) hurts the tiny model badly (loss ~7), so one epoch visibly recovers.
PLAN = {"version": 1, "layers": {0: "skip_block", 3: "skip_block", 4: "skip_block", 5: "skip_block"}}
# lr 5e-3 instead of the paper's 2e-4: 16 steps of a 128x128 projector need a larger step to move.
FINETUNE = {"train_limit": 256, "eval_limit": 128, "lr": 5e-3, "batch_size": 16, "checkpoint_every": 4}


def _job(tmp: Path, name: str = "ft", **finetune) -> "object":
    return job_from_data({"name": name, "outputs": str(tmp / "outputs"),
                          "finetune": {**FINETUNE, "out": str(tmp / name), **finetune}}, None)


def _planned_model(job):
    from searchskip.apply import apply
    from searchskip.models import load_model
    from searchskip.plan import Plan

    loaded = load_model(job.model)
    apply(loaded.model, Plan.from_dict(PLAN))
    return loaded


def _projector(model) -> dict:
    return {n: p.detach().clone() for n, p in model.model.multi_modal_projector.named_parameters()}


# --------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["projector", "lora"])
def test_recipe_is_a_valid_job_from_any_directory(repo_root, tmp_path, monkeypatch, method):
    job = load_job(repo_root / "jobs" / "demo.yaml")
    export = tmp_path / "export"
    shutil.copytree(embedded_model(embedded_names()[0]).path, export / "model")  # validate reads the folder
    path = write_recipe(job, export, "layers 3, 5: skip_block", method=method)
    assert path == export / RECIPE_FILE
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert f"searchskip finetune {export.absolute() / RECIPE_FILE}" in header
    assert "plan: layers 3, 5: skip_block" in header
    for needle in ("train split: train", "epochs: 1", "batch size: 16", "evaluation split: test", "LLM"):
        assert needle in header
    assert ("method: lora" in header) == (method == "projector")  # the hint to switch
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the cwd: the recipe's are absolute
    recipe = load_job(path)
    assert recipe.model.id == str(export.absolute() / "model")
    assert recipe.finetune is not None and recipe.finetune.method == method
    assert recipe.finetune.lr == 2e-4 and recipe.finetune.schedule == "cosine"
    assert recipe.finetune.out == str(export.absolute() / "finetune")
    assert (recipe.finetune.lora is not None) == (method == "lora")
    assert recipe.data == job.data and recipe.eval == job.eval and recipe.search is None
    assert cli.main(["validate", str(path)]) == 0


def test_recipe_keeps_the_prompt_template(repo_root, tmp_path):
    job = load_job(repo_root / "jobs" / "demo.yaml")
    job = dataclasses.replace(job, model=dataclasses.replace(job.model, prompt_template="Q: <image>\n{question} A:"))
    data = yaml.safe_load(render_recipe(job, tmp_path, "no change"))
    assert data["model"]["prompt_template"] == "Q: <image>\n{question} A:"


def test_schema_errors_are_reported_together(write_yaml, capsys):
    path = write_yaml("""
        name: bad
        finetune:
          metod: lora
          method: lorra
          epochs: 0
          eval_split: train
          lora: {r: 0}
    """)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    rules = {p.key: p.rule for p in info.value.problems}
    assert "did you mean 'method'" in rules["finetune.metod"]
    assert "did you mean 'lora'" in rules["finetune.method"]
    assert "epochs >= 1" in rules["finetune.epochs"]
    assert "r >= 1" in rules["finetune.lora.r"]
    assert "must differ from finetune.train_split" in rules["finetune.eval_split"]
    assert cli.main(["validate", str(path)]) == 2


def test_lora_section_needs_method_lora(write_yaml):
    path = write_yaml("""
        name: bad
        finetune: {method: projector, lora: {r: 4}}
    """)
    with pytest.raises(ConfigError, match=r"finetune\.lora: is only used with `finetune.method: lora`"):
        load_job(path)


def test_finetune_verb_refuses_a_job_without_the_section(repo_root, capsys):
    assert cli.main(["finetune", str(repo_root / "jobs" / "demo.yaml")]) == 2
    assert "has no `finetune:` section" in capsys.readouterr().err


def test_lr_at_warmup_cosine_constant_and_floor():
    import math

    from searchskip.finetune import lr_at

    # linear warm-up over 4 steps to the peak, whatever the schedule
    for schedule in ("cosine", "constant"):
        assert [lr_at(s, 20, 4, 1.0, schedule) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine: the peak right after the warm-up, half way down at the middle, 0 at (and past) the end
    assert lr_at(4, 20, 4, 2.0) == pytest.approx(2.0)
    assert lr_at(12, 20, 4, 2.0) == pytest.approx(1.0)
    assert lr_at(20, 20, 4, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(25, 20, 4, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(8, 20, 4, 2.0) == pytest.approx(1.0 + math.cos(math.pi / 4))
    decay = [lr_at(s, 20, 4, 2.0) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True)
    # constant: the peak after the warm-up
    assert [lr_at(s, 20, 4, 2.0, "constant") for s in (4, 12, 19, 30)] == [2.0] * 4
    # floor: the cosine ends at floor * peak instead of 0; the warm-up is unchanged
    assert lr_at(20, 20, 4, 2.0, floor=0.05) == pytest.approx(0.1)
    assert lr_at(12, 20, 4, 2.0, floor=0.05) == pytest.approx(2.0 * (0.05 + 0.95 * 0.5))
    assert lr_at(4, 20, 4, 2.0, floor=0.05) == pytest.approx(2.0)
    assert lr_at(1, 20, 4, 2.0, floor=0.05) == lr_at(1, 20, 4, 2.0) == 1.0
    # no warm-up
    assert lr_at(0, 10, 0, 3.0) == pytest.approx(3.0)


# --------------------------------------------------------------------------------------
# Real runs on the embedded model
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def projector_run(tmp_path_factory, one_thread):
    """One uninterrupted 1-epoch projector fine-tune with the plan active."""
    from searchskip.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("ft")
    job = _job(tmp)
    loaded = _planned_model(job)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = run_finetune(job, loaded=loaded, progress=False)
    return job, loaded, before, result


def test_projector_finetune_recovers_and_trains_only_the_projector(projector_run):
    job, loaded, before, result = projector_run
    losses = result.losses
    assert len(losses) == result.steps == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5  # ~6.9 -> ~5.3 on this plan
    changed = {n for n, p in loaded.model.named_parameters() if not torch_equal(before[n], p)}
    assert changed and all(".multi_modal_projector." in n or n.startswith("model.multi_modal_projector") for n in changed)
    assert len(changed) == len(list(loaded.model.model.multi_modal_projector.parameters()))
    # the plan is applied again after saving, as it was given
    from searchskip.apply import applied_plan

    assert applied_plan(loaded.model) is not None and applied_plan(loaded.model).plan.to_dict()["layers"]


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_finetune_writes_the_model_and_metrics(projector_run):
    from searchskip.apply import applied_plan
    from searchskip.export.load import load_compressed
    from searchskip.export.model import read_export_info

    job, loaded, _, result = projector_run
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics == result.metrics
    for key in ("accuracy_before", "accuracy_after", "per_question_type", "steps", "seconds", "method"):
        assert key in metrics
    assert metrics["method"] == "projector" and metrics["steps"] == 16 and metrics["eval_questions"] == 128
    assert 0.0 <= metrics["accuracy_before"] <= 1.0 and 0.0 <= metrics["accuracy_after"] <= 1.0
    assert set(metrics["per_question_type"]) == {"before", "after"}
    info = read_export_info(result.model_dir)
    assert info["runtime_plan"]["layers"] == {str(k): v for k, v in PLAN["layers"].items()}
    assert info["source_model"] == job.model.id
    reloaded = load_compressed(str(result.model_dir))
    assert applied_plan(reloaded.model).plan.key() == applied_plan(loaded.model).plan.key()
    for name, value in _projector(loaded.model).items():
        assert torch_equal(value, dict(reloaded.model.model.multi_modal_projector.named_parameters())[name])
    assert (result.out / "checkpoints").is_dir()


def test_eval_of_the_finetuned_model_scores_like_its_report(projector_run, tmp_path, capsys):
    """`searchskip eval` of the recovered model/ (its runtime plan and prompt template) gives the
    accuracy the fine-tune reported on the same questions (issue 15, item 4)."""
    _, _, _, result = projector_run
    job = tmp_path / "eval.yaml"
    job.write_text(yaml.safe_dump({"name": "ev", "model": {"id": str(result.model_dir)},
                                   "outputs": str(tmp_path / "outputs")}))
    capsys.readouterr()
    assert cli.main(["eval", str(job), "--split", result.metrics["eval_split"],
                     "--limit", str(result.metrics["eval_questions"]), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["n"] == result.metrics["eval_questions"] == FINETUNE["eval_limit"]
    assert scored["accuracy"] == result.metrics["accuracy_after"]


def test_interrupted_run_resumes_to_the_same_weights(projector_run, tmp_path):
    """Stop after 6 steps (Ctrl-C), resume: the final projector is bit-identical to the
    uninterrupted run's (same batches, optimizer state and RNG; one thread on the CPU)."""
    from searchskip.finetune import run_finetune

    _, reference, _, ref_result = projector_run
    job = _job(tmp_path, name="resumed")

    def stop(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(job, loaded=_planned_model(job), progress=False, on_step=stop)
    steps = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-4", "step-6"]

    changed = dataclasses.replace(job, finetune=dataclasses.replace(job.finetune, lr=1e-3))
    with pytest.raises(ConfigError, match=r"finetune\.lr: the checkpoint .* was written with lr=0\.005"):
        run_finetune(changed, loaded=_planned_model(job), progress=False)

    loaded = _planned_model(job)
    result = run_finetune(job, loaded=loaded, progress=False)
    assert result.resumed_from == 6 and result.steps == 16
    assert result.losses == ref_result.losses
    final, expected = _projector(loaded.model), _projector(reference.model)
    assert all(torch_equal(final[n], expected[n]) for n in expected)
    assert result.metrics["accuracy_before"] == ref_result.metrics["accuracy_before"]
    assert result.metrics["accuracy_after"] == ref_result.metrics["accuracy_after"]


def test_projector_finetune_with_image_tokens_frozen(repo_root, tmp_path):
    """A plan that freezes the image tokens (scope visual) in most layers trains the projector:
    its gradient reaches the image positions through the layers that still compute them and
    through the K/V the text attends to at the frozen ones; the saved runtime plan keeps the scope."""
    import math

    from searchskip.apply import apply
    from searchskip.export.model import read_export_info
    from searchskip.finetune import run_finetune
    from searchskip.models import load_model
    from searchskip.plan import Plan

    plan = Plan.load(repo_root / "spaces/plans/visual_scope.yaml")
    job = _job(tmp_path, name="visual", train_limit=32, eval_limit=16)
    loaded = load_model(job.model)
    apply(loaded.model, plan)
    before = _projector(loaded.model)
    result = run_finetune(job, loaded=loaded, progress=False)
    assert result.steps == 2 and all(math.isfinite(loss) for loss in result.losses)
    after = _projector(loaded.model)
    assert all(not torch_equal(before[n], after[n]) for n in before)
    assert Plan.from_json(json.dumps(read_export_info(result.model_dir)["runtime_plan"])) == plan


def test_lora_merges_and_keeps_pruned_zeros(tmp_path):
    import torch

    from searchskip.finetune import run_finetune

    job = _job(tmp_path, name="lora", method="lora", train_limit=32, eval_limit=16, lr=1e-3)
    loaded = _planned_model(job)
    up = loaded.model.model.language_model.layers[1].mlp.up_proj
    with torch.no_grad():
        up.weight[:, ::2] = 0  # as a pruned export would have
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = run_finetune(job, loaded=loaded, progress=False)
    model = loaded.model
    assert result.steps == 2 and result.metrics["lora_modules_merged"] == 8 * 7
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert type(model.model.language_model.layers[1].mlp.up_proj) is torch.nn.Linear
    assert bool((model.model.language_model.layers[1].mlp.up_proj.weight[:, ::2] == 0).all())
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    changed = {n for n in before if not torch_equal(before[n], after[n])}
    assert changed and all(".language_model.layers." in n for n in changed)
    assert not any("projector" in n or "vision" in n for n in changed)
    saved = json.loads((result.model_dir / "searchskip_export.json").read_text())
    assert saved["finetune"]["method"] == "lora"


def test_cli_runs_an_export_recipe(projector_run, tmp_path, capsys):
    """`searchskip finetune <export>/finetune.yaml` on a model folder written in the export format:
    load_compressed applies its runtime plan; --json prints the metrics."""
    from searchskip.commands import finetune as verb

    job, _, _, result = projector_run
    export = tmp_path / "export"
    shutil.copytree(result.model_dir, export / "model")
    path = write_recipe(job, export, "layers 0, 3, 4, 5: skip_block")
    data = yaml.safe_load(path.read_text())
    data["finetune"].update(train_limit=32, eval_limit=16)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code = verb.run(argparse.Namespace(job=str(path), restart=False, json=True, no_progress=True))
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["steps"] == 2 and metrics["method"] == "projector"
    assert metrics["runtime_plan"]["layers"] == {str(k): v for k, v in PLAN["layers"].items()}
    assert (export / "finetune" / "model" / "searchskip_export.json").is_file()
    assert (export / "finetune" / "metrics.json").is_file()
