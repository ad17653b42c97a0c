"""``searchskip validate``: exit codes, what is printed where, and no traceback, ever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from searchskip import cli
from searchskip.commands import validate
from searchskip.errors import DataError

BAD_JOB = "name: t\neval:\n  batch_size: 0\n"


def test_verbs_are_listed_in_one_tuple():
    assert "validate" in cli.VERBS
    parser = cli.build_parser()
    assert "validate" in parser.format_help()


def test_valid_files_print_ok(repo_root, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [str(p) for p in sorted((repo_root / "jobs").glob("*.yaml"))]
    assert files
    assert cli.main(["validate", *files]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"OK {f}" for f in files]
    assert err == ""
    assert not (tmp_path / "outputs").exists()


def test_bad_file_exits_2_naming_file_key_and_rule(write_yaml, capsys):
    path = write_yaml(BAD_JOB, name="bad.yaml")
    assert cli.main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: eval.batch_size: `batch_size >= 1` must hold, but got batch_size=0" in err.splitlines()
    assert "1 of 1 file failed validation" in err
    assert "Traceback" not in err


def test_all_problems_of_all_files_are_reported(write_yaml, repo_root, capsys):
    bad1 = write_yaml("nmae: t\nmodel:\n  device: gpu\n", name="a.yaml")
    bad2 = write_yaml("name: t\nname: u\n", name="b.yaml")
    good = repo_root / "jobs" / "demo.yaml"
    assert cli.main(["validate", str(bad1), str(good), str(bad2)]) == 2
    out, err = capsys.readouterr()
    assert f"OK {good}" in out
    for expected in (f"{bad1}: nmae:", f"{bad1}: name: is required", f"{bad1}: model.device:",
                     f"{bad2}: name: duplicate key 'name'", "2 of 3 files failed validation"):
        assert expected in err, err


def test_brackets_in_keys_are_printed_verbatim(write_yaml, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_yaml("name: t\ndata:\n  source: parquet\n  splits:\n    train: [a/*.parquet]\n"
                      "    test: [b/*.parquet]\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.splits.train[0]:" in err and "data.splits.test[0]:" in err


def test_yaml_errors_are_reported_like_other_problems(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert cli.main(["validate", str(missing), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: file does not exist" in err
    assert f"{tmp_path}: is a directory" in err


def test_unknown_kind_is_a_clear_error(write_yaml, capsys):
    path = write_yaml("foo: 1\n", name="what.yaml")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: cannot tell what kind of file this is" in err
    assert "jobs/" in err


def test_kind_comes_from_the_folder_first(write_yaml, capsys):
    as_job = write_yaml("foo: 1\n", name="jobs/x.yaml")  # no job key, but in jobs/: a job with an unknown key
    space = write_yaml("name: t\n", name="spaces/s.yaml")  # job keys, but in spaces/: a space
    assert validate.detect_kind(as_job, {"foo": 1}) == "job"
    assert validate.detect_kind(space, {"name": "t"}) == "space"
    assert validate.detect_kind(Path("elsewhere/x.yaml"), {"model": {}}) == "job"
    assert validate.detect_kind(Path("elsewhere/x.yaml"), {"foo": 1}) is None
    assert cli.main(["validate", str(as_job), str(space)]) == 2
    err = capsys.readouterr().err
    assert f"{as_job}: foo: is not a known setting" in err
    assert f"{space}: name: is not a known setting" in err  # validated as a space, not as a job
    assert f"{space}: ops: is required but missing" in err


@pytest.mark.parametrize("argv", [[], ["validate"], ["bogus"], ["validate", "--nope", "x.yaml"]],
                         ids=["no-command", "no-file", "unknown-verb", "unknown-option"])
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out


def test_user_errors_from_a_verb_exit_2_without_traceback(monkeypatch, write_yaml, capsys):
    def boom(path):
        raise DataError("the data has no `question` column")

    monkeypatch.setattr(validate, "validate_file", boom)
    assert cli.main(["validate", str(write_yaml("name: t\n"))]) == 2
    assert capsys.readouterr().err.strip() == "error: the data has no `question` column"


def test_interrupt_exits_130(monkeypatch, write_yaml, capsys):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "validate_file", interrupted)
    assert cli.main(["validate", str(write_yaml("name: t\n"))]) == 130
    assert "interrupted" in capsys.readouterr().err


def run_module(args: list[str], cwd: Path, repo_root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "searchskip", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_m_searchskip_validate(write_yaml, tmp_path, repo_root):
    bad = write_yaml(
        f"name: t\noutputs: {tmp_path / 'out'}\nmodel:\n  trust_remote_code: true\n  id: org/m\n"
        "data:\n  validation_subset: {size: -3}\n",
        name="bad.yaml",
    )
    result = run_module(["validate", "bad.yaml", str(repo_root / "jobs" / "demo.yaml")], tmp_path, repo_root)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"OK {repo_root / 'jobs' / 'demo.yaml'}" in result.stdout
    assert "bad.yaml: model.revision: must be pinned to a full 40-hex commit hash" in result.stderr
    assert "bad.yaml: data.validation_subset.size: `size >= 1` must hold" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written at all
    assert bad.exists()


def test_python_m_searchskip_valid_jobs_exit_0(tmp_path, repo_root):
    result = run_module(["validate", *map(str, sorted((repo_root / "jobs").glob("*.yaml")))], tmp_path, repo_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("OK ") == len(list((repo_root / "jobs").glob("*.yaml")))
    assert list(tmp_path.iterdir()) == []
