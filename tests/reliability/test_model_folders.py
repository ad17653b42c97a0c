"""Reliability, bad input: damaged, mistyped or inconsistent model folders of every vision-language
family, prompt templates that do not fit the model, images the model's processor refuses, and
text-only models in a VQA job.

Every case copies a tiny model folder of one family (``searchskip.testing.folders.save_tiny_model``:
the family's own classes, tokenizer and processor), damages it in one way, and runs a verb of the CLI
in-process. It must exit with 2, print no traceback, name the file (or the job key) and the rule
(fragments per case), and write nothing under the job's ``outputs``. The classes of faults:

* files: ``config.json`` missing; a JSON file cut short, or holding a list; ``model.safetensors`` cut
  short; the tokenizer's files or the image processor's settings missing
  (``searchskip.model_files``) -- every family, through ``validate``, one family per fault also
  through ``flops`` and ``eval``;
* ``config.json`` values a family does not allow (``searchskip.arch.config_rules``, and the types
  transformers checks);
* processor and config that disagree (``searchskip.processor_check``): a shared setting, the image
  token, the image-token count on the probe images, the tile size; and weights that do not fit the
  config (``eval``);
* ``model.prompt_template`` with no image placeholder, two, or fields other than ``{question}``
  (``validate`` for every family; ``search`` leaves no study folder);
* data images a processor refuses (Qwen-VL: aspect ratio 200 or more), and ``flops --image-size``;
* text-only models in a VQA job.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from searchskip import cli
from searchskip.commands import MAX_LINE

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llava-llama", "llava-next", "llava-onevision", "internvl", "gemma3-vl", "qwen2.5-vl")
"""One family per vision side: fixed CLIP, anyres CLIP, anyres SigLIP, tiles, pooled SigLIP, patch grid."""
PLACEHOLDER = {"llava-llama": "<image>", "llava-next": "<image>", "llava-onevision": "<image>",
               "internvl": "<IMG_CONTEXT>", "gemma3-vl": "<start_of_image>",
               "qwen2.5-vl": "<|vision_start|><|image_pad|><|vision_end|>"}


# --------------------------------------------------------------------------------------
# Folder edits
# --------------------------------------------------------------------------------------


def _load(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


def set_key(name: str, dotted: str, value: Any) -> Callable[[Path], None]:
    """Set ``dotted`` (``a.b``) in the JSON file ``name``; ``...`` deletes it."""
    def edit(folder: Path) -> None:
        data = _load(folder, name)
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
        (folder / name).write_text(json.dumps(data))
    return edit


def image_processor_key(dotted: str, value: Any) -> Callable[[Path], None]:
    """Set a key of the image processor's settings, wherever the folder keeps them."""
    def edit(folder: Path) -> None:
        if (folder / "preprocessor_config.json").is_file():
            set_key("preprocessor_config.json", dotted, value)(folder)
        else:
            set_key("processor_config.json", f"image_processor.{dotted}", value)(folder)
    return edit


def cut(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: max(1, len(data) // 2)] if len(data) > 10 else b"{")
    return edit


def write(name: str, text: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).write_text(text)
    return edit


def delete(*names: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        for name in names:
            (folder / name).unlink(missing_ok=True)
    return edit


def twice_the_tower(key: str) -> Callable[[Path], None]:
    """The image processor's ``key`` (crop or tile size) set to twice the vision tower's image size."""
    def edit(folder: Path) -> None:
        size = _load(folder, "config.json")["vision_config"]["image_size"]
        side = 2 * int(size[0] if isinstance(size, list) else size)
        image_processor_key(key, {"height": side, "width": side})(folder)
    return edit


def no_image_processor(folder: Path) -> None:
    delete("preprocessor_config.json")(folder)
    if (folder / "processor_config.json").is_file():
        set_key("processor_config.json", "image_processor", ...)(folder)


def text_key(dotted: str, value: Any) -> Callable[[Path], None]:
    return set_key("config.json", f"text_config.{dotted}", value)


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    family: str
    edit: Callable[[Path], None] | None
    expect: list[str]
    verb: str = "validate"
    job: dict = field(default_factory=dict)
    """Keys of the job's ``model`` section to set."""
    odd_images: bool = False


FILE_FAULTS = [
    ("no-config", delete("config.json"), ["no config.json"]),
    ("config-cut", cut("config.json"), ["config.json is not valid JSON"]),
    ("processor-config-list", write("processor_config.json", "[1, 2]"), ["processor_config.json",
                                                                          "must hold a JSON object"]),
    ("tokenizer-config-cut", cut("tokenizer_config.json"), ["tokenizer_config.json", "not valid JSON"]),
    ("no-tokenizer", delete("tokenizer.json"), ["tokenizer files are missing"]),
    ("weights-cut", cut("model.safetensors"), ["model.safetensors", "not a whole safetensors file"]),
    ("no-weights", delete("model.safetensors"), ["model.safetensors is missing", "no weights"]),
    ("no-image-processor", no_image_processor, ["preprocessor_config.json is missing"]),
]

CASES: list[Case] = []
for _i, (_name, _edit, _expect) in enumerate(FILE_FAULTS):
    for _family in FAMILIES:
        CASES.append(Case(f"{_name}-{_family}", _family, _edit, _expect))
    _family = FAMILIES[_i % len(FAMILIES)]  # each fault through the other verbs too, families in turn
    CASES += [Case(f"{_name}-{_family}-{verb}", _family, _edit, _expect, verb=verb) for verb in ("flops", "eval")
              if not (_name == "no-weights" and verb == "flops")]  # flops reads no weights

CONFIG_RULES = [
    ("gemma3-vl", "mm0", set_key("config.json", "mm_tokens_per_image", 0), ["`mm_tokens_per_image`", "square"]),
    ("gemma3-vl", "mm-neg", set_key("config.json", "mm_tokens_per_image", -4), ["`mm_tokens_per_image`"]),
    ("gemma3-vl", "mm-null", set_key("config.json", "mm_tokens_per_image", None), ["`mm_tokens_per_image`"]),
    ("gemma3-vl", "mm-str", set_key("config.json", "mm_tokens_per_image", "x"), ["config.json", "mm_tokens_per_image"]),
    ("gemma3-vl", "mm-float", set_key("config.json", "mm_tokens_per_image", 16.0), ["config.json",
                                                                                  "mm_tokens_per_image"]),
    ("gemma3-vl", "mm-15", set_key("config.json", "mm_tokens_per_image", 15), ["`mm_tokens_per_image`"]),
    ("gemma3-vl", "mm-grid", set_key("config.json", "mm_tokens_per_image", 9), ["`mm_tokens_per_image`",
                                                                               "must divide"]),
    ("internvl", "ratio-0", set_key("config.json", "downsample_ratio", 0), ["config.json", "downsample_ratio"]),
    ("internvl", "ratio-null", set_key("config.json", "downsample_ratio", None), ["config.json", "downsample_ratio"]),
    ("internvl", "ratio-str", set_key("config.json", "downsample_ratio", "abc"), ["config.json", "downsample_ratio"]),
    ("internvl", "ratio-1.5", set_key("config.json", "downsample_ratio", 1.5), ["`downsample_ratio`", "1/k"]),
    ("internvl", "ratio-0.3", set_key("config.json", "downsample_ratio", 0.3), ["`downsample_ratio`", "1/k"]),
    ("llava-onevision", "aspect-int", set_key("config.json", "vision_aspect_ratio", 7), ["vision_aspect_ratio"]),
    ("llava-onevision", "aspect-null", set_key("config.json", "vision_aspect_ratio", None), ["vision_aspect_ratio"]),
    ("llava-onevision", "aspect-weird", set_key("config.json", "vision_aspect_ratio", "weird"),
     ["vision_aspect_ratio", "anyres_max_N"]),
    ("llava-onevision", "aspect-0", set_key("config.json", "vision_aspect_ratio", "anyres_max_0"),
     ["vision_aspect_ratio", "anyres_max_N"]),
    ("llava-onevision", "pinpoints-empty", set_key("config.json", "image_grid_pinpoints", []),
     ["`image_grid_pinpoints`", "non-empty"]),
    ("llava-next", "pinpoints-zero", set_key("config.json", "image_grid_pinpoints", [[0, 32]]),
     ["`image_grid_pinpoints`"]),
    ("llava-next", "pinpoints-odd", set_key("config.json", "image_grid_pinpoints", [[33, 32], [32, 65]]),
     ["`image_grid_pinpoints`", "multiple"]),
    ("gemma3-vl", "window-neg", text_key("sliding_window", -5), ["`text_config.sliding_window`", "positive"]),
    ("gemma3-vl", "window-0", text_key("sliding_window", 0), ["`text_config.sliding_window`", "positive"]),
    ("llava-llama", "image-size-0", set_key("config.json", "vision_config.image_size", 0),
     ["`vision_config.image_size`", "positive"]),
]
CASES += [Case(f"config-{name}-{family}", family, edit, expect) for family, name, edit, expect in CONFIG_RULES]
CASES += [Case(f"config-{name}-{family}-{verb}", family, edit, expect, verb=verb)
          for family, name, edit, expect in CONFIG_RULES[::5] for verb in ("flops", "eval")]

AGREEMENT = [
    ("llava-onevision", "aspect", set_key("processor_config.json", "vision_aspect_ratio", "anyres_max_1"),
     ["config.json `vision_aspect_ratio`", "differs from the processor's"]),
    ("llava-onevision", "aspect-weird", set_key("processor_config.json", "vision_aspect_ratio", "weird"),
     ["config.json `vision_aspect_ratio`", "differs from the processor's"]),
    ("llava-onevision", "pinpoints", set_key("config.json", "image_grid_pinpoints", [[32, 32], [32, 96], [96, 32]]),
     ["`image_grid_pinpoints`", "differs"]),
    ("gemma3-vl", "seq-length", set_key("processor_config.json", "image_seq_length", 9),
     ["`mm_tokens_per_image`", "image_seq_length"]),
    ("internvl", "seq-length", set_key("processor_config.json", "image_seq_length", 9),
     ["image tokens in the prompt", "image features"]),
    ("internvl", "tile", twice_the_tower("size"), ["-pixel images", "vision_config.image_size"]),
    ("llava-llama", "crop", twice_the_tower("crop_size"), ["-pixel images", "vision_config.image_size"]),
    ("internvl", "image-token-oov", set_key("config.json", "image_token_id", 5000), ["`image_token_id`",
                                                                                  "vocabulary size"]),
    ("qwen2.5-vl", "image-token-other", set_key("config.json", "image_token_id", 3),
     ["`image_token_id` (3) is not the id of the processor's image token"]),
    ("gemma3-vl", "bad-size", image_processor_key("size", {"height": 0, "width": 16}),
     ["its processor fails on a"]),
    ("llava-onevision", "bad-size", image_processor_key("size", {"height": 0, "width": 16}),
     ["its processor fails on a"]),
]
CASES += [Case(f"agree-{name}-{family}", family, edit, expect) for family, name, edit, expect in AGREEMENT]
CASES += [Case(f"agree-{name}-{family}-{verb}", family, edit, expect, verb=verb)
          for family, name, edit, expect in AGREEMENT[::3] for verb in ("flops", "eval")]
CASES += [  # weights saved for one setting, config.json changed: the processor agrees, the weights do not
    Case("weights-ffn-llava-llama-eval", "llava-llama", text_key("intermediate_size", 48),
         ["its weights do not fit its config.json"], verb="eval"),
    Case("weights-ffn-gemma3-vl-eval", "gemma3-vl", text_key("intermediate_size", 48),
         ["its weights do not fit its config.json"], verb="eval"),
]

TEMPLATES = [
    ("none", "Question: {question} Answer:", ["model.prompt_template", "exactly once", "0 times"]),
    ("two", "{P} {P} {question}", ["model.prompt_template", "exactly once", "2 times"]),
    ("other-field", "{P} {question} {other}", ["model.prompt_template", "{other}", "only field"]),
    ("lone-brace", "{P} {question} {", ["model.prompt_template", "Single '{'"]),
    ("positional", "{P} {question} {0}", ["model.prompt_template", "{0}"]),
]
for _name, _template, _expect in TEMPLATES:
    for _family in FAMILIES:
        _text = _template.replace("{P}", PLACEHOLDER[_family].replace("{", "{{").replace("}", "}}"))
        CASES.append(Case(f"template-{_name}-{_family}", _family, None, _expect, job={"prompt_template": _text}))
CASES += [Case(f"template-none-{family}-{verb}", family, None, TEMPLATES[0][2], verb=verb,
               job={"prompt_template": TEMPLATES[0][1]}) for family, verb in
          (("gemma3-vl", "eval"), ("internvl", "flops"), ("llava-onevision", "search"))]

CASES += [
    Case("data-aspect-qwen2.5-vl-eval", "qwen2.5-vl", None, ["data.splits.validation", "question",
                                                            "1x2000 image", "aspect ratio"], verb="eval",
         odd_images=True),
    Case("data-aspect-qwen2.5-vl-search", "qwen2.5-vl", None, ["data.splits.validation", "1x2000 image"],
         verb="search", odd_images=True),
    Case("image-size-aspect-qwen2.5-vl", "qwen2.5-vl", None, ["--image-size", "aspect ratio"],
         verb="flops --image-size 1x2000"),
]
for _text in ("gemma2", "gemma3", "phi3", "qwen3"):
    CASES += [Case(f"text-only-{_text}-{verb}", _text, None, ["text-only model", "vision-language model"], verb=verb)
              for verb in ("validate", "eval")]


# --------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------


def _images(odd: bool) -> list:
    from PIL import Image

    sizes = [(1, 2000), (32, 32)] if odd else [(16, 16), (32, 32)]
    return [Image.new("RGB", size, color) for size, color in zip(sizes * 2, ["red", "green", "blue", "red"])]


def _vqa(folder: Path, odd: bool) -> Path:
    import datasets

    def split(offset: int):
        images = _images(odd)
        return datasets.Dataset.from_dict({
            "question_id": [str(offset + i) for i in range(len(images))],
            "image_id": [str(offset + i) for i in range(len(images))],
            "image": images, "question": ["what color is the shape?"] * len(images),
            "answers": [["red"]] * len(images),
        }).cast_column("image", datasets.Image())

    datasets.DatasetDict({"train": split(0), "validation": split(100), "test": split(200)}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Callable[[str], Path]:
    """A saved tiny model folder per family, made once on first use."""
    root = tmp_path_factory.mktemp("models")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            from searchskip.testing.folders import save_tiny_model
            from searchskip.testing.families import TEXT_FAMILIES

            if family in TEXT_FAMILIES:
                from searchskip.testing.models import tiny_model

                made[family] = root / family
                tiny_model(family, num_layers=4).save_pretrained(made[family])
            else:
                made[family] = save_tiny_model(family, root / family)
        return made[family]

    return get


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("vqa")
    return {odd: _vqa(root / ("odd" if odd else "plain"), odd) for odd in (False, True)}


def _job(folder: Path, model: Path, data: Path, model_keys: dict) -> Path:
    job = {
        "name": "bad",
        "model": {"id": str(model), "dtype": "float32", "device": "cpu", **model_keys},
        "data": {"source": "disk", "path": str(data),
                 "splits": {"train": "train", "validation": "validation", "test": "test"},
                 "validation_subset": {"size": None, "seed": 0}},
        "eval": {"batch_size": 2, "max_new_tokens": 2},
        "outputs": str(folder / "outputs"),
        "search": {"space": str(Path(__file__).resolve().parents[2] / "spaces/joint.yaml"),
                   "budget": {"flops_ratio": 0.9}, "trials": 1, "seed": 0},
    }
    path = folder / "jobs" / "job.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_model_folder_exits_2_naming_file_and_rule(case: Case, sources, data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(sources(case.family), model)
    if case.edit is not None:
        case.edit(model)
    job = _job(tmp_path, model, data[case.odd_images], case.job)
    verb, *flags = case.verb.split()
    args = {"validate": ["validate", str(job)], "flops": ["flops", str(job)],
            "eval": ["eval", str(job), "--limit", "4"], "search": ["search", str(job), "--no-progress"]}[verb]
    rc = cli.main(args + flags)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    for fragment in case.expect:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "outputs").exists(), sorted(p.name for p in (tmp_path / "outputs").rglob("*"))
    assert max(len(line) for line in err.splitlines()) <= MAX_LINE


def test_every_family_of_a_vision_side_is_covered():
    from searchskip.testing.families import MULTIMODAL_FAMILIES

    assert set(FAMILIES) <= set(MULTIMODAL_FAMILIES)
    kinds = {c.id.split("-")[0] for c in CASES}
    assert kinds == {"no", "config", "processor", "tokenizer", "weights", "agree", "template", "data", "image",
                     "text"}, kinds
    assert len(CASES) >= 150, len(CASES)


def test_the_tiny_folders_pass_every_check(sources, data, tmp_path, capsys):
    """The undamaged folders are OK: the checks refuse only what is wrong."""
    for family in FAMILIES:
        job = _job(tmp_path / family, sources(family), data[False], {})
        assert cli.main(["validate", str(job)]) == 0, capsys.readouterr().err
        assert cli.main(["flops", str(job), "--json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
