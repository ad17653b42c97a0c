"""What every search worker (a ``searchskip search`` process, or a Ray actor) holds for all its
trials, set up once: :func:`setup_worker`.

The model and the validation subset are loaded once (:func:`load_worker_inputs`); under the
study's lock, the workload is measured once on that subset and stored in the study's user attrs
(``workload``) with the unplanned model's FLOPs and the budget, and the seeds are enqueued once
(study attr ``seeded``). A resumed run reuses the stored workload, so FLOP ratios of old and new
trials agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import functools
from typing import Any

from searchskip.config.job import Job
from searchskip.errors import SearchSkipError
from searchskip.search.budget_fit import BudgetFit
from searchskip.search.greedy_seed import greedy_seed
from searchskip.search.harm import HARM_ATTR, measure_harm
from searchskip.search.leaderboard import OBJECTIVES_ATTR
from searchskip.search.objective import ModelEvaluator, ObjectiveContext, budget_of
from searchskip.search.preflight import check_budget_reachable
from searchskip.search.seeds import baseline_seeds, calibration_questions, enqueue_seeds, seed_plans
from searchskip.search.storage import study_flock

__all__ = ["WorkerSetup", "load_worker_inputs", "study_needs_setup", "study_done", "setup_worker", "make_evaluator", "num_layers_of",
           "study_fit"]


@dataclass
class WorkerSetup:
    """What a search worker holds for all its trials: the model, the validation subset and the
    :class:`~searchskip.search.objective.ObjectiveContext`."""

    loaded: Any
    dataset: Any
    ctx: ObjectiveContext
    fit: BudgetFit | None = None
    """How the worker's sampler maps proposals onto the budget (``None``: ``search.fit_budget: false``)."""
    evaluator: Any = None
    """The evaluator the seeding built (``search.seed_greedy``) or was given; ``None`` when it needed none."""


def load_worker_inputs(job: Job, loaded: Any = None, dataset: Any = None, *,
                       need_dataset: bool = True) -> tuple[Any, Any]:
    """``(loaded model, validation subset)``: what is not given is loaded from the job (every image
    of the subset is opened, so a bad one is reported before any trial). Errors name the job file
    and its key (``data.splits.validation``, ``model.id``)."""
    from searchskip.errors import in_job

    where = job.source_file or job.name
    if dataset is None and need_dataset:
        from searchskip.data.splits import load_eval_split

        try:
            dataset = load_eval_split(job.data, "validation", check=True)
        except SearchSkipError as e:
            raise in_job(where, e, "data.splits.validation") from None
    if loaded is None:
        from searchskip.eval.planned import check_unplanned
        from searchskip.models import load_model

        try:
            loaded = load_model(job.model)
        except SearchSkipError as e:
            raise in_job(where, e, "model.id") from None
        check_unplanned(loaded, where, "model.id")  # every trial applies a plan to it
    return loaded, dataset


def _needs_workload(attrs: dict[str, Any]) -> bool:
    """The study (user attrs ``attrs``) has no measured workload yet."""
    return "workload" not in attrs


def _needs_unplanned_flops(attrs: dict[str, Any]) -> bool:
    """The study has no unplanned FLOPs (nor budget, layer count, space) stored yet."""
    return "unplanned_flops" not in attrs


def _needs_seeding(attrs: dict[str, Any], search: Any) -> bool:
    """The job wants seed plans (or the greedy seed) and the study has not enqueued them yet."""
    return bool((search.seed_plans or search.seed_greedy) and not attrs.get("seeded"))


def study_needs_setup(study: Any, search: Any) -> bool:
    """Whether :func:`setup_worker` still has something to store in ``study`` (its own conditions)."""
    attrs = study.user_attrs
    return _needs_workload(attrs) or _needs_unplanned_flops(attrs) or _needs_seeding(attrs, search)


def study_done(study: Any, search: Any, trials: int | None) -> bool:
    """Whether ``study`` holds ``trials`` model evaluations and is fully set up (a greedy seed cut
    short by a kill may already hold that many evaluations, but its plan is not a trial yet)."""
    from searchskip.search.evaluations import trial_counts

    return trials is not None and trial_counts(study)["counted"] >= trials and not study_needs_setup(study, search)


def setup_worker(job: Job, study: Any, folder: Path, space: Any, *, loaded: Any = None, dataset: Any = None,
                 need_dataset: bool = True, evaluator: Any = None, progress: bool = True) -> WorkerSetup:
    """Load the model and the validation subset (unless given), check the space against the model,
    and, under the study's lock, measure and store the workload, the unplanned FLOPs and the budget
    once, and enqueue the seeds once (study attr ``seeded``). Every backend's worker runs this.
    ``evaluator``: the worker's, for the greedy seed (``search.seed_greedy``); built here when it
    needs one and none is given, and returned in :attr:`WorkerSetup.evaluator` for the trials.
    ``progress``: say on stderr what the seeding and the harm measurement do (``--no-progress``: nothing)."""
    search = job.search
    say = _say if progress else _silent
    loaded, dataset = load_worker_inputs(job, loaded, dataset,
                                         need_dataset=need_dataset or _needs_workload(study.user_attrs))
    num_layers = num_layers_of(loaded.model)
    space.check(num_layers)
    budget = budget_of(search.budget)
    with study_flock(folder):
        workload = _study_workload(study, loaded, dataset, job)
        ctx = ObjectiveContext(space=space, num_layers=num_layers, arch=loaded.model.config, workload=workload,
                               budget=budget, objectives=tuple(search.objectives))
        check_budget_reachable(ctx.budget, ctx.baseline, job.source_file or job.name)
        if _needs_unplanned_flops(study.user_attrs):
            study.set_user_attr("unplanned_flops", ctx.baseline.total(budget.count, budget.attention))
            study.set_user_attr("budget", budget.to_dict())
            study.set_user_attr("budget_flops", budget.limit(ctx.baseline))
            study.set_user_attr("num_layers", num_layers)
            study.set_user_attr("space", str(search.space))
            study.set_user_attr(OBJECTIVES_ATTR, list(search.objectives))
        calibration = functools.cache(lambda: calibration_questions(job, loaded, dataset))  # built once, if at all
        if _needs_seeding(study.user_attrs, search):
            if search.seed_greedy:
                if evaluator is None:
                    evaluator = make_evaluator(job, loaded, dataset)
                greedy_seed(study, ctx, evaluator, say=say)  # a COMPLETE trial already (no model run again)
            if search.seed_plans:
                enqueue_seeds(study, seed_plans(ctx, baseline_seeds(study, loaded, dataset, ctx, calibration)))
            study.set_user_attr("seeded", True)
        if search.fit_budget and HARM_ATTR not in study.user_attrs and dataset is not None and len(dataset):
            batches = calibration()
            say(f"measuring the harm of each single change of the space on {sum(len(b['input_ids']) for b in batches)} "
                "validation questions (once per study)")
            study.set_user_attr(HARM_ATTR, measure_harm(ctx.space, ctx.num_layers, loaded.model, batches))
        # one fit per worker, with the harm measured once per study (seeds only fit plans, so none is
        # enqueued when the space cannot meet the budget)
        fit = BudgetFit(ctx, importance=study.user_attrs.get("block_influence"), harm=study.user_attrs.get(HARM_ATTR))
        fit.check_feasible(job.source_file or job.name)
    return WorkerSetup(loaded, dataset, ctx, fit if search.fit_budget else None, evaluator)


def _silent(line: str) -> None:
    """What ``--no-progress`` says."""


def _say(line: str) -> None:
    """A progress line of the seeding on stderr (one line each: readable on a terminal and in a log)."""
    import sys

    print(line, file=sys.stderr, flush=True)


def make_evaluator(job: Job, loaded: Any, dataset: Any) -> ModelEvaluator:
    """The model evaluator of a search worker (plans applied with
    :func:`searchskip.eval.planned.apply_plan`; Wanda calibration batches cached for the worker's lifetime)."""
    from searchskip.eval.planned import apply_plan

    calibration_cache: dict = {}
    return ModelEvaluator(loaded, dataset, job.eval.batch_size, job.eval.max_new_tokens,
                          report_every=job.search.report_every, feature_cache=job.search.feature_cache,
                          memory_limit_gb=job.search.cache_memory_gb, objective=job.search.objectives[0],
                          apply_fn=lambda plan: apply_plan(loaded, job, plan, source=job.search.space,
                                                           calibration_cache=calibration_cache))


def num_layers_of(model: Any) -> int:
    from searchskip.arch import get_adapter

    return get_adapter(model).num_layers(model)


def _study_workload(study: Any, loaded: Any, dataset: Any, job: Job) -> Any:
    from searchskip.flops import Workload, measure_workload

    stored = study.user_attrs.get("workload")
    if stored is not None:
        return Workload.from_dict(stored)
    if dataset is None:
        raise SearchSkipError("the study has no stored workload and no validation data was given to measure one")
    workload = measure_workload(loaded, dataset, job.eval.max_new_tokens)
    study.set_user_attr("workload", workload.to_dict())
    return workload


def study_fit(job: Job, study: Any, space: Any, arch: Any) -> BudgetFit | None:
    """The budget fit of a study that a worker has set up (workload, layer count and Block Influence
    read from its user attrs), for a process that holds only the model's config ``arch`` (the Ray
    driver); ``None`` with ``search.fit_budget: false``."""
    from searchskip.flops import Workload

    if not job.search.fit_budget:
        return None
    attrs = study.user_attrs
    ctx = ObjectiveContext(space=space, num_layers=int(attrs["num_layers"]), arch=arch,
                           workload=Workload.from_dict(attrs["workload"]), budget=budget_of(job.search.budget),
                           objectives=tuple(job.search.objectives))
    return BudgetFit(ctx, importance=attrs.get("block_influence"), harm=attrs.get(HARM_ATTR))

