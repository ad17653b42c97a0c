"""Resuming a study with a changed model, data subset, space, budget, metric or seed is refused:
exit 2, the message names the field and both values, and the study gains no trial."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import REPO, demo_job
from searchskip.cli import main
from searchskip.search.fingerprint import file_sha256
from searchskip.search.storage import open_storage

EMBEDDED_FOLDER = REPO / "searchskip/zoo/weights/tiny-llava-easyvqa"

pytestmark = pytest.mark.usefixtures("one_thread")


def change_space(data: dict, space: Path) -> tuple[str, str]:
    old = file_sha256(space)
    space.write_text(space.read_text().replace("parallel_attn_ffn]", "parallel_attn_ffn, parallel_blocks]"))
    new = file_sha256(space)
    assert new != old, "the space file did not change"
    return "search.space.sha256", new  # the message shows the whole hash


CHANGES = {
    # field: (change the job data in place; return (fingerprint field, fragment of the new value))
    "model": lambda d, s: (d["model"].__setitem__("id", str(EMBEDDED_FOLDER)), ("model.id", str(EMBEDDED_FOLDER)))[1],
    "data subset size": lambda d, s: (d["data"]["validation_subset"].__setitem__("size", 24),
                                      ("data.validation_subset.size", "24"))[1],
    "data subset seed": lambda d, s: (d["data"]["validation_subset"].__setitem__("seed", 7),
                                      ("data.validation_subset.seed", "7"))[1],
    "space": lambda d, s: change_space(d, s),
    "budget": lambda d, s: (d["search"]["budget"].__setitem__("flops_ratio", 0.5),
                            ("search.budget", '"flops_ratio": 0.5'))[1],
    "seed": lambda d, s: (d["search"].__setitem__("seed", 3), ("search.seed", "3"))[1],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mismatch")
    space = folder / "space.yaml"
    space.write_text((REPO / "spaces/per-layer.yaml").read_text())
    path = demo_job(folder, space=str(space), trials=2, seed_plans=False)
    data = yaml.safe_load(path.read_text())
    assert main(["search", str(path), "--no-progress"]) == 0
    return folder, data, space


def trial_count(folder: Path) -> int:
    return len(optuna.load_study(study_name="demo", storage=open_storage(None, folder / "out" / "demo")).trials)


@pytest.mark.parametrize("what", list(CHANGES))
def test_a_changed_field_is_refused_naming_both_values(study, what, capsys):
    folder, data, space = study
    original_space = space.read_text()
    changed = copy.deepcopy(data)
    field, new = CHANGES[what](changed, space)
    path = folder / f"job-{what.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(changed))
    before = trial_count(folder)
    capsys.readouterr()
    try:
        code = main(["search", str(path), "--no-progress", "--trials", "4"])
    finally:
        space.write_text(original_space)
    err = capsys.readouterr().err
    assert code == 2, err
    assert field in err and "the study has" in err and "the job has" in err and new in err
    assert "Traceback" not in err and "--force-new-study" in err
    assert trial_count(folder) == before


def test_a_changed_metric_is_refused(study, capsys, monkeypatch):
    """The metric is the scorer's version (fingerprint.METRIC): a new one must not mix with old scores."""
    import searchskip.search.fingerprint as fp

    folder, data, _ = study
    path = folder / "job.yaml"
    monkeypatch.setattr(fp, "METRIC", fp.METRIC + "-changed")
    capsys.readouterr()
    assert main(["search", str(path), "--no-progress", "--trials", "4"]) == 2
    err = capsys.readouterr().err
    assert "search.metric" in err and fp.METRIC in err
