"""Turn parsed YAML into the typed, frozen config dataclasses, collecting every problem.

Every problem is a :class:`~searchskip.errors.Problem` with a dotted key
(``data.validation_subset.size``), all reported together. The generic builder
(:func:`~searchskip.config.typed.build`: types, unknown keys, did-you-mean, partial views for
rules) lives in :mod:`searchskip.config.typed`; this module holds the job file's own rules, one
small check per concern, gathered per dataclass by :func:`job_checks`, and the loaders
(:func:`load_job`, :func:`job_from_data`).

Rules are phrased like optuna's: the rule first, then the values (``\\`0 < fraction < 1\\`
must hold, but got fraction=1.5``). Relative paths resolve against the current working
directory. Nothing here loads a model or a dataset; the checks only look at the file system.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from searchskip.config.job import (
    EMBEDDED_PREFIX,
    SCHEMA_FIELDS,
    SPLIT_ROLES,
    CarveSpec,
    DataSpec,
    EvalSpec,
    Job,
    ModelSpec,
    SubsetSpec,
    BudgetSpec,
    FinetuneSpec,
    LoraSpec,
    SearchSpec,
)
from searchskip.config.typed import Check, _did_you_mean, _show, above, at_least, build
from searchskip.config.yaml_io import describe, path_state, read_yaml
from searchskip.errors import ConfigError
from searchskip.search.space import Space

__all__ = [
    "DEFAULT_EMBEDDED_NAMES",
    "Check",
    "above",
    "at_least",
    "build",
    "embedded_model_names",
    "job_checks",
    "job_from_data",
    "load_job",
]

DEFAULT_EMBEDDED_NAMES = frozenset({"tiny-llava-easyvqa"})
"""Embedded models assumed when :mod:`searchskip.zoo` offers no ``embedded_names()``."""

# --------------------------------------------------------------------------------------
# Rules of a job file, one check per dataclass
# --------------------------------------------------------------------------------------

_DEVICE = re.compile(r"cpu|cuda|cuda:\d+|mps")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_SPLIT_NAMES = {"easy_vqa": ("train", "test")}
"""Split names a source offers by itself (only sources with fixed splits are listed)."""
_DEFAULT_SPLITS = {"easy_vqa": {"train": "train", "test": "test"}}
"""Roles a source fills when ``data.splits`` leaves them out."""
_VQAV2_FILES = ("questions", "annotations", "images")


def _where(path: str) -> str:
    """``'x'`` plus where a relative path resolved, for rules about the file system."""
    p = Path(path).expanduser()
    return repr(path) if p.is_absolute() else f"{path!r} (resolved against the current directory to {p.absolute()})"


def _looks_local(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or Path(model_id).expanduser().exists()


def _job_name(job: Job) -> Iterator[tuple[str, str]]:
    from searchskip.config.names import name_problem  # the rule --study is held to as well

    problem = name_problem(job.name)
    if problem is not None:
        yield "name", problem


def _job_outputs(job: Job) -> Iterator[tuple[str, str]]:
    if not job.outputs.strip():
        yield "outputs", "must be a path to a folder, but got an empty string"
    elif "\0" in job.outputs:
        yield "outputs", "must be a path to a folder, but it contains a NUL character"
    elif Path(job.outputs).expanduser().is_file():
        yield "outputs", f"must be a folder, but {_where(job.outputs)} is an existing file"


def _model_id(model: ModelSpec, embedded: frozenset[str]) -> Iterator[tuple[str, str]]:
    model_id = model.id
    if not model_id.strip():
        yield "id", f"must name a model ({EMBEDDED_PREFIX}NAME, a hub id or a local folder), but got an empty string"
    elif model_id.startswith(EMBEDDED_PREFIX):
        name = model_id[len(EMBEDDED_PREFIX):]
        if name not in embedded:
            known = ", ".join(EMBEDDED_PREFIX + n for n in sorted(embedded)) or "none"
            guess = _did_you_mean(name, embedded)
            yield "id", (f"must name an embedded model (known: {known}), but got {model_id!r}"
                         + (f"; did you mean {EMBEDDED_PREFIX + guess!r}?" if guess else ""))
    elif _looks_local(model_id):
        p = Path(model_id).expanduser()
        if not p.exists():
            yield "id", f"looks like a local path, so the folder must exist, but {_where(model_id)} does not exist"
        elif not p.is_dir():
            yield "id", f"must be a folder written by save_pretrained, but {_where(model_id)} is a file"
    elif not _HUB_ID.fullmatch(model_id) or "--" in model_id or ".." in model_id:
        yield "id", (f"must be {EMBEDDED_PREFIX}NAME, a hub id such as 'org/name', or an existing local folder, "
                     f"but got {model_id!r}")


def _model_revision(model: ModelSpec) -> Iterator[tuple[str, str]]:
    if model.revision is not None and (not model.revision.strip() or any(c.isspace() for c in model.revision)):
        yield "revision", f"must be a branch, tag or commit without spaces (or null), but got {model.revision!r}"


def _model_remote_code(model: ModelSpec) -> Iterator[tuple[str, str]]:
    if model.trust_remote_code and not (model.revision and _COMMIT.fullmatch(model.revision)):
        yield "revision", ("must be pinned to a full 40-hex commit hash when `model.trust_remote_code: true` (the "
                           "model's own code runs on this machine, so it must not change under you), "
                           f"but got revision={_show(model.revision)}")


def _model_device(model: ModelSpec) -> Iterator[tuple[str, str]]:
    if not _DEVICE.fullmatch(model.device):
        yield "device", f"must be cpu, cuda, cuda:N (N a GPU index) or mps, but got {model.device!r}"


def _model_prompt(model: ModelSpec) -> Iterator[tuple[str, str]]:
    from searchskip.eval.prompts import template_problem

    if model.prompt_template is not None:
        problem = template_problem(model.prompt_template)
        if problem:
            yield "prompt_template", f"{problem}, but got {_show(model.prompt_template)}"


def _data_roles(data: DataSpec) -> Iterator[tuple[str, str]]:
    for role in data.splits:
        if role not in SPLIT_ROLES:
            guess = _did_you_mean(role, SPLIT_ROLES, cutoff=0.5)
            yield f"splits.{role}", (f"is not a split role; roles are {', '.join(SPLIT_ROLES)}"
                                     + (f"; did you mean {guess!r}?" if guess else ""))


def _data_columns(data: DataSpec) -> Iterator[tuple[str, str]]:
    for column, name in data.columns.items():
        if column not in SCHEMA_FIELDS:
            guess = _did_you_mean(column, SCHEMA_FIELDS)
            yield f"columns.{column}", (f"is not a schema field; fields are {', '.join(SCHEMA_FIELDS)}"
                                        + (f"; did you mean {guess!r}?" if guess else ""))
        elif not name.strip():
            yield f"columns.{column}", "must name a source column, but got an empty string"


def _data_unused_settings(data: DataSpec) -> Iterator[tuple[str, str]]:
    # Settings that only one source reads: flag them so nobody believes they take effect.
    for field_name, owner in (("id", "hub"), ("revision", "hub"), ("name", "hub"), ("path", "disk")):
        if getattr(data, field_name) is not None and data.source != owner:
            yield field_name, f"is only used with `data.source: {owner}`, but data.source is {data.source!r}"


def _data_hub(data: DataSpec) -> Iterator[tuple[str, str]]:
    if data.source == "hub" and not (data.id and data.id.strip()):
        yield "id", "is required when `data.source: hub` (the hub dataset id, e.g. 'HuggingFaceM4/VQAv2')"


def _data_disk(data: DataSpec) -> Iterator[tuple[str, str]]:
    if data.source != "disk":
        return
    if not (data.path and data.path.strip()):
        yield "path", "is required when `data.source: disk` (a folder written by save_to_disk)"
    elif not Path(data.path).expanduser().is_dir():
        state = "is a file" if Path(data.path).expanduser().exists() else "does not exist"
        yield "path", f"must be an existing folder written by save_to_disk, but {_where(data.path)} {state}"


def _roles(data: DataSpec) -> dict[str, Any]:
    return {role: value for role, value in data.splits.items() if role in SPLIT_ROLES}


def _data_split_values(data: DataSpec) -> Iterator[tuple[str, str]]:
    source = data.source
    for role, value in _roles(data).items():
        key = f"splits.{role}"
        if source == "parquet":
            yield from _check_globs(key, value)
        elif source == "vqav2_json":
            yield from _check_vqav2_files(key, value)
        elif not isinstance(value, str) or not value.strip():
            yield key, f"must be a split name (a string) for source {source!r}, but got {describe(value)}"
        elif source in _SPLIT_NAMES and value not in _SPLIT_NAMES[source]:
            yield key, f"must be one of the splits of {source!r} ({', '.join(_SPLIT_NAMES[source])}), but got {value!r}"


def _data_roles_filled(data: DataSpec) -> Iterator[tuple[str, str]]:
    source, splits = data.source, _roles(data)
    roles = {**_DEFAULT_SPLITS.get(source, {}), **splits}
    if "test" not in roles:
        what = {"parquet": "a file or glob of parquet files", "vqav2_json": "{questions, annotations, images}"}
        given = "no splits" if not data.splits else "roles " + ", ".join(map(str, data.splits))
        yield "splits", (f"must map the `test` role to {what.get(source, 'a split name')}: source {source!r} has no "
                         f"default test split, but got {given}")
    if "validation" not in roles and "train" not in roles:
        yield "splits", ("must give a `validation` split, or a `train` split to carve one from "
                         "(data.carve_validation), but got neither")


def _data_carve_needed(data: DataSpec) -> Iterator[tuple[str, str]]:
    if "validation" in data.splits and data.carve_validation is not None:
        yield "carve_validation", ("must be left out when data.splits.validation is given (carving makes a "
                                   "validation split when there is none); remove one of the two")


def _data_no_test_leak(data: DataSpec) -> Iterator[tuple[str, str]]:
    roles = {**_DEFAULT_SPLITS.get(data.source, {}), **_roles(data)}
    if "test" not in roles:
        return
    if "validation" in roles:
        if roles["validation"] == roles["test"]:
            yield "splits.validation", ("must differ from data.splits.test: the search would be scored on the test "
                                        f"data, but both are {describe(roles['test'])}")
    elif roles.get("train") == roles["test"]:
        yield "splits.train", ("must differ from data.splits.test when validation is carved from train: the "
                               f"search would be scored on the test data, but both are {describe(roles['test'])}")


def _check_globs(key: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        patterns = [(key, value)]
    elif isinstance(value, list) and value:
        patterns = [(f"{key}[{i}]", item) for i, item in enumerate(value)]
    else:
        yield key, f"must be a parquet file or glob, or a non-empty list of them, but got {describe(value)}"
        return
    for at, pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip() or "\0" in pattern:
            yield at, f"must be a parquet file or glob (a string), but got {describe(pattern)}"
            continue
        matches = [m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)]
        if not matches:
            yield at, f"must match at least one file, but the glob {_where(pattern)} matches none"


def _check_vqav2_files(key: str, value: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(value, dict):
        yield key, (f"must be a mapping with {', '.join(_VQAV2_FILES)} for source 'vqav2_json', "
                    f"but got {describe(value)}")
        return
    for name in value:
        if name not in _VQAV2_FILES:
            guess = _did_you_mean(str(name), _VQAV2_FILES)
            yield f"{key}.{name}", (f"is not a known setting here (known: {', '.join(_VQAV2_FILES)})"
                                    + (f"; did you mean {guess!r}?" if guess else ""))
    for name in _VQAV2_FILES:
        at = f"{key}.{name}"
        if name not in value:
            yield at, "is required but missing"
            continue
        path = value[name]
        if not isinstance(path, str) or not path.strip():
            yield at, f"must be a path (a string), but got {describe(path)}"
            continue
        p = Path(path).expanduser()
        if name == "images":
            if not p.is_dir():
                state = "is a file" if p.exists() else "does not exist"
                yield at, f"must be an existing folder of images, but {_where(path)} {state}"
        elif not p.is_file():
            state = "is a folder" if p.exists() else "does not exist"
            yield at, f"must be an existing VQAv2 {name} JSON file, but {_where(path)} {state}"


def _carve_fraction(carve: CarveSpec) -> Iterator[tuple[str, str]]:
    if not 0.0 < carve.fraction < 1.0:
        yield "fraction", f"`0 < fraction < 1` must hold, but got fraction={carve.fraction!r}"


# ---- the search section ---------------------------------------------------------------

_STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://", "mysql+pymysql://")


def resolve_space(path: str) -> Path:
    """Where ``search.space`` points: relative to the current directory, else (when that does
    not exist) relative to the searchskip checkout, so that the shipped jobs' ``spaces/X.yaml``
    name the shipped spaces from any directory."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    shipped = Path(__file__).resolve().parents[2] / p
    return shipped if shipped.is_file() else p


def _search_space(search: SearchSpec) -> Iterator[tuple[str, str]]:
    p = resolve_space(search.space)
    if not search.space.strip():
        yield "space", "must be a search space file (spaces/*.yaml), but got an empty string"
        return
    state = path_state(p)
    if state is not None:
        yield "space", f"must be an existing search space file (spaces/*.yaml), but {_where(search.space)} {state}"
        return
    try:
        Space.load(p)
    except ConfigError as err:
        for problem in err.problems:
            at = f" (at {problem.key})" if problem.key else ""
            yield "space", f"must be a valid search space, but {search.space!r}{at}: {problem.rule}"


def _search_objectives(search: SearchSpec) -> Iterator[tuple[str, str]]:
    objectives = tuple(search.objectives)
    quality, cost = ("accuracy", "agreement", "kl"), ("flops", "latency")
    if not (objectives and objectives[0] in quality and (len(objectives) == 1 or
                                                         (len(objectives) == 2 and objectives[1] in cost))):
        yield "objectives", ("must be [accuracy] (best accuracy within the budget), [accuracy, flops] (a Pareto "
                             "front over FLOPs) or [accuracy, latency] (a Pareto front over the measured seconds "
                             "per question), with agreement or kl (label-free: against the unplanned model's "
                             f"answers) in place of accuracy if you like, but got {list(objectives)!r}")


def _search_counts(search: SearchSpec) -> Iterator[tuple[str, str]]:
    if search.trials is None and search.timeout_s is None:
        yield "trials", "`trials` or `timeout_s` (or both) must be set, but both are null"
    yield from at_least("trials", 1, " (or null with timeout_s)")(search)
    yield from above("timeout_s", 0, " (or null)")(search)
    yield from at_least("seed", 0)(search)
    yield from at_least("report_every", 1)(search)
    if isinstance(search.cache_memory_gb, bool) or not isinstance(search.cache_memory_gb, (int, float)) \
            or not search.cache_memory_gb >= 0:
        yield "cache_memory_gb", f"`cache_memory_gb >= 0` must hold, but got cache_memory_gb={search.cache_memory_gb!r}"


def _search_storage(search: SearchSpec) -> Iterator[tuple[str, str]]:
    storage = search.storage
    if storage is not None and not storage.startswith(_STORAGE_SCHEMES):
        yield "storage", ("must be null (a journal file in the study folder), sqlite:///FILE or postgresql://..., "
                          f"but got {storage!r}")


def _search_workers(search: SearchSpec) -> Iterator[tuple[str, str]]:
    yield from at_least("workers", 1)(search)
    if search.workers > 1 and search.storage is not None and search.storage.startswith("sqlite"):
        yield "storage", ("must not be SQLite when several workers write to it (SQLite locks the whole database: "
                          f"'database is locked'), but got storage={search.storage!r} with workers={search.workers}; "
                          "use postgresql://... or workers: 1")
    # workers > 1 on the optuna backend: allowed with the journal (one machine) or postgresql/mysql
    # storages. `workers` is the number of `searchskip search JOB` processes the user starts on
    # the study (each loads the model once); they share trials through the storage
    # (see searchskip.search.storage). The total may overshoot `trials` by up to workers - 1.


_RAY_RESOURCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_RAY_RESERVED = ("CPU", "GPU", "object_store_memory", "node", "accelerator_type")


def _search_backend(search: SearchSpec) -> Iterator[tuple[str, str]]:
    if search.backend != "ray":
        return
    if search.storage is not None and search.storage.startswith("sqlite"):
        yield "storage", ("must not be SQLite with backend='ray' (the Ray workers write to it in parallel: "
                          f"'database is locked'), but got storage={search.storage!r} with backend='ray'; "
                          "use null (a journal file, one machine) or postgresql://...")
    for key, value in dict(search.resources_per_worker).items():
        name = f"resources_per_worker.{key}"
        if key not in ("cpu", "gpu", "memory") and (key in _RAY_RESERVED or not _RAY_RESOURCE.match(str(key))):
            yield name, (f"must be cpu, gpu, memory or a custom Ray resource name (letters, digits, '_'), "
                         f"but got {key!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            yield name, f"`{key} > 0` must hold, but got {key}={value!r}"
    if not search.resources_per_worker:
        yield "resources_per_worker", "must name at least one resource (e.g. {cpu: 1}), but got {}"
    if search.ray_address is None and not search.ray_allow_network:
        yield "ray_allow_network", ("must be true to start a local Ray (backend='ray' with ray_address: null): "
                                    "Ray 2.60's services listen on every network interface, not only loopback; "
                                    "set ray_allow_network: true to accept that (Ray's token authentication "
                                    "protects them), give ray_address of a cluster you run, or use "
                                    "backend: optuna with several processes (listens on nothing)")


def _search_sampler(search: SearchSpec) -> Iterator[tuple[str, str]]:
    if search.sampler == "gp" and len(search.objectives) > 1:
        yield "sampler", (f"must be tpe, nsga2, random or grid with objectives {list(search.objectives)}, "
                          "but got sampler='gp'")
    if search.sampler == "evo" and not search.fit_budget:
        yield "sampler", ("'evo' mutates plans at the budget, so it needs fit_budget: true "
                          "(or choose another sampler), but got fit_budget: false")


def _budget_one(budget: BudgetSpec) -> Iterator[tuple[str, str]]:
    if (budget.flops_ratio is None) == (budget.gflops_per_sample is None):
        yield "flops_ratio", ("exactly one of `flops_ratio` and `gflops_per_sample` must be given, but got "
                   f"flops_ratio={_show(budget.flops_ratio)}, gflops_per_sample={_show(budget.gflops_per_sample)}")


def _budget_positive(budget: BudgetSpec) -> Iterator[tuple[str, str]]:
    for name in ("flops_ratio", "gflops_per_sample"):
        value = getattr(budget, name)
        if value is not None and not value > 0:
            yield name, f"`{name} > 0` must hold, but got {name}={value!r}"


def _budget_ratio_at_most_one(budget: BudgetSpec) -> Iterator[tuple[str, str]]:
    if budget.flops_ratio is not None and budget.flops_ratio > 1:
        yield "flops_ratio", ("`flops_ratio <= 1` must hold (a share of the unplanned model's FLOPs: above 1 every "
                              f"plan fits, and the budget constrains nothing), but got flops_ratio={budget.flops_ratio!r}")


# ---- the finetune section -------------------------------------------------------------


def _finetune_numbers(ft: FinetuneSpec) -> Iterator[tuple[str, str]]:
    if not ft.lr > 0:
        yield "lr", f"`lr > 0` must hold, but got lr={ft.lr!r}"
    if not 0.0 <= ft.warmup_ratio < 1.0:
        yield "warmup_ratio", f"`0 <= warmup_ratio < 1` must hold, but got warmup_ratio={ft.warmup_ratio!r}"
    if ft.max_grad_norm is not None and not ft.max_grad_norm > 0:
        yield "max_grad_norm", f"`max_grad_norm > 0` must hold (or null: no clipping), but got max_grad_norm={ft.max_grad_norm!r}"


def _finetune_splits(ft: FinetuneSpec) -> Iterator[tuple[str, str]]:
    if ft.train_split == "test":
        yield "train_split", ("must not be 'test': the test split gives the final numbers, and training on it "
                              "would make them meaningless; use train (or validation)")
    elif ft.train_split == ft.eval_split:
        yield "eval_split", (f"must differ from finetune.train_split: accuracy would be measured on the questions "
                             f"trained on, but both are {ft.train_split!r}")


def _finetune_out(ft: FinetuneSpec) -> Iterator[tuple[str, str]]:
    if ft.out is None:
        return
    if not ft.out.strip() or "\0" in ft.out:
        yield "out", f"must be a path to a folder (or null: <outputs>/<name>-finetune), but got {ft.out!r}"
    elif Path(ft.out).expanduser().is_file():
        yield "out", f"must be a folder, but {_where(ft.out)} is an existing file"


def _finetune_lora(ft: FinetuneSpec) -> Iterator[tuple[str, str]]:
    if ft.lora is not None and ft.method != "lora":
        yield "lora", (f"is only used with `finetune.method: lora`, but method is {ft.method!r}; remove the "
                       "section or set method: lora")


def _lora_numbers(lora: LoraSpec) -> Iterator[tuple[str, str]]:
    if not lora.alpha > 0:
        yield "alpha", f"`alpha > 0` must hold, but got alpha={lora.alpha!r}"
    if not 0.0 <= lora.dropout < 1.0:
        yield "dropout", f"`0 <= dropout < 1` must hold, but got dropout={lora.dropout!r}"
    if lora.target_modules is not None:
        if not lora.target_modules:
            yield "target_modules", "must name at least one module (or null: every decoder linear), but got []"
        for i, name in enumerate(lora.target_modules):
            if not name.strip():
                yield f"target_modules[{i}]", "must be a module name, but got an empty string"


def embedded_model_names() -> frozenset[str]:
    """Names usable after ``embedded:``: ``searchskip.zoo.embedded_names()`` if the zoo offers it."""
    try:
        from searchskip import zoo
    except ImportError:
        return DEFAULT_EMBEDDED_NAMES
    names = getattr(zoo, "embedded_names", None)
    return frozenset(names()) if callable(names) else DEFAULT_EMBEDDED_NAMES


def job_checks(embedded_names: Iterable[str] | None = None) -> dict[type, list[Check]]:
    """The rules of a job file, per dataclass, for :func:`build`. ``embedded_names`` defaults to the zoo's."""
    names = frozenset(embedded_names) if embedded_names is not None else embedded_model_names()
    return {
        Job: [_job_name, _job_outputs],
        ModelSpec: [functools.partial(_model_id, embedded=names), _model_revision, _model_remote_code,
                    _model_device, _model_prompt],
        DataSpec: [_data_roles, _data_columns, _data_unused_settings, _data_hub, _data_disk, _data_split_values,
                   _data_roles_filled, _data_carve_needed, _data_no_test_leak],
        CarveSpec: [_carve_fraction, at_least("seed", 0)],
        SubsetSpec: [at_least("size", 1, " (or `size: null` for the whole split)"), at_least("seed", 0)],
        EvalSpec: [at_least("batch_size", 1), at_least("max_new_tokens", 1)],
        SearchSpec: [_search_space, _search_objectives, _search_counts, _search_storage, _search_workers,
                     _search_backend, _search_sampler],
        BudgetSpec: [_budget_one, _budget_positive, _budget_ratio_at_most_one],
        FinetuneSpec: [at_least("epochs", 1), at_least("batch_size", 1), at_least("train_limit", 1),
                       at_least("weight_decay", 0),
                       at_least("eval_limit", 1), at_least("seed", 0), at_least("checkpoint_every", 1),
                       _finetune_numbers, _finetune_splits, _finetune_out, _finetune_lora],
        LoraSpec: [at_least("r", 1), _lora_numbers],
    }


# --------------------------------------------------------------------------------------
# Job files
# --------------------------------------------------------------------------------------


def job_from_data(data: Any, file: str | None, *, embedded_names: Iterable[str] | None = None) -> Job:
    """Build and check a :class:`Job` from parsed YAML; raise one :class:`ConfigError` listing every problem."""
    job, problems = build(Job, data, file, checks=job_checks(embedded_names))
    if problems or job is None:
        raise ConfigError(problems, file)
    return dataclasses.replace(job, source_file=file)


def load_job(path: str | Path, *, embedded_names: Iterable[str] | None = None) -> Job:
    """Read, build and check a job file. Raises :class:`ConfigError` with every problem of the file.

    The returned job's ``source_file`` is ``str(path)``. No model or dataset is loaded.
    """
    return job_from_data(read_yaml(path), str(path), embedded_names=embedded_names)
