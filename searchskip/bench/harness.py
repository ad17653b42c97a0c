"""What the benchmarks share: :class:`Bench` (the job, the model and validation subset loaded once,
and the search's own FLOP context) and small timing helpers."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["Bench", "search_job", "median", "timed", "trial_wall_s", "plan_of"]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def search_job(job: Any, outputs: Path, **search: Any) -> Any:
    """``job`` with its search section changed (``budget`` given as a BudgetSpec) and studies under ``outputs``."""
    return dataclasses.replace(job, outputs=str(outputs), search=dataclasses.replace(job.search, **search))


class Bench:
    """What every part shares: the job, the model and validation subset loaded once (or given:
    ``loaded``, ``dataset``), and the search's own :class:`~searchskip.search.objective.ObjectiveContext` (workload, FLOP
    convention, unplanned FLOPs) to price plans with."""

    def __init__(self, job: Any, console: Any, folder: Path, studies: str = "studies", *,
                 loaded: Any = None, dataset: Any = None):
        from searchskip.arch import get_adapter
        from searchskip.config.loader import resolve_space
        from searchskip.flops import measure_workload
        from searchskip.search.objective import ObjectiveContext, budget_of
        from searchskip.search.space import Space
        from searchskip.search.worker import load_worker_inputs

        self.job, self.console, self.folder, self.studies = job, console, folder, studies
        self.load_s, (self.loaded, self.dataset) = timed(lambda: load_worker_inputs(job, loaded, dataset))
        self.space = Space.load(resolve_space(job.search.space))
        self.ctx = ObjectiveContext(space=self.space, arch=self.loaded.model.config,
                                    num_layers=get_adapter(self.loaded.model).num_layers(self.loaded.model),
                                    workload=measure_workload(self.loaded, self.dataset, job.eval.max_new_tokens),
                                    budget=budget_of(job.search.budget))
        self.num_layers, self.arch, self.workload, self.baseline = (
            self.ctx.num_layers, self.ctx.arch, self.ctx.workload, self.ctx.baseline)
        self._evaluator = None

    def flops(self, plan: Any) -> Any:
        from searchskip.search.objective import plan_cost

        return plan_cost(self.ctx, plan)[0]

    def llm_ratio(self, plan: Any) -> float:
        return self.flops(plan).llm_ratio(self.baseline)

    def llm_budget(self, ratio: float) -> Any:
        """A job budget (absolute GFLOPs per sample) that admits a plan exactly when its language-model
        FLOPs are at most ``ratio`` x the unplanned model's (no plan changes the vision side)."""
        from searchskip.config.job import BudgetSpec

        llm = self.baseline.llm_total()
        other = self.baseline.total() - llm
        budget = self.ctx.budget
        return BudgetSpec(gflops_per_sample=(other + ratio * llm) / 1e9, count=budget.count, attention=budget.attention)

    def budget(self, ratio: float) -> Any:
        from searchskip.search.objective import budget_of

        return budget_of(self.llm_budget(ratio))

    @property
    def evaluator(self) -> Any:
        """The search worker's evaluator (:func:`~searchskip.search.study.make_evaluator`), built once."""
        if self._evaluator is None:
            from searchskip.search.worker import make_evaluator

            self._evaluator = make_evaluator(self.job, self.loaded, self.dataset)
        return self._evaluator

    def study(self, name: str, trials: int, **search: Any) -> Any:
        """Run a fresh study ``name`` of ``trials`` on the loaded model (the shared evaluator)."""
        from searchskip.search.run import run_search

        job = search_job(self.job, self.folder / self.studies, **search)
        self.console.print(f"[bold]study {name}[/]: {trials} trials, {dict(search)}")
        return run_search(job, trials, study_name=name, force_new_study=True, evaluator=self.evaluator,
                          loaded=self.loaded, dataset=self.dataset, progress=False)


def trial_wall_s(trial: Any) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def plan_of(trial: Any) -> Any:
    from searchskip.plan import Plan

    return Plan.from_yaml_text(trial.user_attrs["plan"])
