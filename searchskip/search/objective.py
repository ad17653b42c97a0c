"""One trial: suggest a plan, price it, and (only if it fits the budget) score it.

    trial ──► space.suggest ──► count_flops(arch, plan, workload) ──► over budget? ──► PRUNED (infeasible)
                                                                      │ no
                                             same plan already COMPLETE? ──► reuse its values (dedup_of)
                                                                      │ no
                                   apply(model, plan) ─► score batches ─► report / should_prune ─► restore

**Infeasible trials** are recorded as PRUNED trials with user attrs ``infeasible: true``,
``flops`` and ``flops_ratio`` (and the plan), and no intermediate value: the model never
runs. Why pruned rather than optuna's ``constraints_func``: a constrained trial still needs
objective values, i.e. a model evaluation or a made-up score that would mislead TPE; a
pruned trial without intermediate values is ranked by TPE among the worst trials (it steers
the sampler away from that region) and NSGA-II ignores it. Pruned trials count toward
``search.trials``, so an over-budget space cannot loop forever.

**Dedup.** Plans are compared by :meth:`Plan.key`; several parameter sets give the same plan
(a layer's op that a scope choice makes irrelevant, grid points, a retried trial). A trial
whose plan matches a COMPLETE trial returns that trial's values (user attr ``dedup_of``)
without running the model.

**Multi-fidelity.** With one objective, the running accuracy is reported every
``report_every`` batches (step = questions scored so far) and the pruner may stop the trial
(user attr ``pruned_at``); seeded baseline trials are never pruned, so the search is compared
with fully scored baselines. optuna does not support ``report``/``should_prune`` with several
objectives, so ``[accuracy, flops]`` studies score every plan in full.

User attrs of every trial: ``plan`` (YAML), ``plan_key``, ``flops``, ``flops_ratio``,
``flops_by_component``, ``infeasible``; of scored trials also ``accuracy``,
``accuracy_per_question_type``, ``questions``, ``latency_ms`` (measured wall time of answering
the subset per question), ``seconds``. Values: ``accuracy`` (maximize) and, with
``[accuracy, flops]``, ``flops_ratio`` (minimize), with ``[accuracy, latency]``, ``latency_ms``
(minimize; measured, so it varies with the machine's load: compare trials of one quiet run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from searchskip.flops import ArchGeometry, Budget, FlopReport, Workload, count_flops, geometry_of
from searchskip.plan import Plan

__all__ = ["Objective", "ObjectiveContext", "Evaluator", "ModelEvaluator", "PlanScore", "plan_cost", "budget_of"]


@dataclass
class PlanScore:
    """What scoring one plan gives."""

    accuracy: float
    per_question_type: dict[str, float]
    questions: int
    latency_ms: float | None = None
    """Measured wall time per question (ms): answering the subset over the questions scored."""
    agreement: float | None = None
    """Share of answers identical to the unplanned model's (label-free; only when an objective needs it)."""
    kl: float | None = None
    """Mean teacher-forced KL of the answer tokens from the unplanned model's (:mod:`searchskip.eval.fidelity`)."""


Report = Callable[[float, int], None]
"""``report(accuracy_so_far, step)``; may raise ``optuna.TrialPruned``."""


class Evaluator(Protocol):
    def __call__(self, plan: Plan, report: Report | None) -> PlanScore: ...


def budget_of(spec: Any) -> Budget:
    """The :class:`~searchskip.flops.Budget` of a job's ``search.budget``."""
    return Budget(ratio=spec.flops_ratio, gflops=spec.gflops_per_sample, count=spec.count, attention=spec.attention)


@dataclass
class ObjectiveContext:
    """Everything a trial needs that the study computed once."""

    space: Any
    num_layers: int
    arch: Any
    """What :func:`count_flops` takes (the model's config)."""
    workload: Workload
    budget: Budget
    objectives: tuple[str, ...] = ("accuracy",)
    baseline: FlopReport | None = None
    geometry: ArchGeometry | None = field(default=None, repr=False)
    """``arch`` read once (:func:`~searchskip.flops.geometry_of`), so pricing a plan does not read the config again."""

    def __post_init__(self) -> None:
        if self.geometry is None:
            self.geometry = geometry_of(self.arch)
        if self.baseline is None:
            self.baseline = count_flops(self.geometry, None, self.workload, count=self.budget.count,
                                        attention=self.budget.attention)


def plan_cost(ctx: ObjectiveContext, plan: Plan) -> tuple[FlopReport, float, bool]:
    """``(report, ratio to the unplanned model, fits the budget)``."""
    report = count_flops(ctx.geometry, plan, ctx.workload, count=ctx.budget.count, attention=ctx.budget.attention)
    return report, report.ratio(ctx.baseline), ctx.budget.allows(report, ctx.baseline)


class ModelEvaluator:
    """Scores plans on the loaded model: apply, answer the subset batch by batch, restore.

    ``apply_fn(plan)`` applies a plan and returns a handle with ``restore()`` (the search passes
    :func:`searchskip.eval.planned.apply_plan`, which calibrates Wanda pruning on the job's train split;
    without one, plans are not applied).

    The subset is prepared once, at construction (:func:`searchskip.eval.prepared.prepare_subset`):
    tokenized and batched, and with ``feature_cache`` other than ``none`` its image features
    (vision tower + projector, which no plan changes) computed once; a trial then runs only the
    decoder and ``lm_head``. :meth:`close` removes a disk feature cache.
    """

    def __init__(self, loaded: Any, dataset: Any, batch_size: int, max_new_tokens: int, *,
                 report_every: int = 1, apply_fn: Callable[[Plan], Any] | None = None,
                 feature_cache: str = "auto", memory_limit_gb: float = 2.0, cache_folder: Any = None,
                 objective: str = "accuracy"):
        from searchskip.eval.batching import sorted_by_image
        from searchskip.eval.prepared import prepare_subset

        dataset, keys, _ = sorted_by_image(loaded, dataset)  # one image shape per batch (visual_tokens needs it)
        self.loaded = loaded
        self.dataset = dataset
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.report_every = report_every
        self.apply_fn = apply_fn
        columns = dataset.select_columns(["answers", "question_type", "answer_type"]).to_dict()
        self.answers = columns["answers"]
        self.question_types = columns["question_type"]
        self.answer_types = columns["answer_type"]
        self.prepared = prepare_subset(loaded, dataset, batch_size, feature_cache=feature_cache,
                                       memory_limit_gb=memory_limit_gb, folder=cache_folder, keys=keys)
        self.objective = objective
        """What the running value passed to ``report`` is: ``accuracy``, ``agreement`` or ``kl``."""
        self.reference = None
        if objective in FIDELITY_OBJECTIVES:
            from searchskip.eval.fidelity import Reference

            self.reference = Reference(loaded, self.prepared, max_new_tokens)

    def close(self) -> None:
        """Remove the disk feature cache, if any."""
        self.prepared.close()

    def __call__(self, plan: Plan, report: Report | None) -> PlanScore:
        from searchskip.eval.fidelity import score_batch
        from searchskip.eval.generate import generate_answers
        from searchskip.eval.vqa_accuracy import question_accuracy, score_accuracies

        references = self.reference.ensure() if self.reference is not None else None  # before the plan
        handle = self.apply_fn(plan) if self.apply_fn is not None else None
        try:
            accuracies: list[float] = []  # each question scored once; the final score is built from these
            fidelity: dict[str, list[float]] = {"agreement": [], "kl": []}
            n = len(self.dataset)
            answering = 0.0
            for batch_number, batch in enumerate(self.prepared, start=1):
                began = time.perf_counter()
                if references is None:
                    answers = generate_answers(self.loaded, batch.generate_inputs(), self.max_new_tokens)
                else:
                    scored_batch = score_batch(self.loaded, batch.generate_inputs, references[batch_number - 1],
                                               self.max_new_tokens)
                    answers = scored_batch.answers
                    fidelity["agreement"] += scored_batch.agreement
                    fidelity["kl"] += scored_batch.kl
                answering += time.perf_counter() - began
                accuracies += [question_accuracy(answer, self.answers[i])
                               for i, answer in enumerate(answers, start=len(accuracies))]
                if report is not None and batch_number % self.report_every == 0 and len(accuracies) < n:
                    values = accuracies if self.objective == "accuracy" else fidelity[self.objective]
                    report(sum(values) / len(values), len(values))
        finally:
            if handle is not None:
                handle.restore()
        result = score_accuracies(accuracies, self.question_types, self.answer_types)
        mean = {k: sum(v) / len(v) if v else None for k, v in fidelity.items()}
        return PlanScore(result.accuracy, dict(result.per_question_type), result.n, 1000 * answering / max(1, n),
                         agreement=mean["agreement"], kl=mean["kl"])


OBJECTIVE_ATTRS = {"accuracy": "accuracy", "agreement": "agreement", "kl": "kl", "flops": "flops_ratio",
                   "latency": "latency_ms"}
"""The trial user attr holding each objective's value (``latency``: measured ms per question)."""
MAXIMIZED = ("accuracy", "agreement")
"""Objectives that are maximized; the others (``kl``, ``flops``, ``latency``) are minimized."""
FIDELITY_OBJECTIVES = ("agreement", "kl")
"""Objectives measured against the unplanned model's outputs (:mod:`searchskip.eval.fidelity`)."""
SCORE_ATTRS = ("accuracy", "accuracy_per_question_type", "questions", "latency_ms", "agreement", "kl")
"""The user attrs a scored trial gets from its :class:`PlanScore` (and a duplicate copies)."""


def plan_attrs(plan: Plan, report: FlopReport, ratio: float, fits: bool) -> dict[str, Any]:
    """The user attrs every trial gets from its plan and cost (:func:`plan_cost`)."""
    return {"plan": plan.to_yaml(), "plan_key": plan.key(), "flops": report.total_flops, "flops_ratio": ratio,
            "flops_by_component": report.by_component(), "infeasible": not fits}


def objective_values(objectives: Sequence[str], attrs: dict[str, Any]) -> list[float]:
    """The values of ``objectives`` in a scored trial's user attrs (:data:`OBJECTIVE_ATTRS`)."""
    return [attrs[OBJECTIVE_ATTRS[o]] for o in objectives]


def score_attrs(result: PlanScore) -> dict[str, Any]:
    """The user attrs of a :class:`PlanScore` (those it has)."""
    attrs = {"accuracy": result.accuracy, "accuracy_per_question_type": result.per_question_type,
             "questions": result.questions, "latency_ms": result.latency_ms, "agreement": result.agreement,
             "kl": result.kl}
    return {k: v for k, v in attrs.items() if v is not None}

TWIN_WAIT_S = 3600.0
TWIN_POLL_S = 0.5


@dataclass
class Objective:
    """The callable handed to ``study.optimize``."""

    ctx: ObjectiveContext
    evaluate: Evaluator
    prune: bool = True
    """Obey the pruner (single objective only; intermediate values are reported either way)."""
    evaluations: int = 0

    @property
    def multi(self) -> bool:
        return len(self.ctx.objectives) > 1

    def _values(self, attrs: dict[str, Any]) -> float | tuple[float, ...]:
        values = objective_values(self.ctx.objectives, attrs)
        return tuple(values) if self.multi else values[0]

    def _find_complete(self, study: Any, key: str) -> Any | None:
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.user_attrs.get("plan_key") == key and "accuracy" in trial.user_attrs:
                return trial
        return None

    def _wait_for_running_twin(self, trial: Any, key: str, *, scoring_too: bool) -> bool:
        """Another worker is scoring the same plan: wait for it (so the plan is scored once and this
        trial becomes its ``dedup_of``). A twin is a RUNNING trial of the same plan with a lower
        number or, with ``scoring_too``, one that has started scoring (user attr ``scoring``).
        Gives up if that trial fails or its worker (on this host) dies, or after ``TWIN_WAIT_S``.
        ``True`` if it waited."""
        from optuna.trial import TrialState

        from searchskip.search.storage import _dead_local_worker

        waited = False
        deadline = time.monotonic() + TWIN_WAIT_S
        while time.monotonic() < deadline:
            twins = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.number != trial.number and t.user_attrs.get("plan_key") == key
                     and (t.number < trial.number or (scoring_too and t.user_attrs.get("scoring")))
                     and not t.user_attrs.get("infeasible") and not _dead_local_worker(t.user_attrs.get("worker"))]
            if not twins:
                return waited
            waited = True
            time.sleep(TWIN_POLL_S)
        return waited

    def _scored_twin(self, trial: Any, key: str) -> Any | None:
        """The COMPLETE trial whose score this trial reuses, or ``None`` when this trial scores its plan.

        Two workers that draw the same plan at once score it once: each records ``plan_key``, waits
        for twins with a lower number or already scoring, marks itself ``scoring``, and then yields
        once more to a lower-numbered twin (whose key it can now see), so of two twins that both got
        that far only the lower-numbered one scores."""
        previous = self._find_complete(trial.study, key)
        if previous is None and self._wait_for_running_twin(trial, key, scoring_too=True):
            previous = self._find_complete(trial.study, key)
        if previous is not None:
            return previous
        trial.set_user_attr("scoring", True)
        if self._wait_for_running_twin(trial, key, scoring_too=False):
            return self._find_complete(trial.study, key)
        return None

    def __call__(self, trial: Any) -> float | tuple[float, ...]:
        import optuna

        from searchskip.search.storage import worker_id

        start = time.perf_counter()
        trial.set_user_attr("worker", worker_id())  # first: a stale-trial pass can tell whose it is
        ctx = self.ctx
        plan = ctx.space.suggest(trial, ctx.num_layers)
        report, ratio, fits = plan_cost(ctx, plan)
        key = plan.key()
        for name, value in plan_attrs(plan, report, ratio, fits).items():
            trial.set_user_attr(name, value)
        if not fits:
            trial.set_user_attr("seconds", time.perf_counter() - start)
            raise optuna.TrialPruned(f"over budget: {ratio:.4f} x the unplanned model's FLOPs "
                                     f"(budget: {ctx.budget.describe()})")

        previous = self._scored_twin(trial, key)
        if previous is not None:
            for name in SCORE_ATTRS:
                if name in previous.user_attrs:
                    trial.set_user_attr(name, previous.user_attrs[name])
            trial.set_user_attr("dedup_of", previous.number)
            trial.set_user_attr("seconds", time.perf_counter() - start)
            return self._values(previous.user_attrs)

        reporter = None
        if not self.multi:
            def reporter(accuracy: float, step: int) -> None:
                trial.report(accuracy, step)
                # Seeded baselines (unplanned, paper, Block Influence) are scored in full: the search
                # is compared with them, and a half-scored baseline would make that comparison unfair.
                if self.prune and "seed" not in trial.user_attrs and trial.should_prune():
                    trial.set_user_attr("pruned_at", step)
                    trial.set_user_attr(f"{ctx.objectives[0]}_at_prune", accuracy)
                    trial.set_user_attr("seconds", time.perf_counter() - start)
                    raise optuna.TrialPruned(f"pruned at {step} questions (accuracy so far {accuracy:.4f})")

        self.evaluations += 1
        result = self.evaluate(plan, reporter)
        attrs = score_attrs(result)
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return self._values({**attrs, "flops_ratio": ratio})


def directions(objectives: Sequence[str]) -> list[str]:
    return ["maximize" if o in MAXIMIZED else "minimize" for o in objectives]
