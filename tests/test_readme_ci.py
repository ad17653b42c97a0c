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
