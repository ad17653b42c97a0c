"""``sampler: evo``: evolutionary search at the budget, in the style of EvoPress (Sieberling et
al., ICML 2025), as an optuna sampler.

EvoPress searches per-layer compression levels with a (1+λ) loop: mutate the parent into λ
children whose mutations keep the total compression fixed, score the children on a few
calibration batches, keep the best few, score those on more, and let the best replace the
parent. Here:

* **Parent**: the best fully scored (COMPLETE) trial of the study so far, by the first
  objective, ties broken by ``kl`` when trials record it (:mod:`searchskip.search.fitness`),
  then by the earlier trial. It is read from the study at every proposal, so the sampler has
  no state of its own: a resumed run, a second worker and a Ray actor all continue the same
  evolution from the journal (a steady-state (1+λ): the λ children of a parent are the
  proposals made while it is the best, across all workers).
* **Mutation at the budget**: 1 to 3 parameters (mostly 1) take another value, then the
  :class:`~searchskip.search.budget_fit.BudgetFit` maps the child back onto the budget, so a
  layer that gives up an op makes another layer give up one of similar cost (EvoPress's
  level-switch mutation generalized to any space). A child whose plan is already in the study
  is redrawn (up to ``RETRIES`` times).
* **Start**: the first fully scored trial (a seed that fits the budget, when the job seeds) is the
  first parent; before any, children are random proposals fitted to the budget.
* **Selection in steps**: with ``pruner: parent`` (the pruner an ``evo`` search uses unless the
  job names another), a child is scored on a growing part of the validation subset and stopped
  at the first step where it falls below the parent on the same questions
  (:class:`~searchskip.search.pruners.ParentPruner`); only children that keep up are scored in
  full and can become the parent.

Randomness is seeded by ``search.seed`` and the trial's number, so a run is reproducible and
workers draw different children.
"""

from __future__ import annotations

import random
import time
from typing import Any

from optuna.samplers import BaseSampler, RandomSampler

from searchskip.search.samplers.fitted import FIT_SECONDS_ATTR
from searchskip.search.samplers.registry import SamplerContext

__all__ = ["EvoSampler", "make", "parent_trial"]

INITIAL = 1
"""Complete trials (seeds included) before children are mutations of the best one: the first
fully scored plan (usually a seed at the budget) is the first parent."""
RETRIES = 32
"""Redraws of a child whose plan the study already holds."""
MUTATION_SIZES = (1, 1, 1, 2, 2, 3)
"""How many parameters one mutation changes (drawn uniformly from this list)."""


def make(c: SamplerContext) -> "EvoSampler":
    from searchskip.errors import ConfigError

    if c.fit is None:
        raise ConfigError("search.sampler: 'evo' mutates plans at the budget, so it needs search.fit_budget: true")
    from searchskip.search.objective import MAXIMIZED

    return EvoSampler(c.fit, seed=c.seed, maximize=c.objectives[0] in MAXIMIZED)


def parent_trial(study: Any, maximize: bool = True) -> Any | None:
    """The best COMPLETE trial (first objective; then lower ``kl``; then the earlier one)."""
    from optuna.trial import TrialState

    best, best_key = None, None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None or "dedup_of" in t.user_attrs:  # a duplicate: its original is in the list
            continue
        value = t.values[0] if maximize else -t.values[0]
        key = (value, -float(t.user_attrs.get("kl", 0.0)), -t.number)
        if best_key is None or key > best_key:
            best, best_key = t, key
    return best


class EvoSampler(BaseSampler):
    """Children of the best plan so far, mutated and fitted to the budget (module docstring)."""

    def __init__(self, fit: Any, seed: int = 0, maximize: bool = True):
        self.fit = fit
        self.seed = seed
        self.maximize = maximize
        self.distributions = fit.ctx.space.distributions(fit.ctx.num_layers)
        self._independent = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return dict(self.distributions)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        from optuna.trial import TrialState

        rng = random.Random(f"{self.seed}:{trial.number}")
        trials = study.get_trials(deepcopy=False)
        known = {t.user_attrs.get("plan_key") for t in trials if t.number != trial.number}
        complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        parent = parent_trial(study, self.maximize) if complete >= INITIAL else None
        result = None
        fitting = 0.0
        for _ in range(RETRIES):
            if parent is None:
                proposal = {name: rng.choice(values) for name, values in self.fit.choices().items()}
            else:
                proposal = self._mutate(parent, rng)
            began = time.perf_counter()
            result = self.fit.fit(proposal)
            fitting += time.perf_counter() - began
            if result.plan.key() not in known:
                break
        assert result is not None
        study._storage.set_trial_user_attr(trial._trial_id, "evo_parent", None if parent is None else parent.number)
        study._storage.set_trial_user_attr(trial._trial_id, FIT_SECONDS_ATTR, fitting)
        return result.params

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    # ---- proposals ----------------------------------------------------------------------------
    def _mutate(self, parent: Any, rng: random.Random) -> dict[str, Any]:
        choices = self.fit.choices()
        params = {name: parent.params.get(name, values[0]) for name, values in choices.items()}
        names = [name for name, values in choices.items() if len(values) > 1]
        for name in rng.sample(names, min(len(names), rng.choice(MUTATION_SIZES))):
            params[name] = rng.choice([v for v in choices[name] if v != params[name]])
        return params
