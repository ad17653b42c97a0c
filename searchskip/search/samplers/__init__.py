"""The samplers a job may name in ``search.sampler``: one module each, registered here explicitly.

    from searchskip.search.samplers import SamplerContext, make_sampler
    sampler = make_sampler(SamplerContext(name="tpe", seed=0, space=space, num_layers=n, fit=budget_fit))

Every sampler but ``grid`` proposes through :class:`~searchskip.search.budget_fit.BudgetFit` when
the context has one (``search.fit_budget``, the default): a proposal is mapped onto the budget
before it becomes the trial's parameters, so no over-budget plan reaches the model
(:mod:`searchskip.search.samplers.fitted`). ``grid`` enumerates the space as it is.
"""

from __future__ import annotations

from typing import Any

from searchskip.search.samplers import builtin, evo
from searchskip.search.samplers.registry import REGISTRY, SamplerContext, SamplerEntry, make_sampler

__all__ = ["REGISTRY", "SamplerContext", "SamplerEntry", "make_sampler", "sampler_for", "register", "names",
           "resolved_sampler", "AUTO"]

AUTO = "auto"
"""``search.sampler: auto`` (the default): :func:`resolved_sampler`."""


def resolved_sampler(search: Any) -> str:
    """The sampler a job's ``search`` section means. ``auto`` is ``evo`` for one objective with
    ``fit_budget`` (the search-quality benchmark's best at tight budgets, README "Search quality"),
    else ``tpe`` (a Pareto front over several objectives needs proposals across costs, and ``evo``
    mutates plans at the budget only)."""
    if search.sampler != AUTO:
        return search.sampler
    objectives = tuple(getattr(search, "objectives", ("accuracy",)))
    return "evo" if len(objectives) == 1 and getattr(search, "fit_budget", True) else "tpe"


def register(entry: SamplerEntry) -> SamplerEntry:
    """Add a sampler; ``ValueError`` if its name is taken."""
    return REGISTRY.register(entry)


def sampler_for(search: Any, space: Any, num_layers: int, history: int = 0, fit: Any = None) -> Any:
    """The sampler of a job's ``search`` section. optuna does not store a sampler's state, so a
    resumed run seeds it with ``search.seed + history`` (trials already in the study): the same
    seed would replay the first run's random start-up suggestions, all of them duplicates."""
    return make_sampler(SamplerContext(name=resolved_sampler(search), seed=search.seed + history, space=space,
                                       num_layers=num_layers, objectives=tuple(getattr(search, "objectives", ("accuracy",))),
                                       fit=fit))


def names() -> tuple[str, ...]:
    """The names a job may give ``search.sampler``."""
    return (AUTO, *REGISTRY.names())


register(SamplerEntry("tpe", builtin.tpe, "optuna's TPESampler"))
register(SamplerEntry("nsga2", builtin.nsga2, "optuna's NSGAIISampler"))
register(SamplerEntry("gp", builtin.gp, "optuna's GPSampler (one objective; needs scipy)"))
register(SamplerEntry("random", builtin.random, "optuna's RandomSampler"))
register(SamplerEntry("grid", builtin.grid, "optuna's GridSampler over the whole space (not fitted to the budget)",
                      fits_budget=False))
register(SamplerEntry("evo", evo.make, "EvoPress-style (1+lambda) evolution at the budget", fits_budget=False))
