"""The sampler registry: a name -> factory map that refuses duplicates (peft's style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from searchskip.errors import ConfigError

__all__ = ["SamplerContext", "SamplerEntry", "SamplerRegistry", "REGISTRY", "make_sampler"]


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler factory gets: the job's choice and what the study computed once."""

    name: str
    seed: int
    space: Any
    num_layers: int
    objectives: tuple[str, ...] = ("accuracy",)
    fit: Any = None
    """A :class:`~searchskip.search.budget_fit.BudgetFit`, or ``None`` (proposals are not repaired)."""


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler: its name, its factory, and whether :func:`make_sampler` wraps it in the
    budget fit (a sampler that fits its own proposals, or enumerates the space, says no)."""

    name: str
    factory: Callable[[SamplerContext], Any]
    description: str
    fits_budget: bool = True


class SamplerRegistry:
    """Ordered name -> :class:`SamplerEntry`."""

    def __init__(self) -> None:
        self._entries: dict[str, SamplerEntry] = {}

    def register(self, entry: SamplerEntry) -> SamplerEntry:
        if entry.name in self._entries:
            raise ValueError(f"a sampler named {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> SamplerEntry:
        if name not in self._entries:
            raise ConfigError(f"search.sampler: must be one of {', '.join(self._entries)}, but got {name!r}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)


REGISTRY = SamplerRegistry()


def make_sampler(context: SamplerContext) -> Any:
    """The optuna sampler ``context.name`` names, fitted to the budget when the entry allows and
    the context has a fit."""
    from searchskip.search.samplers.fitted import BudgetFitSampler

    entry = REGISTRY.get(context.name)
    sampler = entry.factory(context)
    if entry.fits_budget and context.fit is not None:
        sampler = BudgetFitSampler(sampler, context.fit)
    return sampler
