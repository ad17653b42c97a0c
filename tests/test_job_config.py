"""Job files: the shipped ones validate, and every kind of malformed job is reported precisely."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import pytest
import yaml

from searchskip.config import loader
from searchskip.config.job import DEFAULT_MODEL, Job
from searchskip.config.loader import load_job
from searchskip.config.typed import build
from searchskip.config.yaml_io import StrictSafeLoader, StrictYAMLError, read_yaml
from searchskip.errors import ConfigError, Problem, SearchSkipError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def problems_of(path: Path, **kwargs: Any) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_job(path, **kwargs)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def only_problem(path: Path, **kwargs: Any) -> Problem:
    problems = problems_of(path, **kwargs)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# ---- the shipped jobs ----------------------------------------------------------------------


def shipped_jobs() -> list[Path]:
    return sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_jobs_folder_is_not_empty():
    names = {p.name for p in shipped_jobs()}
    assert {"demo.yaml", "llava-1.5-7b-vqav2.yaml"} <= names


@pytest.mark.parametrize("path", shipped_jobs(), ids=lambda p: p.name)
def test_shipped_job_validates(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # shipped jobs must not depend on the current directory
    job = load_job(path)
    assert isinstance(job, Job)
    assert job.source_file == str(path)
    assert job.name == path.stem, "a shipped job's name matches its file name, so outputs/<name> is unique"


def test_demo_job_is_the_embedded_default(repo_root: Path):
    job = load_job(repo_root / "jobs" / "demo.yaml")
    assert job.model.id == DEFAULT_MODEL == "embedded:tiny-llava-easyvqa"
    assert job.model.device == "cpu"
    assert job.data.source == "easy_vqa"
    assert (job.data.carve_validation.fraction, job.data.carve_validation.seed) == (0.1, 0)
    assert (job.data.validation_subset.size, job.data.validation_subset.seed) == (500, 0)
    assert job.data.test_subset.size is None
    assert (job.eval.batch_size, job.eval.max_new_tokens) == (64, 2)


def test_llava_job_is_the_real_target(repo_root: Path):
    job = load_job(repo_root / "jobs" / "llava-1.5-7b-vqav2.yaml")
    assert (job.model.id, job.model.dtype, job.model.device) == ("llava-hf/llava-1.5-7b-hf", "float16", "cuda")
    assert (job.data.source, job.data.id) == ("hub", "HuggingFaceM4/VQAv2")
    assert job.data.splits["test"] != job.data.splits.get("validation")
    assert job.data.validation_subset.size == 1000
    assert (job.eval.batch_size, job.eval.max_new_tokens) == (16, 10)


def test_minimal_job_takes_defaults(write_yaml):
    job = load_job(write_yaml("name: t\n"))
    assert job == Job(name="t", source_file=job.source_file)
    assert job.source_file is not None


# ---- malformed jobs: one problem each, with its dotted key and rule ---------------------------

MALFORMED = {
    "unknown key with did-you-mean": ("name: t\nnmae: u\n", "nmae", ["did you mean 'name'"]),
    "misspelt nested key": ("name: t\neval:\n  max_new_token: 3\n", "eval.max_new_token",
                            ["did you mean 'max_new_tokens'"]),
    "misplaced key": ("name: t\nbatch_size: 3\n", "batch_size", ["did you mean 'eval.batch_size'"]),
    "wrong type": ("name: t\neval:\n  batch_size: [1]\n", "eval.batch_size", ["must be an integer", "a list"]),
    "quoted number": ("name: t\neval:\n  batch_size: '64'\n", "eval.batch_size", ["must be an integer", "'64'"]),
    "bool as int": ("name: t\neval:\n  batch_size: true\n", "eval.batch_size", ["must be an integer", "boolean true"]),
    "float as int": ("name: t\neval:\n  batch_size: 2.0\n", "eval.batch_size", ["must be an integer", "2.0"]),
    "number as string": ("name: 2024\n", "name", ["must be a string", "integer 2024", "quote"]),
    "NaN": ("name: t\ndata:\n  carve_validation:\n    fraction: .nan\n", "data.carve_validation.fraction",
            ["finite number", ".nan"]),
    "infinity": ("name: t\ndata:\n  carve_validation:\n    fraction: .inf\n", "data.carve_validation.fraction",
                 ["finite number", ".inf"]),
    "negative size": ("name: t\ndata:\n  validation_subset:\n    size: -5\n", "data.validation_subset.size",
                      ["`size >= 1` must hold", "size=-5"]),
    "zero test size": ("name: t\ndata:\n  test_subset:\n    size: 0\n", "data.test_subset.size", ["size=0"]),
    "negative seed": ("name: t\ndata:\n  test_subset:\n    seed: -1\n", "data.test_subset.seed", ["seed=-1"]),
    "fraction too big": ("name: t\ndata:\n  carve_validation:\n    fraction: 1.5\n", "data.carve_validation.fraction",
                         ["`0 < fraction < 1` must hold", "fraction=1.5"]),
    "fraction zero": ("name: t\ndata:\n  carve_validation:\n    fraction: 0\n", "data.carve_validation.fraction",
                      ["fraction=0.0"]),
    "literal violation": ("name: t\nmodel:\n  dtype: fp16\n", "model.dtype",
                          ["must be one of 'float32', 'float16', 'bfloat16'", "'fp16'"]),
    "literal source": ("name: t\ndata:\n  source: hf\n", "data.source", ["must be one of 'easy_vqa'", "'hf'"]),
    "section is null": ("name: t\nmodel:\n", "model", ["must be a mapping of settings", "null", "leave the key out"]),
    "section is a string": ("name: t\neval: fast\n", "eval", ["must be a mapping of settings", "string 'fast'"]),
    "missing name": ("model:\n  device: cpu\n", "name", ["is required but missing"]),
    "internal field": ("name: t\nsource_file: x.yaml\n", "source_file", ["cannot be set in a file"]),
    "boolean key": ("name: t\nyes: 1\n", "", ["keys must be strings", "boolean true", "quote"]),
    "empty name": ("name: ''\n", "name", ["non-empty"]),
    "unsafe name": ("name: ../escape\n", "name", ["folder name", "'../escape'"]),
    "empty outputs": ("name: t\noutputs: ''\n", "outputs", ["must be a path"]),
    "bad device": ("name: t\nmodel:\n  device: gpu\n", "model.device", ["cpu, cuda, cuda:N", "'gpu'"]),
    "bad cuda index": ("name: t\nmodel:\n  device: cuda:x\n", "model.device", ["'cuda:x'"]),
    "remote code unpinned": ("name: t\nmodel:\n  id: org/m\n  trust_remote_code: true\n", "model.revision",
                             ["40-hex commit", "trust_remote_code", "revision=null"]),
    "remote code on a branch": ("name: t\nmodel:\n  id: org/m\n  trust_remote_code: true\n  revision: main\n",
                                "model.revision", ["40-hex commit", "revision='main'"]),
    "prompt without question": ("name: t\nmodel:\n  prompt_template: 'Q: {q}'\n", "model.prompt_template",
                                ["{question}", "'Q: {q}'"]),
    "unknown named prompt": ("name: t\nmodel:\n  prompt_template: llava-15-vqa\n", "model.prompt_template",
                             ["named template", "llava-1.5-vqa", "'llava-15-vqa'"]),
    "unknown embedded model": ("name: t\nmodel:\n  id: embedded:tiny-llava\n", "model.id",
                               ["embedded model", "'embedded:tiny-llava'",
                                "did you mean 'embedded:tiny-llava-easyvqa'"]),
    "missing local model": ("name: t\nmodel:\n  id: ./no/such/model\n", "model.id", ["does not exist", "./no/such/model"]),
    "bad hub id": ("name: t\nmodel:\n  id: not a hub id\n", "model.id", ["hub id", "'not a hub id'"]),
    "hub without id": ("name: t\ndata:\n  source: hub\n  splits: {train: train, test: validation}\n", "data.id",
                       ["is required when `data.source: hub`"]),
    "disk without path": ("name: t\ndata:\n  source: disk\n  splits: {train: train, test: test}\n", "data.path",
                          ["is required when `data.source: disk`"]),
    "disk path missing": ("name: t\ndata:\n  source: disk\n  path: nowhere\n  splits: {train: a, test: b}\n",
                          "data.path", ["existing folder", "'nowhere'", "does not exist"]),
    "unknown split role": ("name: t\ndata:\n  splits: {val: test}\n", "data.splits.val",
                           ["not a split role", "did you mean 'validation'"]),
    "unknown schema column": ("name: t\ndata:\n  columns: {questoin: q}\n", "data.columns.questoin",
                              ["not a schema field", "did you mean 'question'"]),
    "easy_vqa split name": ("name: t\ndata:\n  splits: {test: testdev}\n", "data.splits.test",
                            ["splits of 'easy_vqa'", "'testdev'"]),
    "hub without test split": ("name: t\ndata:\n  source: hub\n  id: org/d\n  splits: {train: train}\n",
                               "data.splits", ["`test` role", "no default test split"]),
    "validation equals test": ("name: t\ndata:\n  source: hub\n  id: org/d\n  splits: {validation: v, test: v}\n",
                               "data.splits.validation", ["must differ from data.splits.test"]),
    "carve train equals test": ("name: t\ndata:\n  source: hub\n  id: org/d\n  splits: {train: x, test: x}\n",
                                "data.splits.train", ["must differ from data.splits.test"]),
    "carve beside validation": ("name: t\ndata:\n  source: hub\n  id: org/d\n  splits: {validation: v, test: t}\n"
                                "  carve_validation: {fraction: 0.1}\n", "data.carve_validation", ["remove one"]),
    "id with easy_vqa": ("name: t\ndata:\n  id: org/d\n", "data.id", ["only used with `data.source: hub`"]),
    "batch size zero": ("name: t\neval:\n  batch_size: 0\n", "eval.batch_size", ["`batch_size >= 1`", "batch_size=0"]),
    "no new tokens": ("name: t\neval:\n  max_new_tokens: 0\n", "eval.max_new_tokens", ["max_new_tokens=0"]),
    "evo without the fit": ("name: t\nsearch:\n  space: spaces/per-layer.yaml\n  budget: {flops_ratio: 0.5}\n"
                            "  sampler: evo\n  fit_budget: false\n", "search.sampler",
                            ["'evo' mutates plans at the budget", "fit_budget: true"]),
}


@pytest.mark.parametrize("text, key, fragments", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_job_reports_key_and_rule(write_yaml, tmp_path, monkeypatch, text, key, fragments):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(text)
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.key == key, str(problem)
    for fragment in fragments:
        assert fragment in problem.rule, str(problem)


# ---- YAML-level problems (yaml_io) ----------------------------------------------------------


def test_duplicate_keys_name_the_key_and_both_lines(write_yaml):
    path = write_yaml("name: t\neval:\n  batch_size: 1\nmodel: {}\neval:\n  max_new_tokens: 2\n")
    problem = only_problem(path)
    assert problem.key == "eval"
    assert "duplicate key 'eval'" in problem.rule
    assert "line 2" in problem.rule and "line 5" in problem.rule


def test_nested_duplicate_key_has_a_dotted_key(write_yaml):
    problem = only_problem(write_yaml("name: t\nmodel:\n  device: cpu\n  device: cuda\n"))
    assert problem.key == "model.device"
    assert "line 3" in problem.rule and "line 4" in problem.rule


def test_keys_that_yaml_reads_as_equal_are_duplicates(write_yaml):
    problem = only_problem(write_yaml("name: t\ndata:\n  columns: {'1': a}\n  columns: {}\n"))
    assert problem.key == "data.columns"


def test_merge_keys_may_override(write_yaml):
    path = write_yaml("name: t\neval: &base {batch_size: 2, max_new_tokens: 4}\n"
                      "model: {}\n"
                      "data:\n  validation_subset: {size: 3}\n  test_subset:\n    <<: {size: 7, seed: 1}\n    seed: 2\n")
    job = load_job(path)
    assert (job.data.test_subset.size, job.data.test_subset.seed) == (7, 2)
    assert job.eval.batch_size == 2


def test_tabs_are_reported_with_line_and_column(write_yaml):
    problem = only_problem(write_yaml("name: t\nmodel:\n\tdevice: cpu\n"))
    assert "line 3, column 1" in problem.rule
    assert "tab" in problem.rule and "spaces" in problem.rule


def test_syntax_error_has_line_and_column(write_yaml):
    problem = only_problem(write_yaml("name: t\neval:\n  batch_size: [1, 2\n"))
    assert problem.rule.startswith("invalid YAML at line ")
    assert "column" in problem.rule


def test_python_tag_is_refused_and_never_run(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    path = write_yaml(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    problem = only_problem(path)
    assert problem.key == "name"
    assert "only plain YAML" in problem.rule
    assert "!!python/object/apply:os.system" in problem.rule
    assert not marker.exists()


def test_custom_tag_is_refused(write_yaml):
    problem = only_problem(write_yaml("name: t\nmodel:\n  id: !env MODEL\n"))
    assert problem.key == "model.id"
    assert "unknown tag !env" in problem.rule


def test_recursive_alias_is_refused(write_yaml):
    problem = only_problem(write_yaml("name: t\ndata:\n  splits: &x {test: [*x]}\n"))
    assert "recursive" in problem.rule


def test_alias_bomb_is_refused(write_yaml):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    problem = only_problem(write_yaml("\n".join(lines) + "\nname: t\n"))
    assert "alias" in problem.rule and "expands" in problem.rule


def test_strict_loader_works_with_yaml_load():
    with pytest.raises(StrictYAMLError) as info:
        yaml.load("a: 1\na: 2\n", Loader=StrictSafeLoader)
    assert info.value.problems[0][0] == "a"
    assert issubclass(StrictSafeLoader, yaml.SafeLoader)


def test_missing_file(tmp_path):
    problem = only_problem(tmp_path / "nope.yaml")
    assert "does not exist" in problem.rule
    assert problem.file == str(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path):
    assert "is a directory" in only_problem(tmp_path).rule


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "null\n"], ids=["empty", "blank", "comment", "null"])
def test_empty_file(write_yaml, text):
    problem = only_problem(write_yaml(text))
    assert "empty" in problem.rule or "no settings" in problem.rule


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "a list"), ("just text\n", "string"), ("3\n", "integer 3")])
def test_top_level_must_be_a_mapping(write_yaml, text, got):
    problem = only_problem(write_yaml(text))
    assert "top level must be a mapping" in problem.rule and got in problem.rule


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "UTF-8" in only_problem(path).rule


def test_two_documents_are_refused(write_yaml):
    assert "single document" in only_problem(write_yaml("name: a\n---\nname: b\n")).rule


def test_read_yaml_returns_plain_data(write_yaml):
    assert read_yaml(write_yaml("name: t\neval: {batch_size: 2}\n")) == {"name": "t", "eval": {"batch_size": 2}}


# ---- several problems at once ------------------------------------------------------------------


def test_all_problems_of_a_file_are_reported_together(write_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(
        """\
        nmae: x
        model:
          dtype: fp16
          device: gpu
          trust_remote_code: true
        data:
          carve_validation: {fraction: 2}
          validation_subset: {size: -1}
        eval:
          batch_size: true
          max_new_tokens: 0
        """
    )
    problems = problems_of(path)
    keys = [p.key for p in problems]
    assert sorted(keys) == sorted([
        "nmae", "name", "model.dtype", "model.device", "model.revision",
        "data.carve_validation.fraction", "data.validation_subset.size",
        "eval.batch_size", "eval.max_new_tokens",
    ]), "\n".join(map(str, problems))
    message = str(ConfigError(problems))
    assert message.startswith("9 problems:")
    assert all(str(path) in line for line in message.splitlines()[1:])


def test_a_type_error_does_not_hide_sibling_rules(write_yaml):
    problems = problems_of(write_yaml("name: t\nmodel:\n  dtype: 16\n  device: gpu\n"))
    assert {p.key for p in problems} == {"model.dtype", "model.device"}


def test_rules_reading_a_broken_field_are_skipped(write_yaml):
    # data.source is broken: no source-dependent rule may guess with a default source.
    problems = problems_of(write_yaml("name: t\ndata:\n  source: 3\n  id: org/d\n  splits: {test: testdev}\n"))
    assert [p.key for p in problems] == ["data.source"]


def test_config_error_is_a_searchskip_error(write_yaml):
    with pytest.raises(SearchSkipError) as info:
        load_job(write_yaml("name: t\neval: {batch_size: 0}\n"))
    assert info.value.exit_code == 2


# ---- data sources that name files: valid and missing -----------------------------------------


def test_parquet_globs_resolve_against_the_current_directory(write_yaml, tmp_path, monkeypatch):
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "test-0.parquet").write_bytes(b"")
    (tmp_path / "pq" / "train-0.parquet").write_bytes(b"")
    path = write_yaml("name: t\ndata:\n  source: parquet\n  splits:\n    train: [pq/train-*.parquet]\n"
                      "    test: pq/test-*.parquet\n")
    monkeypatch.chdir(tmp_path)
    assert load_job(path).data.splits["test"] == "pq/test-*.parquet"
    monkeypatch.chdir(tmp_path / "pq")  # elsewhere the same globs match nothing
    problems = problems_of(path)
    assert {p.key for p in problems} == {"data.splits.train[0]", "data.splits.test"}
    assert all("matches none" in p.rule for p in problems)


def test_parquet_needs_splits(write_yaml, tmp_path):
    problems = problems_of(write_yaml("name: t\ndata:\n  source: parquet\n"))
    assert [p.key for p in problems] == ["data.splits", "data.splits"], "\n".join(map(str, problems))
    assert "`test` role" in problems[0].rule and "no splits" in problems[0].rule
    assert "`validation` split, or a `train` split" in problems[1].rule

    (tmp_path / "t.parquet").write_bytes(b"")
    problem = only_problem(write_yaml(f"name: t\ndata:\n  source: parquet\n  splits: {{train: [], test: {tmp_path / 't.parquet'}}}\n"))
    assert problem.key == "data.splits.train" and "non-empty list" in problem.rule


def make_vqav2(root: Path) -> dict[str, str]:
    (root / "images").mkdir(parents=True)
    (root / "q.json").write_text("{}")
    (root / "a.json").write_text("{}")
    return {"questions": str(root / "q.json"), "annotations": str(root / "a.json"), "images": str(root / "images")}


def test_vqav2_json_valid_and_invalid(write_yaml, tmp_path):
    train, test = make_vqav2(tmp_path / "train"), make_vqav2(tmp_path / "val")
    good = write_yaml(f"name: t\ndata:\n  source: vqav2_json\n  splits:\n    train: {train}\n"
                      f"    test: {test}\n", name="good.yaml")
    assert load_job(good).data.splits["test"]["images"] == test["images"]

    broken = {"questions": train["images"], "annotatoins": train["annotations"], "images": train["questions"]}
    bad = write_yaml(f"name: t\ndata:\n  source: vqav2_json\n  splits:\n    train: {broken}\n"
                     f"    test: {test}\n", name="bad.yaml")
    by_key = {p.key: p.rule for p in problems_of(bad)}
    assert set(by_key) == {"data.splits.train.questions", "data.splits.train.annotatoins",
                           "data.splits.train.annotations", "data.splits.train.images"}
    assert "is a folder" in by_key["data.splits.train.questions"]
    assert "did you mean 'annotations'" in by_key["data.splits.train.annotatoins"]
    assert "required" in by_key["data.splits.train.annotations"]
    assert "is a file" in by_key["data.splits.train.images"]

    leak = write_yaml(f"name: t\ndata:\n  source: vqav2_json\n  splits:\n    train: {test}\n    test: {test}\n",
                      name="leak.yaml")
    assert only_problem(leak).key == "data.splits.train"


def test_disk_source_with_an_existing_folder(write_yaml, tmp_path):
    (tmp_path / "saved").mkdir()
    job = load_job(write_yaml(f"name: t\ndata:\n  source: disk\n  path: {tmp_path / 'saved'}\n"
                              "  splits: {validation: validation, test: test}\n"))
    assert job.data.path == str(tmp_path / "saved")


def test_local_model_folder(write_yaml, tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert load_job(write_yaml("name: t\nmodel:\n  id: ./my-model\n")).model.id == "./my-model"
    assert load_job(write_yaml("name: t\nmodel:\n  id: my-model\n")).model.id == "my-model"  # exists on disk
    problem = only_problem(write_yaml("name: t\nmodel:\n  id: ./weights.bin\n"))
    assert problem.key == "model.id" and "is a file" in problem.rule


def test_outputs_must_not_be_a_file(write_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("")
    problem = only_problem(write_yaml("name: t\noutputs: taken\n"))
    assert problem.key == "outputs" and "existing file" in problem.rule


def test_pinned_remote_code_is_accepted(write_yaml):
    job = load_job(write_yaml(f"name: t\nmodel:\n  id: org/m\n  trust_remote_code: true\n  revision: {COMMIT}\n"))
    assert job.model.revision == COMMIT


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices_accepted(write_yaml, device):
    assert load_job(write_yaml(f"name: t\nmodel:\n  device: '{device}'\n")).model.device == device


# ---- embedded model names ----------------------------------------------------------------------


def test_embedded_names_can_be_passed_in(write_yaml):
    path = write_yaml("name: t\nmodel:\n  id: embedded:other\n")
    assert load_job(path, embedded_names={"other"}).model.id == "embedded:other"
    assert "embedded:other" in only_problem(path, embedded_names={"tiny-llava-easyvqa"}).rule


def test_embedded_names_come_from_the_zoo_when_it_offers_them(write_yaml, monkeypatch):
    import searchskip.zoo as zoo

    path = write_yaml("name: t\nmodel:\n  id: embedded:zoo-model\n")
    monkeypatch.setattr(zoo, "embedded_names", lambda: ["zoo-model"], raising=False)
    assert load_job(path).model.id == "embedded:zoo-model"
    monkeypatch.delattr(zoo, "embedded_names")
    assert loader.embedded_model_names() == frozenset({"tiny-llava-easyvqa"})
    assert only_problem(path).key == "model.id"


# ---- the generic builder, on dataclasses of its own ----------------------------------------------


@dataclass(frozen=True)
class Inner:
    level: Literal["low", "high"] = "low"
    weight: float = 1.0


@dataclass(frozen=True)
class Outer:
    title: str
    count: int = 0
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    tags: list[str] = field(default_factory=list)
    table: Mapping[str, int] = field(default_factory=dict)
    pair: tuple[int, ...] = ()
    anything: Any = None
    secret: str = field(default="", metadata={"internal": True})


def test_build_converts_every_supported_type():
    data = {"title": "x", "count": 3, "flag": True, "inner": {"level": "high", "weight": 2},
            "maybe": {}, "tags": ["a", "b"], "table": {"k": 1}, "pair": [1, 2], "anything": {"free": [1]}}
    obj, problems = build(Outer, data, "f.yaml")
    assert problems == []
    assert obj == Outer(title="x", count=3, flag=True, inner=Inner("high", 2.0), maybe=Inner(),
                        tags=["a", "b"], table={"k": 1}, pair=(1, 2), anything={"free": [1]})
    assert isinstance(obj.inner.weight, float)


def test_build_reports_dotted_keys_with_a_prefix():
    data = {"count": False, "flag": 1, "inner": {"level": "mid", "weight": math.inf}, "maybe": 5,
            "tags": ["a", 2], "table": {"k": "1"}, "pair": "12", "secret": "s", "extra": 1}
    obj, problems = build(Outer, data, "f.yaml", key_prefix="section")
    assert obj is None
    assert sorted(p.key for p in problems) == sorted([
        "section.title", "section.count", "section.flag", "section.inner.level", "section.inner.weight",
        "section.maybe", "section.tags[1]", "section.table.k", "section.pair", "section.secret", "section.extra",
    ]), "\n".join(map(str, problems))
    by_key = {p.key: p.rule for p in problems}
    assert "mapping of settings or null" in by_key["section.maybe"]
    assert "one of 'low', 'high'" in by_key["section.inner.level"]
    assert all(p.file == "f.yaml" for p in problems)


def test_build_runs_checks_with_relative_keys():
    def positive(obj: Outer):
        if obj.count <= 0:
            yield "count", f"`count > 0` must hold, but got count={obj.count}"

    obj, problems = build(Outer, {"title": "x"}, None, key_prefix="s", checks={Outer: [positive]})
    assert obj is None
    assert [(p.key, p.rule) for p in problems] == [("s.count", "`count > 0` must hold, but got count=0")]


def test_build_rejects_unsupported_annotations():
    @dataclass
    class Odd:
        value: set[int] = field(default_factory=set)

    with pytest.raises(TypeError):
        build(Odd, {"value": [1]}, None)
