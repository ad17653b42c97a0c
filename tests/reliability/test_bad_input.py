"""Reliability, bad input: malformed job, space and plan files, broken data and unsupported models.

Every case runs one command of the CLI in-process (``searchskip.cli.main``) in a fresh
``tmp_path`` (the working directory; the job's ``outputs:`` points into it) and must:

* exit with code 2;
* print, on stderr, the file, the dotted key and the rule (fragments listed per case; a
  multi-problem file lists every problem, reported in one run);
* print no traceback;
* print no line longer than the CLI's limit (a huge value is echoed clipped, not whole);
* write nothing to ``outputs/``, nor anywhere else in its folder (a ``{tmp}`` in a case's command
  line stands for that folder).

Besides files, the table holds command-line options that set what a YAML key sets (``--timeout``,
``--trials``, ``--workers``, ``ls --top``): they are held to the key's rule.

A second group checks that YAML is only ever safe-loaded: no unsafe loader in the package
source, and a ``!!python/object/apply:os.system`` payload in a job, a space and a plan file
is refused (exit 2) and never runs. The last test counts the cases.
"""

from __future__ import annotations

import ast
import io
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from searchskip import cli
from searchskip.commands import MAX_LINE
from searchskip.config.names import NAME_RULE

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "pwned-marker"
PAYLOAD = f"!!python/object/apply:os.system ['touch {MARKER}']"

# A valid job body the cases extend; outputs inside the test folder.
BASE_JOB = "name: t\noutputs: outputs\n"
SEARCH = "search:\n  space: spaces/ok.yaml\n  budget: {flops_ratio: 0.8}\n  trials: 1\n"
OK_SPACE = "version: 1\nkind: per_layer\nops: [keep, skip_block]\n"


# --------------------------------------------------------------------------------------
# Fixture builders (tiny local data and model folders)
# --------------------------------------------------------------------------------------


def _png(color: str = "red") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, ids: list[str], images: list[bytes] | None = None, **extra) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(ids)
    cols = {
        "question_id": [f"q-{i}" for i in ids],
        "image": pa.array(images if images is not None else [_png() for _ in ids], pa.binary()),
        "question": [f"what is {i}?" for i in ids],
        "answers": [["yes"] for _ in ids],
        "image_id": list(ids),
    }
    cols.update(extra)
    if "drop" in extra:
        for name in extra.pop("drop"):
            cols.pop(name)
        cols.pop("drop")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols) if n else pa.table(cols).slice(0, 0), path)


def good_data(tmp: Path) -> None:
    _parquet(tmp / "data" / "val.parquet", ["v1", "v2"])
    _parquet(tmp / "data" / "test.parquet", ["t1", "t2"])


def parquet_job(validation: str = "data/val.parquet", test: str = "data/test.parquet", extra: str = "",
                model: str = "") -> str:
    return (BASE_JOB + model + f"data:\n  source: parquet\n  splits:\n    validation: {validation}\n"
            f"    test: {test}\n" + extra)


def vqav2(tmp: Path, *, missing_image: bool = False, corrupt_image: bool = False) -> str:
    from PIL import Image

    images = tmp / "vq" / "images"
    images.mkdir(parents=True, exist_ok=True)
    qs = [{"image_id": 1, "question": "red?", "question_id": 10}, {"image_id": 2, "question": "blue?", "question_id": 20}]
    anns = [{"question_id": q["question_id"], "image_id": q["image_id"],
             "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)],
             "question_type": "is the", "answer_type": "yes/no", "multiple_choice_answer": "yes"} for q in qs]
    Image.new("RGB", (8, 8), "red").save(images / "COCO_val2014_000000000001.jpg")
    if corrupt_image:
        (images / "COCO_val2014_000000000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    elif not missing_image:
        Image.new("RGB", (8, 8), "blue").save(images / "COCO_val2014_000000000002.jpg")
    Image.new("RGB", (8, 8), "green").save(images / "COCO_val2014_000000000003.jpg")
    (tmp / "vq" / "q.json").write_text(json.dumps({"questions": qs}))
    (tmp / "vq" / "a.json").write_text(json.dumps({"annotations": anns}))
    test_q = [{"image_id": 3, "question": "green?", "question_id": 30}]
    (tmp / "vq" / "tq.json").write_text(json.dumps({"questions": test_q}))
    (tmp / "vq" / "ta.json").write_text(json.dumps({"annotations": [dict(anns[0], question_id=30, image_id=3)]}))
    return (BASE_JOB + "data:\n  source: vqav2_json\n  splits:\n"
            "    validation: {questions: vq/q.json, annotations: vq/a.json, images: vq/images}\n"
            "    test: {questions: vq/tq.json, annotations: vq/ta.json, images: vq/images}\n")


def gpt2_folder(path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(path)


def paligemma_folder(path: Path) -> None:
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(path)  # only the config: `flops` reads no weights


def gemma_llava_folder(path: Path) -> None:
    """A loadable LLaVA (weights, processor) over a Gemma decoder: a family searchskip does not support."""
    import shutil

    from transformers import GemmaConfig, LlavaConfig, LlavaForConditionalGeneration

    from searchskip import zoo

    src = zoo.embedded_model("tiny-llava-easyvqa").path
    path.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(src / name, path / name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"] = GemmaConfig(vocab_size=cfg["text_config"]["vocab_size"], hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                     bos_token_id=2, eos_token_id=3, pad_token_id=0).to_dict()
    cfg["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = LlavaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version")})
    LlavaForConditionalGeneration(config).save_pretrained(path)


def pickle_folder(path: Path) -> None:
    import torch

    path.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({"model_type": "llava"}))


def runtime_plan_export(path: Path) -> None:
    """The embedded model as an export's model/ folder that keeps a runtime plan."""
    import shutil

    shutil.copytree(REPO_ROOT / "searchskip/zoo/weights/tiny-llava-easyvqa", path)
    (path / "searchskip_export.json").write_text(json.dumps(
        {"format": 1, "runtime_plan": {"version": 1, "layers": {"0": "skip_attn"}}, "prompt_template": None}))


def no_config_folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")


# --------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    kind: str  # job | space | plan | data | model | cli
    files: dict[str, str | bytes]
    argv: list[str]
    expect: list[str]
    """Fragments stderr must hold (the file, dotted keys, rules); several problems = several keys and rules."""
    setup: Callable[[Path], None] | None = None
    multi: bool = False
    no_marker: bool = False
    absent: tuple[str, ...] = ()
    """Fragments stderr must not hold (a wrong hint)."""


def J(text: str) -> dict[str, str]:
    return {"jobs/job.yaml": text}


V = ["validate", "jobs/job.yaml"]
VS = ["validate", "spaces/bad.yaml"]
VP = ["validate", "plans/bad.yaml"]
FLOPS = ["flops", "jobs/job.yaml", "--prompt-tokens", "10", "--generated-tokens", "2"]
EVAL = ["eval", "jobs/job.yaml", "--limit", "2"]
SEARCH_ARGV = ["search", "jobs/job.yaml", "--trials", "1", "--no-progress"]
SEARCH_SECTION = (f"search: {{space: {Path(__file__).resolve().parents[2] / 'spaces/per-layer.yaml'}, "
                  "budget: {flops_ratio: 0.8}, trials: 1}\n")

CASES: list[Case] = [
    # ---- job files -------------------------------------------------------------------
    Case("job-misspelt-top-key", "job", J(BASE_JOB + "modle: {id: embedded:tiny-llava-easyvqa}\n"), V,
         ["jobs/job.yaml", "modle", "did you mean 'model'"]),
    Case("job-misspelt-nested-key", "job", J(BASE_JOB + "model: {dtyp: float16}\n"), V,
         ["jobs/job.yaml", "model.dtyp", "did you mean 'dtype'"]),
    Case("job-wrong-type", "job", J(BASE_JOB + "eval: {batch_size: '64'}\n"), V,
         ["jobs/job.yaml", "eval.batch_size", "must be an integer", "remove the quotes"]),
    Case("job-bad-literal", "job", J(BASE_JOB + "model: {dtype: float64}\n"), V,
         ["jobs/job.yaml", "model.dtype", "must be one of 'float32', 'float16', 'bfloat16'"]),
    Case("job-negative-budget", "job", J(BASE_JOB + SEARCH.replace("0.8", "-0.5")) | {"spaces/ok.yaml": OK_SPACE}, V,
         ["jobs/job.yaml", "search.budget.flops_ratio", "`flops_ratio > 0` must hold"]),
    Case("job-nan-budget", "job",
         J(BASE_JOB + SEARCH.replace("{flops_ratio: 0.8}", "{gflops_per_sample: .nan}")) | {"spaces/ok.yaml": OK_SPACE},
         V, ["jobs/job.yaml", "search.budget.gflops_per_sample", "must be a finite number", ".nan"]),
    Case("job-duplicate-key", "job", J(BASE_JOB + "model: {device: cpu}\nmodel: {device: cuda}\n"), V,
         ["jobs/job.yaml", "model", "duplicate key 'model'", "line 3", "line 4"]),
    Case("job-tab-indent", "job", J(BASE_JOB + "model:\n\tid: embedded:tiny-llava-easyvqa\n"), V,
         ["jobs/job.yaml", "line 4", "tab characters"]),
    Case("job-python-tag", "job", J(BASE_JOB + f"model: {{id: {PAYLOAD}}}\n"), V,
         ["jobs/job.yaml", "model.id", "!!python/object/apply:os.system", "never constructed"], no_marker=True),
    Case("job-subset-size-zero", "job", J(BASE_JOB + "data: {validation_subset: {size: 0}}\n"), V,
         ["jobs/job.yaml", "data.validation_subset.size", "`size >= 1` must hold"]),
    Case("job-carve-fraction", "job", J(BASE_JOB + "data: {carve_validation: {fraction: 1.5}}\n"), V,
         ["jobs/job.yaml", "data.carve_validation.fraction", "`0 < fraction < 1` must hold"]),
    Case("job-missing-space-file", "job", J(BASE_JOB + SEARCH.replace("ok.yaml", "gone.yaml")), V,
         ["jobs/job.yaml", "search.space", "does not exist"]),
    Case("job-bad-device", "job", J(BASE_JOB + "model: {device: gpu}\n"), V,
         ["jobs/job.yaml", "model.device", "cuda:N"]),
    Case("job-remote-code-unpinned", "job", J(BASE_JOB + "model: {id: org/m, trust_remote_code: true}\n"), V,
         ["jobs/job.yaml", "model.revision", "40-hex commit hash"]),
    Case("job-name-required", "job", J("outputs: outputs\nmodel: {device: cpu}\n"), V,
         ["jobs/job.yaml", "name", "is required but missing"]),
    Case("job-missing-file", "job", {}, ["validate", "jobs/nothere.yaml"],
         ["jobs/nothere.yaml", "file does not exist"]),
    Case("job-syntax-error", "job", J(BASE_JOB + "model: {id: [embedded\n"), V,
         ["jobs/job.yaml", "invalid YAML at line"]),
    Case("job-top-level-list", "job", J("- name: t\n"), V,
         ["jobs/job.yaml", "top level must be a mapping"]),
    Case("job-not-utf8", "job", {"jobs/job.yaml": b"name: t\xff\xfe\n"}, V,
         ["jobs/job.yaml", "is not UTF-8"]),
    Case("job-sqlite-workers", "job",
         J(BASE_JOB + SEARCH + "  workers: 2\n  storage: sqlite:///s.db\n") | {"spaces/ok.yaml": OK_SPACE}, V,
         ["jobs/job.yaml", "search.storage", "must not be SQLite"]),
    Case("job-multi-problems", "job",
         J(BASE_JOB + "modle: {}\neval: {batch_size: 0, max_new_tokens: x}\n"
           + SEARCH.replace("0.8", ".nan").replace("trials: 1", "trials: -3") + "  objectivs: [accuracy]\n")
         | {"spaces/ok.yaml": OK_SPACE}, V,
         ["jobs/job.yaml", "modle", "did you mean 'model'", "eval.batch_size", "`batch_size >= 1`",
          "eval.max_new_tokens", "must be an integer", "search.budget.flops_ratio", "finite",
          "search.objectivs", "did you mean 'objectives'"], multi=True),
    Case("job-multi-data", "job",
         J(BASE_JOB + "data:\n  source: parquet\n  splits: {validation: data/*.parquet, test: data/*.parquet, tset: x}\n"
           "  columns: {questoin: q}\n"), V,
         ["jobs/job.yaml", "data.splits.validation", "matches none", "data.splits.tset", "did you mean 'test'",
          "data.columns.questoin", "did you mean 'question'", "must differ from data.splits.test"], multi=True),
    Case("job-multi-finetune", "job",
         J(BASE_JOB + "finetune: {lr: 0, warmup_ratio: 1.0, train_split: test, lora: {r: 0}}\n"), V,
         ["jobs/job.yaml", "finetune.lr", "`lr > 0`", "finetune.warmup_ratio", "`0 <= warmup_ratio < 1`",
          "finetune.train_split", "must not be 'test'", "finetune.lora.r", "`r >= 1`"], multi=True),
    Case("job-search-refused-before-writing", "job",
         J(BASE_JOB + SEARCH.replace("0.8", "-1") + "  sampler: gpp\n") | {"spaces/ok.yaml": OK_SPACE},
         ["search", "jobs/job.yaml", "--trials", "1", "--no-progress"],
         ["jobs/job.yaml", "search.budget.flops_ratio", "`flops_ratio > 0`", "search.sampler", "did you mean 'gp'"],
         multi=True),
    Case("job-budget-above-one", "job", J(BASE_JOB + SEARCH.replace("0.8", "1.5")) | {"spaces/ok.yaml": OK_SPACE}, V,
         ["jobs/job.yaml", "search.budget.flops_ratio", "`flops_ratio <= 1` must hold", "1.5"]),
    Case("job-budget-inf-is-text", "job", J(BASE_JOB + SEARCH.replace("0.8", "inf")) | {"spaces/ok.yaml": OK_SPACE}, V,
         ["jobs/job.yaml", "search.budget.flops_ratio", "YAML reads this as text"], absent=("remove the quotes",)),
    Case("job-budget-quoted-exponent", "job", J(BASE_JOB + SEARCH.replace("0.8", "'1e-1'")) | {"spaces/ok.yaml": OK_SPACE},
         V, ["jobs/job.yaml", "search.budget.flops_ratio", "remove the quotes"]),
    Case("job-huge-name", "job", J(f"name: {'n' * 300_000}\noutputs: outputs\n"), V,
         ["jobs/job.yaml", "name: must be usable as a folder name", "characters left out"]),
    Case("job-huge-key", "job", J(BASE_JOB + f"{'k' * 1000}: 1\n"), V,
         ["jobs/job.yaml", "is not a known setting here", "characters left out"]),
    Case("job-path-too-long", "job", J(BASE_JOB + f"model: {{id: ./{'m' * 5000}}}\n"), V,
         ["jobs/job.yaml", "model", "cannot be looked up", "File name too long", "characters left out"]),
    Case("job-eval-refused-before-loading", "job", J(BASE_JOB + "model: {id: 'embedded:tiny-llava-easyvq'}\n"), EVAL,
         ["jobs/job.yaml", "model.id", "did you mean 'embedded:tiny-llava-easyvqa'"]),
    # ---- command-line options (held to the rules of the keys they set) -----------------
    Case("cli-timeout-negative", "cli", J(BASE_JOB + SEARCH) | {"spaces/ok.yaml": OK_SPACE},
         ["search", "jobs/job.yaml", "--timeout", "-5"], ["--timeout", "`timeout > 0` must hold", "-5"]),
    Case("cli-timeout-nan", "cli", J(BASE_JOB + SEARCH) | {"spaces/ok.yaml": OK_SPACE},
         ["search", "jobs/job.yaml", "--timeout", "nan"], ["--timeout", "must be a finite number"]),
    Case("cli-trials-zero", "cli", J(BASE_JOB + SEARCH) | {"spaces/ok.yaml": OK_SPACE},
         ["search", "jobs/job.yaml", "--trials", "0"], ["--trials", "`trials >= 1` must hold"]),
    Case("cli-workers-zero", "cli", J(BASE_JOB + SEARCH) | {"spaces/ok.yaml": OK_SPACE},
         ["search", "jobs/job.yaml", "--workers", "0"], ["--workers", "`workers >= 1` must hold"]),
    Case("cli-resume-timeout-inf", "cli", {}, ["resume", "outputs/t", "--timeout", "inf"],
         ["--timeout", "must be a finite number"]),
    Case("cli-ls-top-zero", "cli", {}, ["ls", "outputs/t", "--top", "0"], ["--top", "`top >= 1` must hold"]),
    # a study name is a folder under outputs/: one rule for the job's `name:` and --study
    Case("job-name-not-ascii", "job", J("name: démo\noutputs: outputs\n"), V,
         ["jobs/job.yaml", "name", NAME_RULE, "'démo'"]),
    Case("cli-study-escapes-outputs", "cli", J(parquet_job(extra=SEARCH_SECTION)), SEARCH_ARGV + ["--study", "../escape"],
         ["--study", NAME_RULE, "'../escape'"], setup=good_data),
    Case("cli-study-absolute", "cli", J(parquet_job(extra=SEARCH_SECTION)),
         SEARCH_ARGV + ["--study", "{tmp}/abs-study"], ["--study", NAME_RULE, "/abs-study'"], setup=good_data),
    Case("cli-study-not-ascii", "cli", J(parquet_job(extra=SEARCH_SECTION)), SEARCH_ARGV + ["--study", "démo-ü"],
         ["--study", NAME_RULE, "'démo-ü'"], setup=good_data),
    # ---- space files -----------------------------------------------------------------
    Case("space-misspelt-key", "space", {"spaces/bad.yaml": OK_SPACE + "scopee: all\n"}, VS,
         ["spaces/bad.yaml", "scopee", "did you mean 'scope'"]),
    Case("space-empty-choices", "space", {"spaces/bad.yaml": "version: 1\nops: []\n"}, VS,
         ["spaces/bad.yaml", "ops", "at least one op, but got an empty list"]),
    Case("space-low-gt-high", "space",
         {"spaces/bad.yaml": "version: 1\nkind: paper\nmode: skip_block\nskip_interval: {low: 4, high: 2}\n"}, VS,
         ["spaces/bad.yaml", "skip_interval.high", "`low <= high` must hold"]),
    Case("space-nan-sparsity", "space",
         {"spaces/bad.yaml": OK_SPACE + "prune: {method: magnitude, sparsity: {low: .nan, high: 0.5, step: 0.1}}\n"}, VS,
         ["spaces/bad.yaml", "prune.sparsity.low", "finite number"]),
    Case("space-duplicate-key", "space", {"spaces/bad.yaml": OK_SPACE + "ops: [keep]\n"}, VS,
         ["spaces/bad.yaml", "ops", "duplicate key 'ops'"]),
    Case("space-tab", "space", {"spaces/bad.yaml": "version: 1\nlayers:\n\tfrom: 1\n"}, VS,
         ["spaces/bad.yaml", "line 3", "tab characters"]),
    Case("space-python-tag", "space", {"spaces/bad.yaml": f"version: 1\nops: {PAYLOAD}\n"}, VS,
         ["spaces/bad.yaml", "ops", "never constructed"], no_marker=True),
    Case("space-layers-reversed", "space", {"spaces/bad.yaml": OK_SPACE + "layers: {from: 6, to: 2}\n"}, VS,
         ["spaces/bad.yaml", "layers", "`from <= to` must hold"]),
    Case("space-sparsity-range", "space",
         {"spaces/bad.yaml": OK_SPACE + "prune: {method: wanda, sparsity: [0.2, 1.5]}\n"}, VS,
         ["spaces/bad.yaml", "prune.sparsity[1]", "`0 <= sparsity < 1` must hold"]),
    Case("space-version", "space", {"spaces/bad.yaml": "version: 2\nops: keep\n"}, VS,
         ["spaces/bad.yaml", "version", "`version == 1` must hold"]),
    Case("space-multi-problems", "space",
         {"spaces/bad.yaml": "version: 3\nops: [keep, skip_blok, keep]\nscope: [all, generatd]\naverage: true\nlayrs: [1]\n"},
         VS, ["spaces/bad.yaml", "version", "`version == 1`", "ops[1]", "did you mean 'skip_block'",
              "scope[1]", "did you mean 'generated'", "layrs", "did you mean 'layers'"], multi=True),
    Case("space-paper-multi", "space",
         {"spaces/bad.yaml": "version: 1\nkind: paper\nmode: [keep]\nskip_interval: 0\nstart_layer: 9\nend_layer: 4\n"},
         VS, ["spaces/bad.yaml", "mode[0]", "got 'keep'", "skip_interval", "`skip_interval >= 1`",
              "end_layer", "`start_layer < end_layer`"], multi=True),
    Case("space-via-job", "space",
         J(BASE_JOB + SEARCH) | {"spaces/ok.yaml": "version: 1\nops: [keep, skip_ffn]\nprune: {method: magnitud}\n"}, V,
         ["jobs/job.yaml", "search.space", "spaces/ok.yaml", "prune.method", "did you mean 'magnitude'"]),
    # ---- plan files ------------------------------------------------------------------
    Case("plan-misspelt-op", "plan", {"plans/bad.yaml": "version: 1\nlayers: {3: skip_blok}\n"}, VP,
         ["plans/bad.yaml", "layers.3", "did you mean 'skip_block'"]),
    Case("plan-misspelt-key", "plan", {"plans/bad.yaml": "version: 1\nlayer: {3: skip_ffn}\n"}, VP,
         ["plans/bad.yaml", "layer", "did you mean 'layers'"]),
    Case("plan-negative-layer", "plan", {"plans/bad.yaml": "version: 1\nlayers: {-1: skip_ffn}\n"}, VP,
         ["plans/bad.yaml", "layers.-1", "`layer >= 0` must hold"]),
    Case("plan-layer-out-of-range", "plan",
         J(BASE_JOB) | {"plans/bad.yaml": "version: 1\nlayers: {40: skip_block, 9: skip_ffn}\n"},
         FLOPS + ["--plan", "plans/bad.yaml"],
         ["plans/bad.yaml", "layers.40", "layers.9", "`layer < num_layers` must hold", "8 decoder layers"], multi=True),
    Case("plan-nan-sparsity", "plan", {"plans/bad.yaml": "version: 1\nprune: {method: magnitude, sparsity: .nan}\n"}, VP,
         ["plans/bad.yaml", "prune.sparsity", "finite"]),
    Case("plan-drop-reversed", "plan", {"plans/bad.yaml": "version: 1\ndrop: {start: 6, end: 2}\n"}, VP,
         ["plans/bad.yaml", "drop", "start < end"]),
    Case("plan-duplicate-layer", "plan", {"plans/bad.yaml": "version: 1\nlayers:\n  3: skip_ffn\n  3: skip_attn\n"}, VP,
         ["plans/bad.yaml", "layers.3", "duplicate key"]),
    Case("plan-tab", "plan", {"plans/bad.yaml": "version: 1\nlayers:\n\t3: skip_ffn\n"}, VP,
         ["plans/bad.yaml", "line 3", "tab characters"]),
    Case("plan-python-tag", "plan", {"plans/bad.yaml": f"version: 1\nlayers: {{3: {PAYLOAD}}}\n"}, VP,
         ["plans/bad.yaml", "layers.3", "never constructed"], no_marker=True),
    Case("plan-unquoted-2-4", "plan",
         {"plans/bad.yaml": "version: 1\nprune: {method: magnitude, structure: 2:4, sparsity: 0.5}\n"}, VP,
         ["plans/bad.yaml", "prune.structure", "2:4"]),
    Case("plan-missing-file", "plan", J(BASE_JOB), FLOPS + ["--plan", "plans/none.yaml"],
         ["plans/none.yaml", "file does not exist"]),
    Case("plan-multi-problems", "plan",
         {"plans/bad.yaml": "version: 2\nscope: everything\nlayers: {2: {op: skip_ffn, scop: all}, x: skip_block}\n"
                            "prune: {method: wanda, sparsity: 1.2, targets: [mlp]}\n"}, VP,
         ["plans/bad.yaml", "version", "scope", "everything", "layers.2.scop", "did you mean 'scope'",
          "layers", "key string 'x'", "prune.sparsity", "`0 <= sparsity < 1`", "prune.targets[0]"], multi=True),
    Case("plan-via-eval", "plan", J(BASE_JOB) | {"plans/bad.yaml": "version: 1\nlayers: {2: paralel_blocks}\n"},
         EVAL + ["--plan", "plans/bad.yaml"], ["plans/bad.yaml", "layers.2", "did you mean 'parallel_blocks'"]),
    # ---- data --------------------------------------------------------------------------
    Case("data-corrupt-image-parquet", "data", J(parquet_job()), EVAL,
         ["jobs/job.yaml", "data.splits.validation", "1 of 2 image(s) cannot be read", "q-v1"],
         setup=lambda t: (_parquet(t / "data" / "val.parquet", ["v1", "v2"], [b"junk", _png()]),
                          _parquet(t / "data" / "test.parquet", ["t1"]))),
    Case("data-missing-columns", "data", J(parquet_job()), EVAL,
         ["jobs/job.yaml", "val.parquet", "data.columns.question_id", "data.columns.answers",
          "needs a column for 'image'"], multi=True,
         setup=lambda t: (_parquet(t / "data" / "val.parquet", ["v1"], drop=["question_id", "answers", "image"]),
                          _parquet(t / "data" / "test.parquet", ["t1"]))),
    Case("data-missing-file", "data", J(parquet_job(validation="data/nope.parquet")), V,
         ["jobs/job.yaml", "data.splits.validation", "matches none", "nope.parquet"], setup=good_data),
    Case("data-empty-split", "data", J(parquet_job()), EVAL,
         ["jobs/job.yaml", "data.splits.validation", "val.parquet", "the split is empty"],
         setup=lambda t: (_parquet(t / "data" / "val.parquet", []), _parquet(t / "data" / "test.parquet", ["t1"]))),
    Case("data-not-parquet", "data", J(parquet_job()), EVAL,
         ["jobs/job.yaml", "data.splits.validation", "val.parquet", "cannot be read as Parquet"],
         setup=lambda t: ((t / "data").mkdir(), (t / "data" / "val.parquet").write_text("a,b\n1,2\n"),
                          _parquet(t / "data" / "test.parquet", ["t1"]))),
    Case("data-vqav2-missing-image", "data", {}, EVAL,
         ["jobs/job.yaml", "data.splits.validation", "vq/images", "question_id 20"],
         setup=lambda t: (t / "jobs").mkdir() or (t / "jobs" / "job.yaml").write_text(vqav2(t, missing_image=True))),
    Case("data-vqav2-corrupt-image", "data", {}, EVAL,
         ["jobs/job.yaml", "data.splits.validation", "COCO_val2014_000000000002.jpg", "cannot be read"],
         setup=lambda t: (t / "jobs").mkdir() or (t / "jobs" / "job.yaml").write_text(vqav2(t, corrupt_image=True))),
    Case("data-corrupt-image-search", "data",
         J(parquet_job(extra=SEARCH_SECTION)), SEARCH_ARGV,
         ["jobs/job.yaml", "data.splits.validation", "1 of 2 image(s) cannot be read", "q-v1"],
         setup=lambda t: (_parquet(t / "data" / "val.parquet", ["v1", "v2"], [b"junk", _png()]),
                          _parquet(t / "data" / "test.parquet", ["t1"]))),
    Case("model-missing-folder-search", "model", J(parquet_job(model="model: {id: ./nope}\n", extra=SEARCH_SECTION)),
         SEARCH_ARGV, ["jobs/job.yaml", "model.id", "nope"], setup=good_data),
    Case("data-column-mapped-to-absent", "data",
         J(parquet_job(extra="  columns: {question: text}\n")), EVAL,
         ["jobs/job.yaml", "data.columns.question", "'text'"], setup=good_data),
    # ---- models ------------------------------------------------------------------------
    Case("model-unsupported-family", "model", J(BASE_JOB + "model: {id: ./m}\n"), FLOPS,
         ["jobs/job.yaml", "model.id", "PaliGemma", "is not a supported architecture"],
         setup=lambda t: paligemma_folder(t / "m")),
    Case("model-text-only", "model", J(parquet_job(model="model: {id: ./m}\n")), EVAL,
         ["jobs/job.yaml", "model.id", "./m", "GPT2LMHeadModel", "not a supported architecture"],
         setup=lambda t: (good_data(t), gpt2_folder(t / "m"))),
    Case("model-pickles-only", "model", J(parquet_job(model="model: {id: ./m}\n")), EVAL,
         ["jobs/job.yaml", "model.id", "pytorch_model.bin", "allow_pickle"],
         setup=lambda t: (good_data(t), pickle_folder(t / "m"))),
    Case("model-no-config", "model", J(parquet_job(model="model: {id: ./m}\n")), EVAL,
         ["jobs/job.yaml", "model.id", "no config.json"],
         setup=lambda t: (good_data(t), no_config_folder(t / "m"))),
    Case("model-no-config-flops", "model", J(BASE_JOB + "model: {id: ./m}\n"), FLOPS,
         ["jobs/job.yaml", "model.id", "./m"], setup=lambda t: no_config_folder(t / "m")),
    Case("model-missing-folder", "model", J(BASE_JOB + "model: {id: ./gone}\n"), V,
         ["jobs/job.yaml", "model.id", "does not exist"]),
    Case("model-export-runtime-plan-search", "model",
         J(parquet_job(model="model: {id: ./m}\n", extra=SEARCH_SECTION)), SEARCH_ARGV,
         ["jobs/job.yaml", "model.id", "runs its own runtime plan", "plans do not stack"],
         setup=lambda t: (good_data(t), runtime_plan_export(t / "m"))),
    Case("model-unsupported-family-validate", "model", J(BASE_JOB + "model: {id: ./m}\n"), V,
         ["jobs/job.yaml", "model.id", "PaliGemma", "is not a supported architecture"],
         setup=lambda t: paligemma_folder(t / "m")),
    Case("model-unsupported-decoder-validate", "model", J(BASE_JOB + "model: {id: ./m}\n"), V,
         ["jobs/job.yaml", "model.id", "'gemma'", "is not supported"], setup=lambda t: gemma_llava_folder(t / "m")),
    # ---- refused by a search once the model is loaded, before any folder is made --------
    Case("model-unsupported-decoder-search", "model",
         J(parquet_job(model="model: {id: ./m}\n", extra=SEARCH_SECTION)), SEARCH_ARGV,
         ["jobs/job.yaml", "model.id", "'gemma'", "is not supported"],
         setup=lambda t: (good_data(t), gemma_llava_folder(t / "m"))),
    Case("space-beyond-the-model-search", "space",
         J(parquet_job(extra=SEARCH.replace("spaces/ok.yaml", "spaces/deep.yaml")))
         | {"spaces/deep.yaml": OK_SPACE + "layers: [1, 20]\n"}, SEARCH_ARGV,
         ["spaces/deep.yaml", "layers", "20"], setup=good_data),
    Case("job-budget-unreachable-ratio-search", "job", J(parquet_job(extra=SEARCH.replace("0.8", "1e-9")))
         | {"spaces/ok.yaml": OK_SPACE}, SEARCH_ARGV,
         ["jobs/job.yaml", "search.budget.flops_ratio", "`flops_ratio >= 0.", "no plan can cost less", "1e-09"],
         setup=good_data, absent=("remove the quotes",)),
    Case("job-budget-unreachable-gflops-search", "job",
         J(parquet_job(extra=SEARCH.replace("{flops_ratio: 0.8}", "{gflops_per_sample: 0.001}")))
         | {"spaces/ok.yaml": OK_SPACE}, SEARCH_ARGV,
         ["jobs/job.yaml", "search.budget.gflops_per_sample", "`gflops_per_sample >= 0.", "vision tower"],
         setup=good_data),
]

TRIED: dict[str, int] = {}
TRACEBACKS: list[str] = []


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """The case's folder as working directory, the datasets cache inside it, no network."""
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_cache"))
    return tmp_path


PROBLEM_LINE = re.compile(r"(error: |  - )?[\w./-]+\.(ya?ml|parquet): \S")


def problem_lines(err: str) -> list[str]:
    """The lines of stderr that state one problem: ``FILE: KEY: ...`` (alone, after ``error: `` or
    as a ``  - `` item) or a ``  - `` item under one file's heading."""
    return [line for line in err.splitlines() if PROBLEM_LINE.match(line) or line.startswith("  - ")]


def dotted_keys(expect: list[str]) -> list[str]:
    """The distinct dotted keys (``a.b``, ``a[0]``) among a case's expected fragments."""
    keys = [f for f in expect if re.fullmatch(r"[A-Za-z_]\w*(\.[\w-]+|\[\d+\])+", f)
            and not f.endswith((".yaml", ".yml", ".parquet"))]
    return list(dict.fromkeys(keys))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_naming_file_key_and_rule(case: Case, isolated: Path, capsys):
    tmp = isolated
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.setup is not None:
        case.setup(tmp)
    there = {p.name for p in tmp.iterdir()} | {"outputs", ".hf_cache"}
    capsys.readouterr()

    code = cli.main([arg.replace("{tmp}", str(tmp)) for arg in case.argv])
    out, err = capsys.readouterr()
    TRIED[case.id] = TRIED.get(case.id, 0) + 1
    if "Traceback" in out + err:
        TRACEBACKS.append(case.id)
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    for fragment in case.expect:
        assert fragment in err, f"{fragment!r} missing from stderr:\n{err}"
    for fragment in case.absent:
        assert fragment not in err, f"{fragment!r} in stderr:\n{err}"
    longest = max(map(len, err.splitlines()), default=0)
    assert longest <= MAX_LINE + 100, f"a line of {longest} characters: values are echoed whole"
    if case.multi:  # every problem of the file in one run, one problem a line
        lines = problem_lines(err)
        keys = dotted_keys(case.expect)
        assert len(lines) >= max(2, len(keys)), f"{len(lines)} problem line(s) for the keys {keys}:\n{err}"
        for key in keys:
            assert any(key in line for line in lines), f"{key!r} is on no problem line:\n{err}"
    assert _files_under(tmp / "outputs") == [], "something was written to outputs/"
    assert sorted({p.name for p in tmp.iterdir()} - there) == [], "something was written outside outputs/"
    if case.no_marker:
        assert not (tmp / MARKER).exists(), "the !!python payload ran"


def test_case_mix():
    kinds = {k: sum(1 for c in CASES if c.kind == k) for k in ("job", "space", "plan", "data", "model", "cli")}
    assert kinds["job"] >= 15 and kinds["space"] >= 8 and kinds["plan"] >= 8
    assert kinds["data"] >= 4 and kinds["model"] >= 3 and kinds["cli"] >= 5
    assert len({c.id for c in CASES}) == len(CASES)
    text = {k: " ".join(str(v) for c in CASES if c.kind == k for v in c.files.values()) + " ".join(
        c.id for c in CASES if c.kind == k) for k in ("job", "space", "plan")}
    for kind in ("job", "space", "plan"):  # tabs, duplicate keys, NaN and python tags in each file kind
        assert "\t" in text[kind] and "duplicate" in text[kind] and ".nan" in text[kind] and "!!python" in text[kind]


# --------------------------------------------------------------------------------------
# YAML is only ever safe-loaded
# --------------------------------------------------------------------------------------

SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader", "StrictSafeLoader"}
UNSAFE_NAMES = {"Loader", "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader",
                "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def unsafe_yaml_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe YAML use in ``source``: ``yaml.load``/``load_all`` without a safe ``Loader=``,
    ``yaml.unsafe_load``/``full_load``, and any mention of an unsafe loader class."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    yaml_names = {"yaml"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yaml_names |= {a.asname or a.name for a in node.names if a.name == "yaml"}
        elif isinstance(node, ast.ImportFrom) and node.module == "yaml":
            for a in node.names:
                if a.name in UNSAFE_NAMES or a.name in ("load", "load_all"):
                    found.append(f"{filename}:{node.lineno}: from yaml import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in yaml_names:
            if node.attr in UNSAFE_NAMES:
                found.append(f"{filename}:{node.lineno}: yaml.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "load_all") \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in yaml_names:
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            name = loader.attr if isinstance(loader, ast.Attribute) else getattr(loader, "id", None)
            if name not in SAFE_LOADERS:
                found.append(f"{filename}:{node.lineno}: yaml.{node.func.attr} with Loader={name}")
    return found


def test_the_scanner_finds_unsafe_loads():
    bad = textwrap.dedent("""
        import yaml
        from yaml import FullLoader
        a = yaml.load(text)
        b = yaml.load(text, Loader=yaml.Loader)
        c = yaml.unsafe_load(text)
        d = yaml.full_load(text)
        e = yaml.load(text, yaml.UnsafeLoader)
    """)
    assert len(unsafe_yaml_uses(bad)) == 8, unsafe_yaml_uses(bad)
    good = "import yaml\nx = yaml.safe_load(t)\ny = yaml.load(t, Loader=StrictSafeLoader)\nz = yaml.load(t, yaml.SafeLoader)\n"
    assert unsafe_yaml_uses(good) == []


def test_package_source_only_safe_loads_yaml():
    files = sorted((REPO_ROOT / "searchskip").rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_yaml_uses(f.read_text(encoding="utf-8"), str(f.relative_to(REPO_ROOT)))]
    assert found == [], "unsafe YAML loading:\n" + "\n".join(found)


@pytest.mark.parametrize("kind", ["job", "space", "plan"])
def test_python_apply_payload_is_refused_and_never_run(kind, isolated: Path, capsys):
    """Also through the commands that read each kind for real (not only `validate`)."""
    tmp = isolated
    (tmp / "jobs").mkdir()
    (tmp / "spaces").mkdir()
    (tmp / "plans").mkdir()
    job = BASE_JOB + SEARCH
    space, plan = OK_SPACE, "version: 1\nlayers: {3: skip_ffn}\n"
    if kind == "job":
        job = BASE_JOB + f"model:\n  id: {PAYLOAD}\n" + SEARCH
        argvs = [["validate", "jobs/job.yaml"], ["search", "jobs/job.yaml", "--trials", "1", "--no-progress"]]
    elif kind == "space":
        space = f"version: 1\nops: [keep, skip_block]\nscope: {PAYLOAD}\n"
        argvs = [["validate", "spaces/ok.yaml"], ["search", "jobs/job.yaml", "--trials", "1", "--no-progress"]]
    else:
        plan = f"version: 1\nlayers:\n  3: {PAYLOAD}\n"
        argvs = [["validate", "plans/p.yaml"], FLOPS + ["--plan", "plans/p.yaml"]]
    (tmp / "jobs" / "job.yaml").write_text(job)
    (tmp / "spaces" / "ok.yaml").write_text(space)
    (tmp / "plans" / "p.yaml").write_text(plan)
    for argv in argvs:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        out, err = capsys.readouterr()
        TRIED[f"payload-{kind}-{argv[0]}"] = 1
        if "Traceback" in out + err:
            TRACEBACKS.append(f"payload-{kind}-{argv[0]}")
        assert "Traceback" not in out + err
        assert "!!python/object/apply:os.system" in err and "never constructed" in err, err
        assert not (tmp / MARKER).exists(), "the payload ran"
        assert _files_under(tmp / "outputs") == []


PAYLOAD_RUNS = 6  # test_python_apply_payload_is_refused_and_never_run: 3 kinds x 2 commands


def test_zz_count(request, capsys):
    """Runs last in this file: the number of bad inputs tried (the README quotes it), counted from
    the runs that happened; when the whole file ran, every table case and payload run is in it."""
    assert len(CASES) >= 40
    n = len(TRIED)
    names = [item.name for item in request.session.items if item.module is request.module]
    if len([x for x in names if x.startswith("test_bad_input_exits_2")]) == len(CASES) and len(
            [x for x in names if x.startswith("test_python_apply_payload")]) == PAYLOAD_RUNS // 2:
        assert n == len(CASES) + PAYLOAD_RUNS, sorted(TRIED)
    assert TRACEBACKS == []
    with capsys.disabled():
        print(f"\nbad inputs tried: {n}, tracebacks: {len(TRACEBACKS)}")
