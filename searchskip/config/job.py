"""Typed form of a job file (``jobs/*.yaml``).

A job says which model to load, which VQA data to score on, and how to evaluate.
Later issues add the search space, the budget and the study settings as further
sections. Every field has a type annotation that :mod:`searchskip.config.loader`
enforces; ``check`` methods add the rules a type cannot express. Paths are kept as
written; relative paths resolve against the current working directory, like the
Hugging Face example scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

EMBEDDED_PREFIX = "embedded:"
"""``model.id`` values starting with this name a model shipped inside the package."""

DEFAULT_MODEL = "embedded:tiny-llava-easyvqa"

SPLIT_ROLES = ("train", "validation", "test")
"""The three roles a split plays: training/calibration, the search's scoring split, final numbers."""

SCHEMA_FIELDS = ("question_id", "image", "question", "answers", "question_type", "answer_type", "image_id")
"""The in-memory VQA schema every data source is mapped onto (modelled on VQAv2)."""


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from and how to run it."""

    id: str = DEFAULT_MODEL
    """``embedded:NAME`` (shipped in the package), a hub id, or a local ``save_pretrained`` folder."""
    revision: str | None = None
    """A hub branch, tag or commit. Required (a pinned commit) when ``trust_remote_code`` is true."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    trust_remote_code: bool = False
    allow_pickle: bool = False
    """Allow ``.bin``/``.pt`` weights (loaded with ``torch.load(weights_only=True)``); safetensors otherwise."""
    prompt_template: str | None = None
    """Overrides the family's template; must contain ``{question}``."""


@dataclass(frozen=True)
class CarveSpec:
    """Carve a validation split out of another split, by image, so the two share no image."""

    fraction: float = 0.1
    seed: int = 0
    source: Literal["train"] = "train"


@dataclass(frozen=True)
class SubsetSpec:
    """A seeded subset of a split, stratified by question type (``size: null`` = whole split)."""

    size: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    """Which VQA data to load and how it maps onto the schema.

    ``splits`` maps a role (train/validation/test) to what the source calls it:
    a split name (``easy_vqa``, ``hub``, ``disk``), a file or glob, or a list of them
    (``parquet``), or ``{questions, annotations, images}`` (``vqav2_json``).
    """

    source: Literal["easy_vqa", "hub", "disk", "parquet", "vqav2_json"] = "easy_vqa"
    id: str | None = None
    """Hub dataset id (``hub`` only)."""
    revision: str | None = None
    """Hub dataset revision (``hub`` only)."""
    name: str | None = None
    """Hub dataset configuration name (``hub`` only)."""
    path: str | None = None
    """A folder written by ``save_to_disk`` (``disk`` only)."""
    splits: Mapping[str, Any] = field(default_factory=dict)
    carve_validation: CarveSpec | None = None
    """How to make a validation split when ``splits`` has none (defaults to 10% of train images)."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """Schema field -> source column, for sources that name fields differently."""
    validation_subset: SubsetSpec = field(default_factory=lambda: SubsetSpec(size=500, seed=0))
    test_subset: SubsetSpec = field(default_factory=SubsetSpec)


@dataclass(frozen=True)
class EvalSpec:
    """How answers are generated and scored."""

    batch_size: int = 64
    max_new_tokens: int = 3


@dataclass(frozen=True)
class BudgetSpec:
    """The search's FLOP budget per sample: exactly one of ``flops_ratio`` (of the unplanned
    model on the same workload) or ``gflops_per_sample``; see :class:`searchskip.flops.Budget`."""

    flops_ratio: float | None = None
    gflops_per_sample: float | None = None
    count: Literal["dense", "sparse"] = "dense"
    attention: Literal["causal", "kernel"] = "causal"


@dataclass(frozen=True)
class SearchSpec:
    """How ``searchskip search`` looks for a plan (the ``search:`` section of a job)."""

    space: str
    """A search space file (``spaces/*.yaml``): relative to the current directory, else to the
    searchskip checkout (the shipped ``spaces/``)."""
    budget: BudgetSpec
    objectives: tuple[Literal["accuracy", "agreement", "kl", "flops", "latency"], ...] = ("accuracy",)
    """``[accuracy]``: best accuracy within the budget; ``[accuracy, flops]``: a Pareto front.
    Label-free: ``agreement`` (share of answers identical to the unplanned model's) or ``kl`` (mean
    KL of the answer tokens from the unplanned model's, lower is better) in place of ``accuracy``
    (:mod:`searchskip.eval.fidelity`); accuracy is still recorded for every trial."""
    sampler: Literal["auto", "tpe", "evo", "nsga2", "gp", "random", "grid"] = "auto"
    """:mod:`searchskip.search.samplers`: optuna's ``tpe``, ``nsga2``, ``gp``, ``random``, ``grid``,
    ``evo`` (EvoPress-style evolution at the budget), or ``auto`` (the default: ``evo`` for one
    objective with ``fit_budget``, else ``tpe``; :func:`~searchskip.search.samplers.resolved_sampler`)."""
    fit_budget: bool = True
    """Map every proposal onto the budget before it reaches the model
    (:mod:`searchskip.search.budget_fit`): no trial is spent on an over-budget plan, and plans far
    below the budget get compute back. ``false``: over-budget proposals are recorded as infeasible."""
    seed: int = 0
    trials: int | None = 50
    """Model evaluations to finish (plans scored, in full or until pruned; duplicates and over-budget
    proposals run no model and do not count); ``null`` to stop on ``timeout_s`` only."""
    timeout_s: float | None = None
    storage: str | None = None
    """``null``: a journal file ``<outputs>/<study>/study.journal``; ``sqlite:///F`` (one worker only);
    ``postgresql://...``."""
    workers: int = 1
    backend: Literal["optuna", "ray"] = "optuna"
    """``optuna``: this process searches (start it ``workers`` times yourself); ``ray``: this
    process runs the trials as Ray Tune trials, at most ``workers`` at once (:mod:`searchskip.search.ray_backend`)."""
    ray_address: str | None = None
    """``backend: ray`` only: the Ray cluster to join (``ray.init(address=...)``, e.g. ``auto`` or
    ``ray://head:10001``); ``null``: start a local Ray for this run."""
    ray_allow_network: bool = False
    """``backend: ray`` without ``ray_address`` only: start a local Ray although its services
    listen on every network interface (Ray 2.60 cannot bind them to loopback; Ray's token
    authentication protects them). ``false`` (default): such a job is refused, so nothing
    searchskip starts listens beyond loopback unless asked; a warning is printed when it is."""
    resources_per_worker: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    """``backend: ray`` only: what each worker actor reserves: ``cpu``, ``gpu``, ``memory`` (bytes)
    or a custom Ray resource name, e.g. ``{gpu: 1}`` on a GPU cluster."""
    pruner: Literal["auto", "median", "halving", "parent", "none"] = "auto"
    """Stops hopeless trials on their running accuracy (one objective only): ``median`` (optuna's
    MedianPruner: below the median of earlier trials at the same step), ``halving``
    (SuccessiveHalvingPruner: score a growing subset, one report's questions first, and go on
    only while in the top third of the trials at that size), ``parent`` (go on only while keeping
    up with the best plan so far on the same questions), ``auto`` (``parent`` with ``sampler: evo``,
    else ``median``); see :mod:`searchskip.search.pruners`."""
    report_every: int = 1
    """Batches of the validation subset between intermediate reports (multi-fidelity pruning)."""
    feature_cache: Literal["auto", "memory", "disk", "none"] = "auto"
    """Where each worker keeps the validation subset's image features (vision tower + projector,
    computed once, since no plan changes them): ``memory`` (on the model's device), ``disk``
    (temporary safetensors files), ``auto`` (memory when they fit in ``cache_memory_gb``),
    ``none`` (recompute every trial)."""
    cache_memory_gb: float = 2.0
    """``feature_cache: auto``: the most GiB of features a worker keeps in memory."""
    seed_plans: bool = True
    """Enqueue the unplanned model and the paper's interval plans that fit the budget and the space."""
    seed_greedy: bool = False
    """Run greedy sublayer removal (FinerCut-style) once while seeding and enqueue its plan at the
    budget (:mod:`searchskip.search.greedy_seed`); its model evaluations count toward ``trials``
    (about ``2L - k`` at its ``k``-th removal for ``L`` layers)."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA settings (``finetune.lora``, only with ``finetune.method: lora``)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    """Module names (or name suffixes, peft style) inside the language model; ``null``: every
    attention and MLP linear of the decoder layers, as the architecture adapter names them."""


@dataclass(frozen=True)
class FinetuneSpec:
    """How ``searchskip finetune`` recovers accuracy with the plan active (the ``finetune:`` section)."""

    method: Literal["projector", "lora"] = "projector"
    """``projector``: the paper's training with skipping (only the vision-to-LLM projector trains,
    the LLM is frozen, the plan is active); ``lora``: LoRA adapters on the LLM's decoder linears."""
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    """``cosine``: linear warm-up then cosine decay to 0; ``constant``: warm-up then constant."""
    warmup_ratio: float = 0.03
    """Share of the total steps spent warming up linearly, in [0, 1)."""
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (``null``: no clipping)."""
    train_split: Literal["train", "validation", "test"] = "train"
    train_limit: int | None = None
    """Train on the first N questions of the shuffled train split (``null``: all of it)."""
    eval_split: Literal["train", "validation", "test"] = "test"
    eval_limit: int | None = None
    """Score before and after training on the first N questions of the eval split (``null``: all)."""
    seed: int = 0
    checkpoint_every: int = 200
    """Optimizer steps between checkpoints (one is also written at each epoch end and on Ctrl-C)."""
    out: str | None = None
    """Folder for checkpoints, the recovered model and metrics; ``null``: ``<outputs>/<name>-finetune``."""
    lora: LoraSpec | None = None
    """LoRA settings (``method: lora`` only); ``null``/left out: the defaults of :class:`LoraSpec`."""

    @property
    def lora_settings(self) -> LoraSpec:
        """``lora``, or the defaults when it is left out."""
        return self.lora if self.lora is not None else LoraSpec()


@dataclass(frozen=True)
class Job:
    """A whole job file."""

    name: str
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    outputs: str = "outputs"
    search: SearchSpec | None = None
    """The search settings (``searchskip search``); ``null``/left out: the job cannot be searched."""
    finetune: FinetuneSpec | None = None
    """The fine-tune recipe (``searchskip finetune``); ``null``/left out: the job cannot be fine-tuned."""
    source_file: str | None = field(default=None, metadata={"internal": True})
    """The YAML file this job was read from (set by the loader, not written by users)."""
