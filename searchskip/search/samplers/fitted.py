"""Any optuna sampler, its proposals mapped onto the budget: :class:`BudgetFitSampler`.

The wrapped sampler proposes a value for every parameter of the space; the proposal is repaired
(:class:`~searchskip.search.budget_fit.BudgetFit`) and returned as optuna *relative* parameters,
so the trial's stored parameters are the repaired plan's (a trial stays reproducible from its
parameters, and the wrapped sampler learns from what was scored). Everything else (the journal,
resume, several workers, Ray's ``OptunaSearch``) sees an ordinary sampler:

* Enqueued trials (seeds, retried trials) keep their fixed parameters: optuna reads fixed
  parameters before relative ones, and seeds are only enqueued when they fit.
* The wrapped sampler's hooks (``before_trial``/``after_trial``, NSGA-II's generations) run as
  before; its relative search space (multivariate TPE, NSGA-II, GP) is sampled first and the
  remaining parameters independently, exactly as optuna would.
"""

from __future__ import annotations

import time
from typing import Any

from optuna.samplers import BaseSampler

__all__ = ["BudgetFitSampler", "FIT_CHANGES_ATTR", "FIT_SECONDS_ATTR"]

FIT_CHANGES_ATTR = "fit_changes"
"""Trial user attr: how many parameters the budget fit changed in the sampler's proposal."""
FIT_SECONDS_ATTR = "fit_seconds"
"""Trial user attr: wall seconds the budget fit took for this trial's proposal(s)."""


class BudgetFitSampler(BaseSampler):
    """``base``'s proposals, each mapped onto the budget by ``fit`` before the trial uses it."""

    def __init__(self, base: BaseSampler, fit: Any):
        self.base = base
        self.fit = fit
        self.distributions = fit.ctx.space.distributions(fit.ctx.num_layers)

    def __repr__(self) -> str:
        return f"BudgetFitSampler({type(self.base).__name__})"

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def before_trial(self, study: Any, trial: Any) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return dict(self.distributions)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        proposal = propose_all(self.base, study, trial, self.distributions)
        began = time.perf_counter()
        result = self.fit.fit(proposal)
        study._storage.set_trial_user_attr(trial._trial_id, FIT_SECONDS_ATTR, time.perf_counter() - began)
        study._storage.set_trial_user_attr(trial._trial_id, FIT_CHANGES_ATTR, result.changes)
        return result.params

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)


def propose_all(sampler: BaseSampler, study: Any, trial: Any, distributions: dict[str, Any]) -> dict[str, Any]:
    """A value for every parameter of ``distributions`` from ``sampler``: its relative sample for
    its relative search space, an independent sample for the rest (optuna's own order)."""
    space = sampler.infer_relative_search_space(study, trial)
    relative = sampler.sample_relative(study, trial, space) if space else {}
    return {name: relative[name] if name in relative else sampler.sample_independent(study, trial, name, dist)
            for name, dist in distributions.items()}
