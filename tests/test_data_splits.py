"""Split roles, the by-image validation carve, disjointness and stratified subsets."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest

from searchskip.config.job import CarveSpec, DataSpec, SubsetSpec
from searchskip.data import (
    assert_disjoint,
    carved_image_ids,
    check_splits,
    image_ids,
    load_eval_split,
    load_split,
    select_subset,
)
from searchskip.data.schema import dataset_from_arrays
from searchskip.data.subset import allocate, stream_seed
from searchskip.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def easy():
    spec = DataSpec()
    return spec, {role: load_split(spec, role, check_disjoint=False) for role in ("train", "validation", "test")}


def synthetic(type_counts: dict[str, int], questions_per_image: int = 1) -> datasets.Dataset:
    """A schema dataset with the given number of questions per question_type (types interleaved)."""
    types = []
    pools = {t: n for t, n in type_counts.items()}
    while any(pools.values()):
        for t in sorted(pools):
            if pools[t]:
                types.append(t)
                pools[t] -= 1
    n = len(types)
    return dataset_from_arrays(
        {
            "question_id": [f"q{i}" for i in range(n)],
            "image": [_PNG] * n,
            "question": ["?"] * n,
            "answers": [["a"]] * n,
            "question_type": types,
            "answer_type": ["other"] * n,
            "image_id": [f"img{i // questions_per_image}" for i in range(n)],
        }
    )


# --- roles and the carve --------------------------------------------------------------


def test_easy_vqa_roles_are_disjoint_and_cover_train(easy):
    spec, s = easy
    train, val, test = s["train"], s["validation"], s["test"]
    assert len(train) + len(val) == 38575 and len(test) == 9673
    assert len(set(image_ids(val))) == 400  # round(0.1 * 4000) images
    assert_disjoint(train, val, ("train", "validation"))
    assert_disjoint(train, test, ("train", "test"))
    assert_disjoint(val, test, ("validation", "test"))
    assert check_splits(spec) == {"train": len(train), "validation": len(val), "test": 9673}


def test_carve_is_deterministic_and_complementary(easy):
    spec, s = easy
    train, val = s["train"], s["validation"]
    again = load_split(spec, "validation", check_disjoint=False)
    assert again["question_id"][:] == val["question_id"][:]
    qids_train, qids_val = set(train["question_id"][:]), set(val["question_id"][:])
    assert not qids_train & qids_val
    assert qids_train | qids_val == {f"train-{i}" for i in range(38575)}
    # validation keeps train's order
    order = [int(q.split("-")[1]) for q in val["question_id"][:]]
    assert order == sorted(order)

    other_seed = DataSpec(carve_validation=CarveSpec(fraction=0.1, seed=1))
    assert set(image_ids(load_split(other_seed, "validation", check_disjoint=False))) != set(image_ids(val))


def test_carve_keeps_questions_of_an_image_together(tmp_path):
    ds = synthetic({"a": 30, "b": 30}, questions_per_image=3)  # 20 images, 3 questions each
    ds.save_to_disk(str(tmp_path / "d"))
    spec = DataSpec(source="disk", path=str(tmp_path / "d"), splits={"train": "all"}, carve_validation=CarveSpec(fraction=0.25, seed=3))
    train, val = load_split(spec, "train"), load_split(spec, "validation")
    assert len(set(image_ids(val))) == 5 and len(val) == 15 and len(train) == 45
    assert_disjoint(train, val, ("train", "validation"))
    assert carved_image_ids(image_ids(ds), CarveSpec(fraction=0.25, seed=3)) == set(image_ids(val))
    with pytest.raises(DataError, match=r"data\.splits\.test"):
        load_split(spec, "test")


def test_carved_ids_depend_only_on_the_set_of_images():
    ids = [f"i{k}" for k in range(50)]
    carve = CarveSpec(fraction=0.2, seed=7)
    chosen = carved_image_ids(ids, carve)
    assert len(chosen) == 10
    assert carved_image_ids(list(reversed(ids)) + ids, carve) == chosen
    assert carved_image_ids(ids, CarveSpec(fraction=0.2, seed=8)) != chosen


def test_missing_roles_name_the_key(tmp_path):
    raw = synthetic({"a": 4})
    pq.write_table(raw.with_format("arrow")[:], tmp_path / "t.parquet")
    only_test = DataSpec(source="parquet", splits={"test": str(tmp_path / "t.parquet")})
    with pytest.raises(DataError, match=r"data\.splits\.validation: .*data\.splits\.train to carve"):
        load_split(only_test, "validation")
    with pytest.raises(DataError, match=r"data\.splits\.train"):
        load_split(only_test, "train")
    with pytest.raises(DataError, match=r"data\.splits\.test"):
        load_split(DataSpec(source="parquet", splits={}), "test")
    with pytest.raises(ConfigError, match=r"data\.splits\.dev"):
        load_split(DataSpec(source="parquet", splits={"dev": "x"}), "test")
    with pytest.raises(ConfigError, match=r"data\.carve_validation"):
        load_split(DataSpec(source="parquet", splits={"validation": "x"}, carve_validation=CarveSpec()), "validation")


def test_validation_overlapping_test_is_refused(tmp_path):
    ds = synthetic({"a": 6}, questions_per_image=2)  # images img0..img2
    table = ds.with_format("arrow")[:]
    pq.write_table(table.slice(0, 4), tmp_path / "val.parquet")  # img0, img1
    pq.write_table(table.slice(2, 4), tmp_path / "test.parquet")  # img1, img2
    spec = DataSpec(source="parquet", splits={"validation": str(tmp_path / "val.parquet"), "test": str(tmp_path / "test.parquet")})
    with pytest.raises(DataError, match=r"validation and test splits share 1 image\(s\): image_id img1"):
        load_split(spec, "validation")
    assert len(load_split(spec, "validation", check_disjoint=False)) == 4
    with pytest.raises(DataError, match=r"share 2 image"):
        assert_disjoint(["x", "y", "z"], ["y", "z"], ("a", "b"))


# --- subsets --------------------------------------------------------------------------


def test_subset_whole_split_when_size_is_none_or_large():
    ds = synthetic({"a": 5, "b": 3})
    assert select_subset(ds, SubsetSpec(size=None))["question_id"][:] == ds["question_id"][:]
    assert select_subset(ds, SubsetSpec(size=8))["question_id"][:] == ds["question_id"][:]
    assert select_subset(ds, SubsetSpec(size=100))["question_id"][:] == ds["question_id"][:]


def test_subset_exact_size_stratified_sorted():
    ds = synthetic({"a": 50, "b": 30, "c": 20})
    sub = select_subset(ds, SubsetSpec(size=10, seed=0))
    assert len(sub) == 10
    assert collections.Counter(sub["question_type"][:]) == {"a": 5, "b": 3, "c": 2}
    idx = [int(q[1:]) for q in sub["question_id"][:]]
    assert idx == sorted(idx) and len(set(idx)) == 10
    # 7 of (50, 30, 20): quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1; the spare one goes to the largest remainder
    assert collections.Counter(select_subset(ds, SubsetSpec(size=7))["question_type"][:]) == {"a": 4, "b": 2, "c": 1}
    assert allocate({"x": 1, "y": 1, "z": 1}, 2) == {"x": 1, "y": 1, "z": 0}
    for size in (1, 13, 33, 99):
        assert len(select_subset(ds, SubsetSpec(size=size, seed=size))) == size


def test_subset_proportions_on_easy_vqa(easy):
    _, s = easy
    test = s["test"]
    sub = select_subset(test, SubsetSpec(size=500, seed=0))
    assert len(sub) == 500
    full = collections.Counter(test["question_type"][:])
    got = collections.Counter(sub["question_type"][:])
    for qt, n in full.items():
        assert abs(got[qt] - 500 * n / len(test)) < 1


def test_subset_seeded_and_deterministic():
    ds = synthetic({"a": 40, "b": 25, "c": 15})
    first = select_subset(ds, SubsetSpec(size=20, seed=5))["question_id"][:]
    assert select_subset(ds, SubsetSpec(size=20, seed=5))["question_id"][:] == first
    assert select_subset(ds, SubsetSpec(size=20, seed=6))["question_id"][:] != first
    assert stream_seed(5, "a") == stream_seed(5, "a") != stream_seed(5, "b")


_SCRIPT = """
import json
from searchskip.config.job import DataSpec, SubsetSpec
from searchskip.data import load_split, select_subset
from searchskip.data.subset import stream_seed
ds = select_subset(load_split(DataSpec(), "test"), SubsetSpec(size=50, seed=11))
print(json.dumps([stream_seed(11, "color"), ds["question_id"][:]]))
"""


def test_subset_same_across_processes(easy):
    _, s = easy
    expected = select_subset(s["test"], SubsetSpec(size=50, seed=11))["question_id"][:]
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        outputs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert outputs[0][1] == expected
    assert outputs[0][0] == stream_seed(11, "color")


def test_load_eval_split_applies_the_role_subset(easy):
    spec = DataSpec(validation_subset=SubsetSpec(size=120, seed=2), test_subset=SubsetSpec(size=None))
    val = load_eval_split(spec, "validation")
    assert len(val) == 120
    assert set(val["question_id"][:]) <= set(easy[1]["validation"]["question_id"][:])
    assert len(load_eval_split(spec, "test")) == 9673
    assert len(load_eval_split(DataSpec(test_subset=SubsetSpec(size=30)), "test", check=True)) == 30
