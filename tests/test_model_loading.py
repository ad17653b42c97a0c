"""Safe-by-default model loading: clear errors for unsafe, unknown or unreachable models."""

from __future__ import annotations

import time

import pytest
import torch

from searchskip.config.job import ModelSpec
from searchskip.errors import ModelError, OfflineError
from searchskip.models import check_safety, load_model, resolve_source


def test_unknown_embedded_model_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown embedded model 'nope'.*tiny-llava-easyvqa"):
        resolve_source(ModelSpec(id="embedded:nope"))


def test_trust_remote_code_needs_a_pinned_commit():
    with pytest.raises(ModelError, match="40-character commit"):
        check_safety(ModelSpec(id="org/model", trust_remote_code=True, revision="main"), "org/model")
    check_safety(ModelSpec(id="org/model", trust_remote_code=True, revision="a" * 40), "org/model")


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled weights.*allow_pickle"):
        check_safety(ModelSpec(id=str(tmp_path)), str(tmp_path))
    check_safety(ModelSpec(id=str(tmp_path), allow_pickle=True), str(tmp_path))


def test_hub_model_offline_fails_fast_and_clearly():
    start = time.monotonic()
    with pytest.raises(OfflineError, match="llava-hf/llava-1.5-7b-hf.*could not be reached"):
        load_model(ModelSpec(id="llava-hf/llava-1.5-7b-hf"))
    assert time.monotonic() - start < 20


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a loadable model folder"):
        load_model(ModelSpec(id=str(tmp_path)))


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA device"):
        load_model(ModelSpec(device="cuda"))


def test_unsupported_text_only_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"GPT2LMHeadModel \(model_type 'gpt2'\) is not a supported architecture"):
        load_model(ModelSpec(id=str(tmp_path)))  # refused from config.json, before weights or processor load
