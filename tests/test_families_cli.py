"""Every vision-language family through the CLI, on a tiny random-weight model saved as a folder.

For each family of :data:`FAMILIES_CLI` (``searchskip.testing.folders.save_tiny_model``: the
family's own classes, tokenizer and processor, built from configs, no downloads) and a small
VQA set on disk whose images come in three sizes: ``validate``, ``flops`` (the workload per
image size), ``eval``, ``search`` (a budget that holds for every image size), ``export`` (its
check, ``load_compressed``, plain ``from_pretrained`` for a block-only plan) and ``finetune``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from searchskip import cli
from searchskip.testing import ANYRES_FAMILIES, QWEN_VL_FAMILIES, TILED_FAMILIES, row_inputs, tiny_inputs
from searchskip.testing.families import GEMMA3_VL_FAMILIES
from searchskip.testing.folders import save_tiny_model

from helpers import load_study  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
FAMILIES_CLI = QWEN_VL_FAMILIES + ANYRES_FAMILIES + TILED_FAMILIES + GEMMA3_VL_FAMILIES
SIDES = (16, 32, 48)  # Qwen-VL's tiny processor: 4, 16 and 36 image tokens; LLaVA-NeXT's: 36, 36 and 88
SHAPES = {"llava-next": ([[16, 16], [32, 32], [48, 48]], [36, 36, 88]),
          "llava-onevision": ([[16, 16], [32, 32], [48, 48]], [36, 36, 46]),  # 48 x 48: 2 x 2 tiles shrunk to 5 x 5
          "internvl": ([[1], [5], [10]], [16, 80, 160])}  # 16-pixel tiles: 1, 2 x 2 + thumbnail, 3 x 3 + thumbnail
"""Per family: the image shapes the processor gives the three sizes, and their image tokens."""
QWEN_SHAPES = ([[1, 4, 4], [1, 8, 8], [1, 12, 12]], [4, 16, 36])


def _image(side: int, color: str):
    from PIL import Image

    return Image.new("RGB", (side, side), color)


def _split(n: int, offset: int):
    import datasets

    colors = ["red", "green", "blue", "yellow"]
    rows = {"question_id": [], "image_id": [], "image": [], "question": [], "answers": []}
    for i in range(n):
        side, color = SIDES[i % len(SIDES)], colors[(i // len(SIDES)) % len(colors)]
        rows["question_id"].append(str(offset + i))
        rows["image_id"].append(str(offset + i))
        rows["image"].append(_image(side, color))
        rows["question"].append("what color is the shape?")
        rows["answers"].append([color])
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory) -> Path:
    import datasets

    folder = tmp_path_factory.mktemp("vqa") / "data"
    datasets.DatasetDict({"train": _split(12, 0), "validation": _split(9, 100), "test": _split(6, 200)}
                         ).save_to_disk(str(folder))
    return folder


def _job(folder: Path, model: Path, data: Path, **search) -> Path:
    job = {
        "name": "family",
        "model": {"id": str(model), "dtype": "float32", "device": "cpu"},
        "data": {"source": "disk", "path": str(data),
                 "splits": {"train": "train", "validation": "validation", "test": "test"},
                 "validation_subset": {"size": None, "seed": 0}},
        "eval": {"batch_size": 4, "max_new_tokens": 2},
        "outputs": str(folder / "out"),
        "search": {"space": str(REPO / "spaces/joint.yaml"), "budget": {"flops_ratio": 0.7}, "trials": 4,
                   "seed": 0, **search},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=FAMILIES_CLI)
def family_job(request, tmp_path_factory, vqa_folder):
    folder = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    model = save_tiny_model(request.param, folder / "model")
    return request.param, _job(folder, model, vqa_folder)


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_validate_and_flops_per_image_size(family_job, capsys):
    family, job = family_job
    assert cli.main(["validate", str(job)]) == 0
    capsys.readouterr()
    assert cli.main(["flops", str(job), "--json"]) == 0
    data = _json_out(capsys)
    if family in GEMMA3_VL_FAMILIES:  # fixed resolution: 16 image tokens whatever the size, --image-size refused
        assert not data["workload"].get("variants") and data["workload"]["image_tokens"] == 16
        assert cli.main(["flops", str(job), "--image-size", "100x20"]) == 2
        assert "--image-size: applies to models that take images at their own resolution" in capsys.readouterr().err
        return
    variants = data["workload"]["variants"]
    shapes, tokens = SHAPES.get(family, QWEN_SHAPES)
    assert [v["image_shape"] for v in variants] == shapes
    assert [round(v["weight"], 6) for v in variants] == [round(1 / 3, 6)] * 3
    assert [v["image_tokens"] for v in data["variants"]] == tokens
    assert data["total_flops"] == pytest.approx(sum(v["total_flops"] for v in data["variants"]) / 3)
    capsys.readouterr()
    assert cli.main(["flops", str(job), "--image-size", "100x20"]) == 0
    out = capsys.readouterr().out
    assert "images of the --image-size shape" in out and "per image size" not in out
    assert cli.main(["flops", str(job)]) == 0
    assert "per image size" in capsys.readouterr().out


def test_eval_search_export_and_finetune(family_job, tmp_path, capsys):
    from searchskip.config.loader import load_job
    from searchskip.export.load import load_compressed
    from searchskip.flops import Budget, Workload, count_flops
    from searchskip.apply import applied_plan
    from searchskip.plan import LayerOp, Plan, VisualTokensSpec

    family, job = family_job
    assert cli.main(["eval", str(job), "--split", "validation"]) == 0
    assert "accuracy" in capsys.readouterr().out

    assert cli.main(["search", str(job), "--no-progress"]) == 0
    capsys.readouterr()
    spec = load_job(job)
    study = Path(spec.outputs) / spec.name
    assert cli.main(["ls", str(study), "--json"]) == 0
    listing = _json_out(capsys)
    feasible = [t for t in listing["trials"] if t["state"] == "COMPLETE" and not t["infeasible"]]
    assert feasible
    # the budget held for every image size of the stored workload, not only for the mean
    optuna_study = load_study(job)
    workload = Workload.from_dict(optuna_study.user_attrs["workload"])
    assert len(workload.variants) == (0 if family in GEMMA3_VL_FAMILIES else 3)
    config = Path(spec.model.id)
    base = count_flops(config, None, workload)
    plans = {t.number: Plan.from_dict(yaml.safe_load(t.user_attrs["plan"])) for t in optuna_study.trials}
    for trial in feasible:
        assert Budget(ratio=0.7).allows(count_flops(config, plans[trial["number"]], workload), base)

    out = tmp_path / "exp"
    assert cli.main(["export", str(study), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "identical answers" in text
    source_class = json.loads((config / "config.json").read_text())["architectures"][0]
    assert type(load_compressed(out / "model").model).__name__ == source_class

    # a projector fine-tune of an export whose layers still read the image (visual scope and token dropping)
    plan = Plan(layers={1: LayerOp("skip_block", "visual"), 3: "skip_ffn"}, visual_tokens=VisualTokensSpec(2, 0.5, "uniform"))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "exp-hand"
    assert cli.main(["export", "--job", str(job), "--plan", str(plan_file), "--out", str(out), "--no-progress"]) == 0
    assert "identical answers" in capsys.readouterr().out
    loaded = load_compressed(out / "model")
    assert applied_plan(loaded.model).plan == plan  # the runtime plan came back with the weights
    recipe = yaml.safe_load((out / "finetune.yaml").read_text())
    recipe["finetune"].update(train_limit=8, eval_limit=6, batch_size=4)
    recipe_path = tmp_path / "finetune.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert cli.main(["finetune", str(recipe_path), "--no-progress"]) == 0
    assert (out / "finetune" / "metrics.json").is_file()
    tuned = load_compressed(out / "finetune" / "model")
    before = dict(loaded.model.named_parameters())
    changed = {n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])}
    # only the projector trained (Qwen-VL: the patch merger, Qwen3-VL: and its DeepStack mergers)
    from searchskip.arch import get_adapter

    projector = {id(p) for p in get_adapter(tuned.model).projector(tuned.model).parameters()}
    assert changed and all(id(p) in projector for n, p in tuned.model.named_parameters() if n in changed)


def test_block_only_export_is_plain_transformers(family_job, tmp_path, capsys):
    """Dropping layers writes a smaller model plain ``from_pretrained`` loads, answering as the planned one."""
    from transformers import AutoModelForImageTextToText

    from searchskip.apply import apply
    from searchskip.config.loader import load_job
    from searchskip.models import load_model
    from searchskip.plan import DropSpec, Plan

    family, job = family_job
    plan = Plan(drop=DropSpec(1, 3))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "exp"
    assert cli.main(["export", "--job", str(job), "--plan", str(plan_file), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_dir"]["plain_transformers"] is True
    assert metrics["model_dir"]["kept_layers"] == [0, 3]

    planned = load_model(load_job(job).model).model
    plain = AutoModelForImageTextToText.from_pretrained(out / "model").eval()
    assert not hasattr(plain, "_searchskip_applied")
    sides = ([32, 64, 32] if family in ANYRES_FAMILIES else [16, 32, 16] if family in TILED_FAMILIES
             else None if family in GEMMA3_VL_FAMILIES else [16, 32, 24])
    inputs = tiny_inputs(planned, batch=3, image_sides=sides)
    with torch.no_grad(), apply(planned, plan):
        want = planned.generate(**inputs, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        got = plain.generate(**inputs, max_new_tokens=3, do_sample=False)
        alone = plain.generate(**row_inputs(inputs, 1), max_new_tokens=3, do_sample=False)
    assert torch.equal(got, want)
    assert torch.equal(alone[0, -3:], got[1, -3:])


def test_an_unsupported_family_gets_one_message_from_every_verb(tmp_path, vqa_folder, capsys):
    """A family searchskip has no adapter for (Gemma 1 here) is refused from its config.json alone,
    before any weight, processor or data is loaded, with the same message by every verb; nothing is written."""
    import transformers as tf

    config = tf.GemmaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0)
    tf.GemmaForCausalLM(config).save_pretrained(tmp_path / "model")  # weights only: no processor
    job = _job(tmp_path, tmp_path / "model", vqa_folder)
    job.write_text(job.read_text() + "finetune:\n  method: projector\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nlayers:\n  1: skip_block\n")
    verbs = {"validate": [str(job)], "flops": [str(job)], "eval": [str(job)], "search": [str(job), "--no-progress"],
             "export": ["--job", str(job), "--plan", str(plan), "--out", str(tmp_path / "exp"), "--no-progress"],
             "finetune": [str(job), "--no-progress"]}
    first_lines = set()
    for verb, argv in verbs.items():
        capsys.readouterr()
        assert cli.main([verb, *argv]) == 2, verb
        captured = capsys.readouterr()
        text = (captured.err or captured.out).strip()
        line = next(x for x in text.splitlines() if "GemmaForCausalLM" in x)
        first_lines.add(line.removeprefix("error: "))
        assert "Qwen2_5_VLForConditionalGeneration" in text  # the supported families are listed
    assert len(first_lines) == 1 and f"{job}: model.id:" in first_lines.pop()
    assert not (tmp_path / "out").exists() and not (tmp_path / "exp").exists()


def test_gemma3_pan_and_scan_is_refused_by_name(tmp_path, vqa_folder, capsys):
    """Pan-and-scan gives some images extra crops (and image tokens) that searchskip neither prices
    nor batches: the job is refused with the setting to change, before any output is written."""
    folder = save_tiny_model("gemma3-vl", tmp_path / "model")
    config_file = folder / "processor_config.json"
    data = json.loads(config_file.read_text())
    data["image_processor"]["do_pan_and_scan"] = True
    config_file.write_text(json.dumps(data))
    job = _job(tmp_path, folder, vqa_folder)
    assert cli.main(["eval", str(job), "--split", "validation"]) == 2
    err = capsys.readouterr().err
    assert "do_pan_and_scan" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
