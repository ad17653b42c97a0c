"""Exports served by the real vLLM engine (vLLM's CPU build, in a virtualenv of its own).

vLLM pins its own transformers, so it runs in another virtualenv (``bash .ci/vllm-env DIR`` makes
it; CI does, and sets ``SEARCHSKIP_VLLM_PYTHON`` to its python). Each case serves a model folder
with vLLM's offline ``LLM`` (``python -m searchskip.vllm_plugin.serve``, run by vLLM's python: float32, greedy) on the
first validation questions of the demo job and compares the answers with searchskip's own
(transformers, the plan applied):

* the embedded model itself (its vision tower's tensors named as llava-hf's checkpoints name them);
* a block-only export (layers removed) and exports whose sublayer skips for every token are
  written into the weights (``skip_ffn``, ``skip_attn``): stock vLLM, no plugin, same answers;
* an export whose plan needs searchskip at runtime (token scopes): stock vLLM refuses it, naming
  the model class it does not know, instead of serving the unplanned model.

Without ``SEARCHSKIP_VLLM_PYTHON`` these tests skip, saying how to run them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from searchskip.cli import main

REPO = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("SEARCHSKIP_VLLM_PYTHON")
if PYTHON:  # absolute (not resolved: a virtualenv's python is a link out of it); cases run in other folders
    PYTHON = str(Path(PYTHON).absolute())
QUESTIONS = 24

pytestmark = pytest.mark.skipif(
    not PYTHON, reason="vLLM serving tests need SEARCHSKIP_VLLM_PYTHON: the python of a virtualenv made by "
                       "`bash .ci/vllm-env DIR` (CI sets it)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The demo job (its validation subset cut to :data:`QUESTIONS`), and the questions as PNG files."""
    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split

    root = tmp_path_factory.mktemp("vllm")
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(root / "out")
    data["data"]["validation_subset"]["size"] = QUESTIONS
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(data))
    job = load_job(job_file)
    rows = load_eval_split(job.data, "validation")
    questions = []
    for i, row in enumerate(rows):
        path = root / f"q{i}.png"
        row["image"].save(path)
        questions.append({"question": row["question"], "image": str(path)})
    return {"root": root, "job_file": job_file, "job": job, "rows": rows, "questions": questions}


def _reference(setup: dict, plan_file: Path | None, job=None):
    """``(loaded model, context running it planned)``: the job's model (``job``, default the demo
    job) with ``plan_file`` applied, or an export folder (a ``Path`` to a ``model`` folder) loaded
    by searchskip itself."""
    from searchskip.apply import apply
    from searchskip.export.load import load_compressed
    from searchskip.models import load_model
    from searchskip.plan import Plan

    if plan_file is not None and plan_file.is_dir():
        return load_compressed(plan_file), _nothing()
    loaded = load_model((job or setup["job"]).model)
    return loaded, (apply(loaded.model, Plan.load(plan_file)) if plan_file else _nothing())


def planned_answers(setup: dict, plan_file: Path | None, job=None) -> list[str]:
    """searchskip's answers (transformers) with ``plan_file`` applied, or of an export folder."""
    from searchskip.eval.generate import answer_all

    job = job or setup["job"]
    loaded, planned = _reference(setup, plan_file, job)
    with planned:
        return answer_all(loaded, setup["rows"], job.eval.batch_size, job.eval.max_new_tokens)


def planned_logprobs(setup: dict, plan_file: Path | None, job=None) -> list[dict[int, float]]:
    """Per question, the log-probability of every token at the first generated position (transformers,
    the plan applied, or an export folder loaded by searchskip)."""
    import torch

    from searchskip.eval.generate import prompt_inputs

    loaded, planned = _reference(setup, plan_file, job)
    rows = setup["rows"]
    out = []
    with torch.inference_mode(), planned:
        for start in range(0, len(rows), 8):
            batch = rows[start:start + 8]
            logits = loaded.model(**prompt_inputs(loaded, batch["image"], batch["question"])).logits[:, -1]
            out += list(torch.log_softmax(logits.float(), dim=-1))
    return out


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def assert_logprobs_match(served: list[dict], setup: dict, plan_file: Path | None, job=None) -> None:
    """vLLM's top log-probabilities at the first generated token equal transformers' with the plan
    (within float32 noise), and differ from the unplanned model's: the plan really ran."""
    planned, unplanned = planned_logprobs(setup, plan_file, job), planned_logprobs(setup, None, job)
    worst_planned = worst_unplanned = 0.0
    for top, want, base in zip(served, planned, unplanned):
        for token, value in top.items():
            worst_planned = max(worst_planned, abs(value - float(want[int(token)])))
            worst_unplanned = max(worst_unplanned, abs(value - float(base[int(token)])))
    assert worst_planned < 2e-3, worst_planned
    if plan_file is not None:
        assert worst_unplanned > 10 * max(worst_planned, 1e-4), (worst_unplanned, worst_planned)


def serve(setup: dict, folder: Path, hf_overrides: dict | None = None, *, stock: bool = False, job=None) -> dict:
    """vLLM's result for ``folder`` (its output as ``log``: vLLM logs to stdout); ``stock``: without searchskip's plugin
    (``VLLM_PLUGINS=""`` loads no plugin); ``job``: whose model's prompt template to use (default the demo job)."""
    from searchskip.bench.vllm import serve_request
    from searchskip.models import load_model

    template = load_model((job or setup["job"]).model).template
    request = {"model": str(folder), "template": template, "dtype": "float32",
               "max_tokens": setup["job"].eval.max_new_tokens, "questions": setup["questions"],
               "hf_overrides": hf_overrides, "logprobs": 5}
    result, code, log = serve_request(PYTHON, request, setup["root"], stock=stock, timeout=600)
    assert result is not None, log[-5000:]
    assert code == (3 if "error" in result else 0), log[-3000:]
    return {**result, "log": log}


def export(setup: dict, plan: str, *flags: str, job_file: Path | None = None) -> Path:
    job_file = job_file or setup["job_file"]
    out = setup["root"] / (job_file.stem + plan.removesuffix(".yaml") + "".join(flags).replace("-", "_"))
    assert main(["export", "--job", str(job_file), "--plan", str(REPO / "spaces/plans" / plan),
                 "--out", str(out), "--no-progress", *flags]) == 0
    return out / "model"


FAMILY_DECODERS = {"llava-mistral": "SearchSkipLlavaForConditionalGeneration",
                   "llava-next": "SearchSkipLlavaNextForConditionalGeneration",
                   "llava-qwen2": "SearchSkipLlavaForConditionalGeneration"}
"""Tiny families beyond the embedded LLaVA-over-Llama that the plugin serves: the class the export names."""


@pytest.fixture(scope="module")
def family_jobs(setup) -> dict:
    """Per family of :data:`FAMILY_DECODERS`: a tiny random model folder (8 layers; heads of 32, the
    smallest vLLM's CPU attention takes) and a demo job scoring it."""
    from searchskip.config.loader import load_job
    from searchskip.testing.folders import save_tiny_model

    jobs = {}
    for family in FAMILY_DECODERS:
        folder = save_tiny_model(family, setup["root"] / family, num_layers=8, hidden_size=64,
                                 num_attention_heads=2, num_key_value_heads=1)
        data = yaml.safe_load(setup["job_file"].read_text())
        data["model"]["id"] = str(folder)
        data["name"] = family
        path = setup["root"] / f"{family}.yaml"
        path.write_text(yaml.safe_dump(data))
        jobs[family] = (path, load_job(path))
    return jobs


def test_the_embedded_model_serves_with_its_own_answers(setup):
    from searchskip import zoo

    folder = zoo.embedded_model(zoo.embedded_names()[0]).path
    result = serve(setup, folder, stock=True)
    assert result["answers"] == planned_answers(setup, None)
    assert_logprobs_match(result["first_logprobs"], setup, None)


@pytest.mark.parametrize("plan", ["skip_block.yaml", "skip_ffn.yaml", "skip_attn.yaml"])
def test_a_plain_export_serves_in_stock_vllm_with_the_planned_answers(setup, plan):
    folder = export(setup, plan)
    assert json.loads((folder / "searchskip_export.json").read_text())["plain_transformers"] is True
    result = serve(setup, folder, stock=True)
    assert result["answers"] == planned_answers(setup, REPO / "spaces/plans" / plan)
    assert_logprobs_match(result["first_logprobs"], setup, REPO / "spaces/plans" / plan)


def test_an_export_needing_searchskip_is_refused_by_stock_vllm_and_by_the_plugin_if_it_cannot_serve_it(setup):
    folder = export(setup, "scoped.yaml")
    result = serve(setup, folder, stock=True)
    assert "SearchSkipLlavaForConditionalGeneration" in result["error"], result
    result = serve(setup, folder)  # the plugin names what it cannot serve (in the engine's log)
    assert "error" in result
    for part in ("layers.1: skip_attn for 'generated' tokens", "layers.5: skip_ffn for 'prompt' tokens",
                 "searchskip.load_compressed"):
        assert part in result["log"], result["log"][-3000:]


@pytest.mark.parametrize("plan", ["parallel_attn_ffn.yaml", "parallel_blocks.yaml"])
def test_the_plugin_serves_an_export_stock_vllm_refuses(setup, plan):
    """Parallel ops need searchskip at runtime: stock vLLM refuses the export, the plugin serves it."""
    folder = export(setup, plan)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["SearchSkipLlavaForConditionalGeneration"]
    result = serve(setup, folder)
    assert "error" not in result, result
    assert result["answers"] == planned_answers(setup, REPO / "spaces/plans" / plan)
    assert_logprobs_match(result["first_logprobs"], setup, REPO / "spaces/plans" / plan)


@pytest.mark.parametrize(("plan", "how"), [("skip_ffn.yaml", "--target"), ("skip_attn.yaml", "--target"),
                                           ("skip_ffn.yaml", "hf_overrides"), ("skip_block.yaml", "hf_overrides")])
def test_the_plugin_serves_a_plain_export_skipping_its_zeroed_sublayers(setup, plan, how):
    """``export --target vllm`` names the plugin's classes; an existing export gets them by ``hf_overrides``."""
    if how == "--target":
        folder = export(setup, plan, "--target", "vllm")
        assert json.loads((folder / "config.json").read_text())["architectures"] == [
            "SearchSkipLlavaForConditionalGeneration"]
        result = serve(setup, folder)
    else:
        result = serve(setup, export(setup, plan), {"architectures": ["SearchSkipLlavaForConditionalGeneration"]})
    assert "error" not in result, result
    assert result["answers"] == planned_answers(setup, REPO / "spaces/plans" / plan)
    assert_logprobs_match(result["first_logprobs"], setup, REPO / "spaces/plans" / plan)


def test_the_plugin_serves_uneven_ffn_widths_without_their_padding(setup):
    """FFN-channel pruning that leaves layers uneven pads them to one width with zero channels:
    stock vLLM serves the padded model, the plugin builds each FFN at its own width and cuts the
    padding off as it loads, checking it is zero."""
    folder = export(setup, "prune_ffn_channels.yaml", "--target", "vllm")
    info = json.loads((folder / "searchskip_export.json").read_text())
    full = json.loads((folder / "config.json").read_text())["text_config"]["intermediate_size"]
    widths = info["ffn_widths"]
    assert widths[4] == full - round(0.25 * full) and widths[5] == widths[6] == full - round(0.5 * full), widths
    assert info["plain_transformers"] is True
    want = planned_answers(setup, folder)  # the export check already proved these are the planned model's
    for result in (serve(setup, folder), serve(setup, folder, {"architectures": ["LlavaForConditionalGeneration"]},
                                              stock=True)):
        assert "error" not in result, result
        assert result["answers"] == want
        assert_logprobs_match(result["first_logprobs"], setup, folder)
    info["ffn_widths"][5] -= 1  # a width the weights contradict: a channel it cuts off is not zero
    (folder / "searchskip_export.json").write_text(json.dumps(info))
    result = serve(setup, folder)
    assert "error" in result
    assert "layers.5.mlp" in result["log"] and "ffn_widths" in result["log"], result["log"][-3000:]


@pytest.mark.parametrize("plan", ["skip_ffn.yaml", "parallel_blocks.yaml"])
@pytest.mark.parametrize("family", list(FAMILY_DECODERS))
def test_the_plugin_serves_other_decoders_and_wrappers(setup, family_jobs, family, plan):
    """LLaVA over Mistral and Qwen2 decoders and LLaVA-NeXT (anyres) over Llama: the plugin's classes serve
    the export with transformers' log-probabilities (and answers) of the planned model."""
    job_file, job = family_jobs[family]
    folder = export(setup, plan, "--target", "vllm", "--allow-mismatch", job_file=job_file)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [FAMILY_DECODERS[family]]
    result = serve(setup, folder, job=job)
    assert "error" not in result, result["log"][-3000:]
    assert result["answers"] == planned_answers(setup, folder, job)
    assert_logprobs_match(result["first_logprobs"], setup, folder, job)


def test_the_readmes_serving_commands_run(tmp_path):
    """The README's "Serving with vLLM" commands, as a user types them (export, write the script,
    serve), in a folder holding the repository's jobs/ and spaces/ and a .venv-vllm."""
    import sys

    text = (REPO / "README.md").read_text()
    start = text.index("searchskip export --job jobs/demo.yaml --plan spaces/plans/skip_ffn.yaml")
    stop = text.index("serve_demo.py   #", start)
    commands = text[start:text.index("\n", stop)]
    for name in ("jobs", "spaces"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / ".venv-vllm").symlink_to(Path(PYTHON).parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    printed = [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith("(")]
    assert printed and printed[-1] in {"yes", "no", "red", "green", "blue", "yellow", "black", "gray", "brown",
                                       "circle", "rectangle", "triangle"}, done.stdout[-2000:]  # vLLM logs: "(Process"


def test_the_vllm_benchmark_runs_and_reports_every_plan(tmp_path):
    """``python -m searchskip.bench.vllm`` (the README's throughput figures), on a few questions."""
    import sys

    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(tmp_path / "out")
    data["data"]["validation_subset"]["size"] = 8
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "searchskip.bench.vllm", str(job), "--vllm-python", PYTHON,
                           "--questions", "16", "--repeats", "1"], capture_output=True, text=True, env=env,
                          timeout=1200, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "bench" / "vllm-demo.json").read_text())
    from searchskip.bench.vllm import PLANS

    assert [r["plan"] for r in result["rows"]] == list(PLANS)
    for row in result["rows"]:
        assert row["questions"] == 16 and row["questions_per_s"] > 0
    assert result["rows"][0]["flops_ratio"] == 1.0
    assert all(0.3 < row["llm_flops_ratio"] < 0.7 for row in result["rows"][1:])  # about half the LLM's FLOPs
