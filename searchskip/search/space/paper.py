"""``kind: paper`` spaces (:class:`PaperSpace`): the seed paper's interval plans
(:meth:`Plan.from_pattern <searchskip.plan.Plan.from_pattern>`), one parameter per argument of
it, the cached table of every distinct interval plan, and the builder that makes one from its
file form (:data:`PAPER_KIND`, registered in :mod:`searchskip.search.space`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

from searchskip.plan import PARALLEL_BLOCKS, Plan
from searchskip.search.space.base import Space
from searchskip.search.space.choices import (
    IntChoice, _choice_decision, _choice_keys, _Decision, _offer_problems, _plural, _resolver,
)
from searchskip.search.space.file_form import _int_choice, _PaperFile, _shared_choices, _strings
from searchskip.search.space.kinds import SpaceKindEntry
from searchskip.search.space.names import PARAM_END_LAYER, PARAM_MODE, PARAM_SKIP_INTERVAL, PARAM_START_LAYER
from searchskip.search.space.token_rules import _features


@dataclass(frozen=True, kw_only=True)
class PaperSpace(Space):
    """``kind: paper``: :meth:`Plan.from_pattern` plans, one parameter per argument of it."""

    KIND: ClassVar[str] = "paper"

    modes: tuple[str, ...] = ()
    skip_interval: IntChoice = (1,)
    start_layer: IntChoice = (0,)
    end_layer: IntChoice | None = None

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        at = _resolver(num_layers)
        end = (_Decision(PARAM_END_LAYER, (num_layers,)) if self.end_layer is None
               else _choice_decision(PARAM_END_LAYER, self.end_layer, at))
        return [_Decision(PARAM_MODE, self.modes), _choice_decision(PARAM_SKIP_INTERVAL, self.skip_interval),
                _choice_decision(PARAM_START_LAYER, self.start_layer, at), end, self._scope_decision()]

    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        problems = []
        model = f"the model has {_plural(num_layers)}; negative values count from the end"

        for key, value in _choice_keys("start_layer", self.start_layer):
            if not -num_layers <= value < num_layers:
                problems.append((key, f"`-num_layers <= start_layer < num_layers` must hold ({model}), "
                                      f"but got start_layer={value}"))
        if self.end_layer is not None:
            for key, value in _choice_keys("end_layer", self.end_layer):
                if not -num_layers < value <= num_layers:
                    problems.append((key, f"`-num_layers < end_layer <= num_layers` must hold ({model}), "
                                          f"but got end_layer={value}"))
        if problems:
            return problems
        _, _, start, end, _ = self._layer_decisions(num_layers)
        for key, d in (("start_layer", start), ("end_layer", end)):
            problems += _offer_problems(key, d, model)
        if not problems and max(start.values) >= min(end.values):
            problems.append(("end_layer", f"`start_layer < end_layer` must hold for every choice of both once "
                                          f"resolved ({model}), but got start_layer={max(start.values)}, "
                                          f"end_layer={min(end.values)}"))
        return problems

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        mode, interval, start, end, scope = (d.suggest(trial) for d in self._layer_decisions(num_layers))
        return self._pattern(mode, interval, start, end, scope, num_layers)

    def _pattern(self, mode: str, interval: int, start: int, end: int, scope: str, num_layers: int) -> Plan:
        return Plan.from_pattern(interval, start, end, mode, scope, num_layers,
                                 average=self.average and mode == PARALLEL_BLOCKS)

    def _table(self, num_layers: int) -> dict[Plan, dict[str, Any]]:
        return _cached_paper_table(self, num_layers)

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        params = self._table(num_layers).get(plan)
        return None if params is None else dict(params)

    def _unpruned_plans(self, num_layers: int) -> int:
        table = self._table(num_layers)
        if self.visual_tokens is None and self.early_exit is None:
            return len(table)  # no token decision: one plan per interval plan
        count = self._token_count(num_layers)
        return sum(count.total([[_features(plan.op_for(i))] for i in range(num_layers)]) for plan in table)


@functools.lru_cache(maxsize=64)
def _cached_paper_table(space: PaperSpace, num_layers: int) -> dict[Plan, dict[str, Any]]:
    """Every distinct interval plan (no prune) -> the first parameters giving it."""
    decisions = space._layer_decisions(num_layers)
    table: dict[Plan, dict[str, Any]] = {}
    for values in itertools.product(*(d.values for d in decisions)):
        plan = space._pattern(*values, num_layers)
        if plan not in table:
            table[plan] = {d.name: v for d, v in zip(decisions, values) if d.is_param}
    return table


def _paper_from_file(built: _PaperFile, file: str | None) -> PaperSpace:
    return PaperSpace(modes=_strings(built.mode), skip_interval=_int_choice(built.skip_interval),
                      start_layer=_int_choice(built.start_layer),
                      end_layer=None if built.end_layer is None else _int_choice(built.end_layer),
                      **_shared_choices(built, file))


PAPER_KIND = SpaceKindEntry(PaperSpace.KIND, _PaperFile, _paper_from_file)
"""``kind: paper`` for :data:`~searchskip.search.space.kinds.KINDS`."""
