"""Unsafe loading: pickled weights are refused unless the job allows them, and even then only
`torch.load(weights_only=True)` runs (a malicious pickle's code never executes);
`trust_remote_code` needs a pinned commit. (YAML: tests/reliability/test_bad_input.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from helpers import REPO, demo_job
from searchskip.cli import main

EMBEDDED = REPO / "searchskip/zoo/weights/tiny-llava-easyvqa"


class Payload:
    """Unpickling this runs `open(marker, 'w')`: what an attacker's checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_model(tmp_path: Path) -> tuple[Path, Path]:
    """The embedded model's folder with its weights as a pickled `pytorch_model.bin` that also
    carries a code-running object; returns (folder, marker file the payload would create)."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(EMBEDDED, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    state["evil"] = Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    return folder, marker


def test_pickled_weights_are_refused_by_default(tmp_path, capsys):
    folder, marker = pickled_model(tmp_path)
    job = demo_job(tmp_path, questions=None, model={"id": str(folder)})
    assert main(["eval", str(job), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "model.allow_pickle" in err and "pytorch_model.bin" in err and "Traceback" not in err
    assert not marker.exists()


def test_allowed_pickles_load_with_weights_only_so_the_payload_never_runs(tmp_path, capsys):
    folder, marker = pickled_model(tmp_path)
    job = demo_job(tmp_path, questions=None, model={"id": str(folder), "allow_pickle": True})
    code = main(["eval", str(job), "--limit", "2"])
    err = capsys.readouterr().err
    assert not marker.exists(), "the pickle's code ran"
    assert code == 2 and "Traceback" not in err, err
    assert "model.id" in err and "weights_only=True" in err  # refused without running it


def test_remote_code_needs_a_pinned_commit(tmp_path, capsys):
    job = demo_job(tmp_path, questions=None, model={"id": str(EMBEDDED), "trust_remote_code": True, "revision": "main"})
    assert main(["eval", str(job), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "model.revision" in err and "trust_remote_code" in err and "commit" in err and "'main'" in err
