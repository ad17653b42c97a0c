"""``searchskip search`` / ``resume`` / ``ls`` end to end on the embedded demo job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from searchskip import cli

REPO = Path(__file__).resolve().parents[1]


def sk(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "searchskip", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_search_resume_ls_verbs_are_registered():
    for verb in ("search", "resume", "ls"):
        assert verb in cli.VERBS
        assert verb in cli.build_parser().format_help()


def test_demo_search_then_ls_json_then_resume(tmp_path):
    out = tmp_path / "runs"
    done = sk("search", "jobs/demo.yaml", "--trials", "4", "--outputs", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "4 model evaluations (" in done.stdout and "ran no model" in done.stdout
    folder = out / "demo"
    assert (folder / "job.yaml").read_text() == (REPO / "jobs/demo.yaml").read_text()
    assert (folder / "study.journal").is_file()
    assert not list((folder / "workers").glob("*"))  # the worker's registration is removed at exit

    listed = sk("ls", str(folder), "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["counts"]["counted"] == 4 and data["directions"] == ["maximize"]
    assert data["budget"]["ratio"] == 0.8
    assert len(data["trials"]) == 4
    for t in data["trials"]:
        assert {"number", "state", "accuracy", "flops", "flops_ratio", "plan"} <= set(t)
        assert t["state"] in ("COMPLETE", "PRUNED")
        if t["state"] == "COMPLETE":
            assert 0 <= t["accuracy"] <= 1 and t["flops_ratio"] <= 0.8 + 1e-9 and t["plan"]["version"] == 1
    board = [next(t for t in data["trials"] if t["number"] == n) for n in data["leaderboard"]]
    assert board and [t["accuracy"] for t in board] == sorted((t["accuracy"] for t in board), reverse=True)
    assert set(data["pareto"]) <= set(data["leaderboard"])
    assert data["trials"][0]["seed"] == "paper:skip_block/interval=2/start=0"  # the one seed fitting 0.8

    best, paper = data["baselines"]["search"], data["baselines"]["paper"]
    assert best["trial"] == data["leaderboard"][0]
    assert paper is None or paper["seed"].startswith("paper:")

    table = sk("ls", str(folder))
    assert table.returncode == 0 and "best feasible plans" in table.stdout and "Pareto front" in table.stdout
    assert f"best plan within the budget: trial {best['trial']}" in table.stdout
    assert "the best paper interval plan" in table.stdout  # the search states how it compares, honestly

    # resume from another directory: the job copy and run.json say where the job's paths resolve
    resumed = sk("resume", str(folder), "--trials", "6", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(sk("ls", str(folder), "--json").stdout)
    assert again["counts"]["counted"] == 6 and len(again["trials"]) == 6


def test_search_refuses_a_job_without_search_section(tmp_path, capsys):
    job = tmp_path / "j.yaml"
    job.write_text("name: j\n")
    assert cli.main(["search", str(job)]) == 2
    assert "no `search` section" in capsys.readouterr().err


def test_workers_override_with_sqlite_is_refused(tmp_path, capsys):
    text = (REPO / "jobs/demo.yaml").read_text().replace("storage: null", "storage: sqlite:///x.db")
    text = text.replace("space: spaces/per-layer.yaml", f"space: {REPO / 'spaces/per-layer.yaml'}")
    job = tmp_path / "j.yaml"
    job.write_text(text)
    assert cli.main(["search", str(job), "--workers", "2", "--outputs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sqlite:///x.db" in err and "workers=2" in err


def test_changed_job_is_refused_by_the_cli(tmp_path, capsys):
    base = (REPO / "jobs/demo.yaml").read_text().replace(
        "space: spaces/per-layer.yaml", f"space: {REPO / 'spaces/per-layer.yaml'}").replace(
        "size: 500", "size: 16")
    job = tmp_path / "j.yaml"
    job.write_text(base)
    out = str(tmp_path / "o")
    assert cli.main(["search", str(job), "--trials", "1", "--outputs", out, "--no-progress"]) == 0
    job.write_text(base.replace("flops_ratio: 0.8 ", "flops_ratio: 0.7 "))
    capsys.readouterr()
    assert cli.main(["search", str(job), "--trials", "2", "--outputs", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "search.budget" in err and "0.8" in err and "0.7" in err and "--force-new-study" in err
    assert cli.main(["search", str(job), "--trials", "1", "--outputs", out, "--no-progress",
                     "--force-new-study"]) == 0


def test_ls_on_a_folder_without_a_study(tmp_path, capsys):
    assert cli.main(["ls", str(tmp_path)]) == 2
    assert "not a study folder" in capsys.readouterr().err


def test_interrupted_messages_start_on_a_line_of_their_own(tmp_path, monkeypatch, capsys):
    """A terminal echoes Ctrl-C as ``^C`` with no line end: the report after the first Ctrl-C and the
    notices of both (search stopped after its trial; interrupted at once) start below it, the notice
    apart from the table."""
    import argparse

    import optuna

    from searchskip.commands import search as search_cmd
    from searchskip.commands import validate
    from searchskip.search import run as run_mod
    from searchskip.search import study as study_mod

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stopped = study_mod.SearchResult(study=optuna.create_study(), study_dir=tmp_path, interrupted=True)
    monkeypatch.setattr(run_mod, "run_search", lambda *a, **k: stopped)
    args = argparse.Namespace(trials=None, timeout=None, no_progress=True)
    capsys.readouterr()
    assert search_cmd.search_and_report(None, args, study=None, outputs=None, folder=tmp_path,
                                        force_new_study=False) == 130
    out, err = capsys.readouterr()
    assert err.startswith("\n") and "\n\ninterrupted: stopped after the running trial was recorded" in err, err

    def interrupt(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "validate_file", interrupt)
    assert cli.main(["validate", "x.yaml"]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"
