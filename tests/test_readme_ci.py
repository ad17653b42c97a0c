"""The README's two commands are what CI runs, and they do what the README says."""

from __future__ import annotations

import subprocess


def _block(repo_root, marker: str) -> str:
    script = (repo_root / ".ci" / "run").read_text()
    block_fn = script[script.index("block() {"):script.index("\n}\n") + 3]
    out = subprocess.run(["bash", "-c", f"{block_fn}\nblock '{marker}'"], cwd=repo_root,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_ci_reads_the_main_command_from_the_readme(repo_root):
    cmd = _block(repo_root, "<!-- ci:main -->")
    assert "pip install torch==2.13.0" in cmd
    assert cmd.index("torch==2.13.0") < cmd.index("pip install -e .")  # torch first: no CUDA wheels
    assert cmd.endswith("searchskip search jobs/demo.yaml")


def test_ci_reads_the_test_command_from_the_readme(repo_root):
    cmd = _block(repo_root, "<!-- ci:test -->")
    assert "pip install -e '.[test]'" in cmd and cmd.endswith("pytest -q")
    assert cmd.index("torch==2.13.0") < cmd.index("pip install -e")


def test_outputs_is_kept_empty_in_git(repo_root):
    tracked = subprocess.run(["git", "ls-files", "outputs"], cwd=repo_root, capture_output=True, text=True).stdout.split()
    assert tracked in ([], ["outputs/.gitkeep"])


def test_every_dependency_has_a_tested_floor_and_ceiling(repo_root):
    out = subprocess.run(["python3", str(repo_root / ".ci" / "oldest-constraints")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pins = dict(line.split("==") for line in out.stdout.split())
    assert {"torch", "transformers", "optuna", "ray", "datasets", "peft"} <= set(pins)


def test_ci_proves_the_oldest_end_of_the_ranges(repo_root):
    script = (repo_root / ".ci" / "run").read_text()
    assert "-c .ci-oldest-constraints.txt -e '.[test]'" in script
    assert script.index("oldest-constraints") > script.index('for marker in "<!-- ci:main -->"')


def test_ci_serves_exports_through_the_real_vllm(repo_root):
    """The vLLM serving tests skip without SEARCHSKIP_VLLM_PYTHON; CI makes vLLM's virtualenv and sets it."""
    script = (repo_root / ".ci" / "run").read_text()
    assert "bash .ci/vllm-env .venv-vllm" in script
    assert "SEARCHSKIP_VLLM_PYTHON=" in script and "tests/test_vllm_serving.py" in script
