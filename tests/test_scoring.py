"""Every verb scores a model the same way: ``searchskip eval`` of an export (its ``finetune.yaml``,
whose ``model.id`` is the export's ``model/`` folder) gives the accuracy the export's own check
measured, with the export's runtime plan and prompt template (issue 15, item 4). The fine-tune's
reports are checked against ``eval`` in ``tests/test_finetune.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from searchskip.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "searchskip/zoo/weights/tiny-llava-easyvqa"
QUESTIONS = 32


def small_job(folder: Path) -> Path:
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(folder / "out")
    data["data"]["validation_subset"]["size"] = QUESTIONS
    data["eval"]["batch_size"] = 16
    data["search"]["space"] = str(REPO / "spaces/per-layer.yaml")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def eval_json(job: Path, capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(job), "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(("plan", "plain"), [
    pytest.param({0: {"op": "skip_attn", "scope": "generated"}}, False, id="runtime-plan"),  # needs searchskip
    pytest.param({0: "skip_attn"}, True, id="baked-runtime-plan"),  # runtime plan, and zeroed in the weights
    pytest.param({3: "skip_block", 4: "skip_block", 5: "skip_block", 6: "skip_block"}, True, id="block-only"),
])
def test_eval_of_an_export_scores_like_its_check(tmp_path, capsys, plan, plain):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({"version": 1, "layers": plan}))
    out = tmp_path / "exp"
    assert main(["export", "--job", str(small_job(tmp_path)), "--plan", str(plan_file), "--out", str(out),
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    check = metrics["export_check"]
    assert check["same_answers"] == check["questions"] == QUESTIONS
    assert metrics["model_dir"]["plain_transformers"] is plain
    scored = eval_json(out / "finetune.yaml", capsys)  # the recipe's model.id is the export's model/
    assert scored["n"] == QUESTIONS
    assert scored["accuracy"] == check["accuracy_export"] == check["accuracy_planned"]


def exported_folder(tmp_path: Path, runtime_plan: dict | None, template: str | None) -> Path:
    """The embedded model's files as an export's ``model/`` folder with the given record."""
    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED, folder)
    record = {"format": 1, "runtime_plan": runtime_plan, "plain_transformers": runtime_plan is None,
              "prompt_template": template, "source_model": "embedded:tiny-llava-easyvqa"}
    (folder / "searchskip_export.json").write_text(json.dumps(record))
    return folder


def test_load_model_uses_the_exports_template_and_runtime_plan(tmp_path):
    from searchskip.apply import applied_plan
    from searchskip.config.job import ModelSpec
    from searchskip.eval.prompts import LLAVA_15
    from searchskip.models import load_model

    folder = exported_folder(tmp_path, {"version": 1, "layers": {"2": "skip_ffn"}}, "Q: <image> {question} A:")
    loaded = load_model(ModelSpec(id=str(folder)))
    assert loaded.template == "Q: <image> {question} A:"
    assert applied_plan(loaded.model).plan.op_for(2).op == "skip_ffn"
    override = load_model(ModelSpec(id=str(folder), prompt_template=LLAVA_15))  # the job's template wins
    assert override.template == LLAVA_15


@pytest.mark.parametrize("name", ["llava-1.5-vqa", "llava-1.5"])
def test_a_named_prompt_template_is_the_template_it_names(tmp_path, name):
    from searchskip.config.job import ModelSpec
    from searchskip.eval.prompts import LLAVA_15, LLAVA_15_VQA
    from searchskip.models import load_model

    folder = exported_folder(tmp_path, None, "Q: <image> {question} A:")
    loaded = load_model(ModelSpec(id=str(folder), prompt_template=name))
    assert loaded.template == {"llava-1.5-vqa": LLAVA_15_VQA, "llava-1.5": LLAVA_15}[name]
    assert LLAVA_15_VQA == "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"


def test_a_plan_on_top_of_an_exports_runtime_plan_is_refused(tmp_path, capsys):
    folder = exported_folder(tmp_path, {"version": 1, "layers": {"0": "skip_attn"}}, None)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: t\nmodel: {{id: {folder}}}\noutputs: {tmp_path / 'out'}\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nlayers: {3: skip_ffn}\n")
    capsys.readouterr()
    assert main(["eval", str(job), "--limit", "2", "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert str(plan) in err and "runs its own runtime plan" in err and "Traceback" not in err
