"""Data sources and the VQA schema: every source loads tiny local data onto the schema."""

from __future__ import annotations

import io
import json
import time
import typing

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as PILImage

from searchskip.config.job import SCHEMA_FIELDS, DataSpec
from searchskip.data import FEATURES, LOADERS, check_images, load_split, register, to_schema
from searchskip.data.schema import derive_answer_type
from searchskip.data.sources import easy_vqa as easy_vqa_source
from searchskip.errors import ConfigError, DataError, OfflineError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, and the datasets cache in tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def png(color: str = "red", size: int = 8, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def raw_rows() -> dict[str, list]:
    """Four questions on three images, in VQAv2's own column layout (ints, answer dicts)."""
    return {
        "question_id": [10, 11, 12, 13],
        "image": [png("red"), png("red"), png("blue"), png("green")],
        "question": ["is it red?", "how many?", "what color?", "what is it?"],
        "answers": [
            [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}] * 3,
            [{"answer": "2", "answer_confidence": "yes", "answer_id": 1}],
            [{"answer": "blue", "answer_confidence": "yes", "answer_id": 1}],
            [{"answer": "square", "answer_confidence": "maybe", "answer_id": 1}],
        ],
        "question_type": ["is it", "how many", "what color", None],
        "image_id": [1, 1, 2, 3],
    }


def raw_dataset() -> datasets.Dataset:
    ds = datasets.Dataset.from_dict(raw_rows())
    return ds.cast_column("image", datasets.Image())


def assert_schema(ds: datasets.Dataset) -> None:
    assert isinstance(ds, datasets.Dataset)
    assert tuple(ds.column_names) == SCHEMA_FIELDS
    assert ds.features == FEATURES


# --- schema ---------------------------------------------------------------------------


def test_to_schema_coerces_vqav2_layout():
    ds = to_schema(raw_dataset(), {}, "tiny")
    assert_schema(ds)
    assert ds["question_id"][:] == ["10", "11", "12", "13"]
    assert ds["image_id"][:] == ["1", "1", "2", "3"]
    assert ds["answers"][:] == [["yes"] * 3, ["2"], ["blue"], ["square"]]
    assert ds["question_type"][:] == ["is it", "how many", "what color", "unknown"]
    assert ds["answer_type"][:] == ["yes/no", "number", "other", "other"]
    img = ds[2]["image"]
    assert isinstance(img, PILImage.Image) and img.getpixel((0, 0)) == (0, 0, 255)


def test_to_schema_column_mapping_single_answer_and_derived_types():
    rows = {
        "qid": ["a", "b", "c"],
        "picture": [png(), png("blue"), png("green")],
        "text": ["is it?", "how many?", "what?"],
        "label": ["no", "3", "cat"],
        "img": ["x", "y", "z"],
        "extra": [1, 2, 3],
    }
    mapping = {"question_id": "qid", "image": "picture", "question": "text", "answers": "label", "image_id": "img"}
    ds = to_schema(datasets.Dataset.from_dict(rows), mapping, "mapped")
    assert_schema(ds)
    assert ds["answers"][:] == [["no"], ["3"], ["cat"]]
    assert ds["answer_type"][:] == ["yes/no", "number", "other"]
    assert ds["question_type"][:] == ["unknown"] * 3
    assert ds["question"][:] == rows["text"]


def test_missing_column_error_names_dataset_field_columns_and_rule():
    rows = raw_rows()
    del rows["answers"]
    with pytest.raises(DataError) as err:
        to_schema(datasets.Dataset.from_dict(rows), {}, "my/file.parquet")
    msg = str(err.value)
    assert "my/file.parquet" in msg
    assert "needs a column for 'answers' (map one with data.columns.answers)" in msg
    for col in ("question_id", "image", "question", "question_type", "image_id"):
        assert col in msg.split("the columns it has:")[1]


def test_mapping_to_absent_column_and_unknown_field():
    with pytest.raises(DataError, match=r"data\.columns\.answers maps 'answers' to column 'labels'"):
        to_schema(raw_dataset(), {"answers": "labels"}, "tiny")
    with pytest.raises(ConfigError, match=r"data\.columns\.answer: is not a schema field"):
        to_schema(raw_dataset(), {"answer": "answers"}, "tiny")


def test_empty_answers_are_an_error_naming_the_question():
    rows = raw_rows()
    rows["answers"][1] = []
    with pytest.raises(DataError, match=r"question_id 11"):
        to_schema(datasets.Dataset.from_dict(rows), {}, "tiny")


def test_derive_answer_type():
    assert derive_answer_type(["yes", "No "]) == "yes/no"
    assert derive_answer_type(["2", "3.5"]) == "number"
    assert derive_answer_type(["2", "two"]) == "other"


def test_unreadable_and_missing_images(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    rows = {
        "question_id": ["q0", "q1", "q2"],
        "image": [{"bytes": None, "path": str(good)}, {"bytes": None, "path": str(broken)}, {"bytes": b"junk", "path": None}],
        "question": ["a?", "b?", "c?"],
        "answers": [["x"], ["y"], ["z"]],
        "image_id": ["i0", "i1", "i2"],
    }
    ds = to_schema(datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()), {}, "tiny")
    with pytest.raises(DataError) as err:
        check_images(ds)
    msg = str(err.value)
    assert "2 of 3 image(s)" in msg
    assert str(broken) in msg and "q1" in msg and "q2" in msg and "<embedded bytes>" in msg
    assert "q0" not in msg
    assert check_images(ds.select([0])) == 1

    rows["image"] = [str(good), str(tmp_path / "gone.png"), str(good)]
    with pytest.raises(DataError, match=r"image file not found .*q1 \(.*gone\.png\)"):
        to_schema(datasets.Dataset.from_dict(rows), {}, "tiny")


# --- easy_vqa -------------------------------------------------------------------------


def test_easy_vqa_loads_with_schema_counts_and_types():
    start = time.perf_counter()
    train = to_schema(LOADERS["easy_vqa"](DataSpec(), "train", "train").dataset)
    elapsed = time.perf_counter() - start
    test = to_schema(LOADERS["easy_vqa"](DataSpec(), "test", "test").dataset)
    assert_schema(train)
    assert_schema(test)
    assert (len(train), len(test)) == (38575, 9673)
    assert elapsed < 30, f"loading easy_vqa train took {elapsed:.1f}s"
    assert len(set(train["image_id"])) == 4000 and len(set(test["image_id"])) == 1000
    assert train[0]["question_id"] == "train-0" and test[5]["question_id"] == "test-5"
    assert all(i.startswith("train-") for i in train["image_id"])

    qtypes = train["question_type"][:]
    answers = train["answers"][:]
    atypes = train["answer_type"][:]
    assert set(qtypes) == set(easy_vqa_source.QUESTION_TYPES)
    for qt, ans, at in zip(qtypes, answers, atypes):
        assert len(ans) == 10 and len(set(ans)) == 1
        a = ans[0]
        if qt.startswith("yes/no"):
            assert a in ("yes", "no") and at == "yes/no"
        elif qt == "color":
            assert a in easy_vqa_source.COLORS and at == "other"
        else:
            assert a in easy_vqa_source.SHAPES and at == "other"
    assert test[0]["image"].size == (64, 64)


@pytest.mark.parametrize(
    "question, qtype",
    [
        ("what color is the circle?", "color"),
        ("what is the color of the shape?", "color"),
        ("what shape is present?", "shape"),
        ("what is the red shape?", "shape"),
        ("is there a red shape?", "yes/no color"),
        ("does the image not contain a blue shape?", "yes/no color"),
        ("is there a circle?", "yes/no shape"),
        ("is no triangle present?", "yes/no shape"),
    ],
)
def test_easy_vqa_question_types(question, qtype):
    assert easy_vqa_source.question_type(question) == qtype


def test_easy_vqa_rejects_unknown_split_and_columns():
    with pytest.raises(DataError, match=r"data\.splits\.test: easy_vqa has the splits train, test"):
        load_split(DataSpec(splits={"train": "train", "test": "validation"}), "test")
    with pytest.raises(ConfigError, match=r"data\.columns"):
        load_split(DataSpec(columns={"answers": "label"}), "test")


# --- disk -----------------------------------------------------------------------------


def test_disk_single_dataset(tmp_path):
    raw_dataset().save_to_disk(str(tmp_path / "one"))
    spec = DataSpec(source="disk", path=str(tmp_path / "one"), splits={"test": "all"})
    ds = load_split(spec, "test")
    assert_schema(ds)
    assert ds["question_id"][:] == ["10", "11", "12", "13"]
    assert ds[3]["image"].getpixel((0, 0)) == (0, 128, 0)

    two_roles = DataSpec(source="disk", path=str(tmp_path / "one"), splits={"test": "all", "validation": "all"})
    with pytest.raises(DataError, match=r"single Dataset"):
        load_split(two_roles, "test")


def test_disk_datasetdict_with_column_mapping(tmp_path):
    base = raw_dataset().rename_column("answers", "labels")
    dd = datasets.DatasetDict({"train": base.select([0, 1]), "validation": base.select([2, 3])})
    dd.save_to_disk(str(tmp_path / "dict"))
    spec = DataSpec(
        source="disk",
        path=str(tmp_path / "dict"),
        splits={"train": "train", "validation": "validation", "test": "validation"},
        columns={"answers": "labels"},
    )
    test = load_split(spec, "test")
    train = load_split(spec, "train")
    assert_schema(test)
    assert test["question_id"][:] == ["12", "13"] and train["question_id"][:] == ["10", "11"]
    assert test["answers"][:] == [["blue"], ["square"]]
    with pytest.raises(DataError, match=r"data\.splits\.test: .* splits train, validation; 'dev'"):
        load_split(DataSpec(source="disk", path=str(tmp_path / "dict"), splits={"test": "dev"}, columns={"answers": "labels"}), "test")
    with pytest.raises(DataError, match=r"no such folder"):
        load_split(DataSpec(source="disk", path=str(tmp_path / "nope"), splits={"test": "x"}), "test")


# --- parquet --------------------------------------------------------------------------


def test_parquet_with_image_bytes(tmp_path):
    rows = raw_rows()
    table = pa.table(
        {
            "id": pa.array(rows["question_id"], pa.int64()),
            "img_bytes": pa.array(rows["image"], pa.binary()),
            "question": rows["question"],
            "answer": ["yes", "2", "blue", "square"],
            "image_id": pa.array(rows["image_id"], pa.int64()),
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "pq" / "part-0.parquet")
    pq.write_table(table.slice(2, 2), tmp_path / "pq" / "part-1.parquet")
    spec = DataSpec(
        source="parquet",
        splits={"test": str(tmp_path / "pq" / "part-*.parquet")},
        columns={"question_id": "id", "image": "img_bytes", "answers": "answer"},
    )
    ds = load_split(spec, "test")
    assert_schema(ds)
    assert ds["question_id"][:] == ["10", "11", "12", "13"]
    assert ds["answers"][:] == [["yes"], ["2"], ["blue"], ["square"]]
    assert ds["answer_type"][:] == ["yes/no", "number", "other", "other"]
    assert ds[2]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert check_images(ds) == 3

    one_file = DataSpec(source="parquet", splits={"test": [str(tmp_path / "pq" / "part-1.parquet")]}, columns=spec.columns)
    assert load_split(one_file, "test")["question_id"][:] == ["12", "13"]


def test_parquet_written_by_datasets_keeps_image_feature(tmp_path):
    raw_dataset().to_parquet(str(tmp_path / "vqa.parquet"))
    ds = load_split(DataSpec(source="parquet", splits={"test": str(tmp_path / "vqa.parquet")}), "test")
    assert_schema(ds)
    assert ds["answers"][1] == ["2"]
    assert ds[0]["image"].getpixel((0, 0)) == (255, 0, 0)


def test_parquet_no_match_names_pattern(tmp_path):
    pattern = str(tmp_path / "missing-*.parquet")
    with pytest.raises(DataError, match=r"data\.splits\.test: no file matches .*missing-\*\.parquet"):
        load_split(DataSpec(source="parquet", splits={"test": pattern}), "test")
    with pytest.raises(DataError, match=r"nofile\.parquet: no such file"):
        load_split(DataSpec(source="parquet", splits={"test": str(tmp_path / "nofile.parquet")}), "test")


# --- vqav2_json -----------------------------------------------------------------------


def write_vqav2(tmp_path, drop_annotation: int | None = None, drop_image: int | None = None) -> dict[str, str]:
    images = tmp_path / "val2014"
    images.mkdir(exist_ok=True)
    files = {42: "COCO_val2014_000000000042.jpg", 7: "7.png", 300: "COCO_val2014_000000000300.jpg"}
    colors = {42: "red", 7: "blue", 300: "green"}
    for iid, name in files.items():
        if iid == drop_image:
            continue
        PILImage.new("RGB", (16, 12), colors[iid]).save(images / name)
    (images / "README.txt").write_text("not an image")
    questions = [
        {"image_id": 42, "question": "Is the picture red?", "question_id": 42000},
        {"image_id": 42, "question": "How many shapes?", "question_id": 42001},
        {"image_id": 7, "question": "What color is it?", "question_id": 7000},
        {"image_id": 300, "question": "What is this?", "question_id": 300000},
    ]
    answers = {42000: ["yes"] * 9 + ["no"], 42001: ["1"] * 10, 7000: ["blue"] * 8 + ["navy"] * 2, 300000: ["grass"] * 10}
    types = {42000: ("is the", "yes/no"), 42001: ("how many", "number"), 7000: ("what color is", "other"), 300000: ("what is this", "other")}
    annotations = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers[q["question_id"]])],
            "multiple_choice_answer": answers[q["question_id"]][0],
            "question_type": types[q["question_id"]][0],
            "answer_type": types[q["question_id"]][1],
        }
        for q in questions
        if q["question_id"] != drop_annotation
    ]
    qfile, afile = tmp_path / "questions.json", tmp_path / "annotations.json"
    qfile.write_text(json.dumps({"info": {}, "questions": questions}))
    afile.write_text(json.dumps({"info": {}, "annotations": annotations}))
    return {"questions": str(qfile), "annotations": str(afile), "images": str(images)}


def test_vqav2_json(tmp_path):
    spec = DataSpec(source="vqav2_json", splits={"test": write_vqav2(tmp_path)})
    ds = load_split(spec, "test")
    assert_schema(ds)
    assert ds["question_id"][:] == ["42000", "42001", "7000", "300000"]
    assert ds["image_id"][:] == ["42", "42", "7", "300"]
    assert ds["answers"][2] == ["blue"] * 8 + ["navy"] * 2
    assert ds["question_type"][:] == ["is the", "how many", "what color is", "what is this"]
    assert ds["answer_type"][:] == ["yes/no", "number", "other", "other"]
    assert ds[2]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert ds[3]["image"].size == (16, 12)
    assert check_images(ds) == 3


def test_vqav2_json_missing_annotation_or_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    loc = write_vqav2(tmp_path / "a", drop_annotation=7000)
    with pytest.raises(DataError) as err:
        load_split(DataSpec(source="vqav2_json", splits={"test": loc}), "test")
    assert loc["annotations"] in str(err.value) and "question_id 7000" in str(err.value)

    loc = write_vqav2(tmp_path / "b", drop_image=300)
    with pytest.raises(DataError) as err:
        load_split(DataSpec(source="vqav2_json", splits={"test": loc}), "test")
    assert loc["images"] in str(err.value) and "question_id 300000 (image 300)" in str(err.value)

    with pytest.raises(ConfigError, match=r"data\.splits\.test: must be \{questions"):
        load_split(DataSpec(source="vqav2_json", splits={"test": loc["questions"]}), "test")


# --- hub and the registry -------------------------------------------------------------


def test_hub_offline_raises_offline_error_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import huggingface_hub.constants as hc

    before = (hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    spec = DataSpec(source="hub", id="searchskip-tests/no-such-dataset", splits={"test": "validation"})
    start = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        load_split(spec, "test")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "searchskip-tests/no-such-dataset" in msg
    assert "offline mode is on" in msg  # answered from the environment, without trying the network
    assert "HF_HUB_OFFLINE" in msg and "disk" in msg and "parquet" in msg
    # the libraries' own offline switches are restored after the call
    assert (hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


def _online(monkeypatch):
    import huggingface_hub.constants as hc

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_hub_unreachable_and_not_found_are_clear_errors(monkeypatch):
    """Network failures are simulated: load_dataset is replaced, nothing is sent."""
    _online(monkeypatch)
    spec = DataSpec(source="hub", id="org/vqa", splits={"test": "validation"})

    def unreachable(*args, **kwargs):
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as e:
            raise RuntimeError("wrapped") from e

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(OfflineError, match=r"hub dataset 'org/vqa': .*could not be reached"):
        load_split(spec, "test")

    def not_found(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'org/vqa' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError, match=r"'org/vqa': not found on the Hugging Face Hub") as err:
        load_split(spec, "test")
    assert not isinstance(err.value, OfflineError)

    calls = []

    def fine(path, name=None, revision=None, split=None):
        calls.append((path, name, revision, split))
        return datasets.Dataset.from_dict(raw_rows()).cast_column("image", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", fine)
    spec = DataSpec(source="hub", id="org/vqa", name="cfg", revision="abc123", splits={"test": "validation[:4]"})
    assert load_split(spec, "test")["question_id"][:] == ["10", "11", "12", "13"]
    assert calls == [("org/vqa", "cfg", "abc123", "validation[:4]")]


def test_hub_needs_an_id():
    with pytest.raises(ConfigError, match=r"data\.id"):
        load_split(DataSpec(source="hub", splits={"test": "validation"}), "test")


def test_registry_covers_every_source_and_refuses_duplicates():
    sources = typing.get_args(typing.get_type_hints(DataSpec)["source"])
    assert set(LOADERS) == set(sources)
    with pytest.raises(ValueError, match=r"already registered"):
        register("easy_vqa", LOADERS["easy_vqa"], mappable=False)
    assert LOADERS["easy_vqa"] is easy_vqa_source.load
