"""``python -m searchskip.bench.gpu``: its ``--tiny`` mode runs every step of the GPU command on CPU
(so the command cannot rot between GPU loans), and the 7B build it does on a GPU is checked on the
meta device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from searchskip.bench.gpu import SETTINGS, main
from searchskip.bench.plan_checks import check_plan_set
from searchskip.bench.random_model import random_llava

REPO = Path(__file__).resolve().parents[1]


def _embedded_config():
    from searchskip import zoo

    return transformers.AutoConfig.from_pretrained(zoo.embedded_model(zoo.embedded_names()[0]).path)


def test_the_tiny_mode_runs_every_step_and_every_check_passes(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "searchskip.bench.gpu", "--tiny", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Warning" not in run.stderr, run.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.md").read_text() in run.stdout  # the short table is printed too
    checks = result["checks"]["summary"]
    n = result["layers"]
    assert checks["plans"] == len(check_plan_set(n)) >= 30
    assert checks["same_tokens"] == checks["restore_bit_identical"] == checks["plans"]
    assert checks["max_logit_diff"] < 1e-4
    # float32 on CPU: the analytic count is exact in the kernel convention, the causal one is smaller
    assert checks["flops_max_rel_err"]["kernel"] == 0.0 and checks["flops_convention"] == "kernel"
    assert all(r["flops"]["causal"] < r["flops"]["measured"] for r in result["checks"]["rows"])
    cost = result["cost"]
    assert cost["trials"] == SETTINGS["tiny"]["trials"] and cost["per_plan"]
    assert all(r["trial_s"] > 0 and r["bare_s"] > 0 and r["evaluate_cached_s"] > 0 for r in cost["per_plan"])
    rows = {r["label"]: r for r in result["latency"]["rows"]}
    assert set(rows) == {"unplanned", "every other block removed", "attention of odd layers, FFN of even layers skipped",
                         "ffn_channels 50% (magnitude) on every layer"}
    assert rows["every other block removed"]["layers"] == n // 2  # the export removes the layers
    assert rows["every other block removed"]["llm_flops_ratio"] == pytest.approx(0.5, abs=1e-3)
    for row in rows.values():
        assert set(row["by_batch"]) == {str(b) for b in SETTINGS["tiny"]["batch_sizes"]}
        assert all(cell["prefill_ms"] > 0 and cell["decode_ms"] > 0 for cell in row["by_batch"].values())
    assert set(result["memory_gib"]) == {"build", "load_data", "checks", "cost", "latency"}
    assert result["image_tokens"] == 16 and result["questions"] == SETTINGS["tiny"]["questions"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_random_model_is_built_as_from_pretrained_builds_it(dtype):
    """Parameters in ``dtype``, buffers in theirs, and the non-persistent buffers (rotary
    frequencies, position ids) equal to a normally built model's: ``to_empty`` leaves them garbage."""
    config = _embedded_config()
    loaded = random_llava(config, dtype=dtype, device="cpu")
    reference = transformers.LlavaForConditionalGeneration(config)
    expected = dict(reference.named_buffers())
    buffers = dict(loaded.model.named_buffers())
    assert set(buffers) == set(expected)
    for name, buffer in buffers.items():
        assert buffer.dtype == expected[name].dtype and torch.equal(buffer, expected[name]), name
    params = dict(loaded.model.named_parameters())
    assert {p.dtype for p in params.values()} == {getattr(torch, dtype)}
    down = params["model.language_model.layers.0.mlp.down_proj.weight"].detach().float()
    assert 0.015 < float(down.std()) < 0.025  # initializer_range 0.02, not left empty
    assert torch.equal(params["model.language_model.norm.weight"].detach().float(), torch.ones(config.text_config.hidden_size))
    assert config.image_token_id == loaded.model.config.image_token_id  # the copy is changed, not the caller's


def test_llava_1_5_7b_builds_on_the_meta_device_with_576_image_tokens():
    from PIL import Image

    from searchskip.eval.generate import prompt_inputs
    from searchskip.flops.geometry import known_config

    loaded = random_llava(known_config("llava-hf/llava-1.5-7b-hf"), dtype="float16", device="meta")
    params = list(loaded.model.parameters())
    assert sum(p.numel() for p in params) == 7_063_427_072
    assert {p.dtype for p in params} == {torch.float16} and {p.device.type for p in params} == {"meta"}
    loaded.device = "cpu"
    inputs = prompt_inputs(loaded, [Image.new("RGB", (300, 200), "red")], ["what color is the shape?"])
    assert int((inputs["input_ids"] == loaded.model.config.image_token_id).sum()) == 576
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)


def test_without_a_gpu_the_command_says_so_and_points_at_tiny(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--tiny" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_a_bad_job_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--tiny", "--out", str(tmp_path / "b"), "--job", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
