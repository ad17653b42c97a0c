"""Map any proposed plan onto the FLOP budget before the model sees it: :class:`BudgetFit`.

A sampler proposes a value for every parameter of the space (an *assignment*); many of those
plans miss the budget. Rejecting them costs no model run, but it starves the sampler: at 35%
of the LLM's FLOPs TPE saw 78 of 100 proposals rejected, random search 98. Sampling directly
inside the feasible set is hard for a define-by-run space with conditional parameters and
token ops whose costs interact. So searchskip **repairs** every proposal instead, and the
repaired assignment becomes the trial's parameters (Lamarckian: the sampler learns from what
was scored, and a trial is reproducible from its parameters):

1. **Cut** (over budget): change one parameter at a time to a cheaper value, choosing the
   change with the smallest *estimated harm per FLOP saved*, until the plan fits.
2. **Fill** (under budget): while some change gives compute back and still fits, make the one
   with the largest *harm undone per FLOP added*. A plan far below the budget is rarely the
   best: accuracy almost always rises with compute, so every proposal ends at the budget.

**Costs** are exact (:func:`~searchskip.search.objective.plan_cost`, the same count the
objective checks) for every plan the repair settles on; the ranking of candidate changes uses
an additive estimate (each parameter value's cost change against a reference assignment,
measured once), since a change's exact cost would cost a FLOP count per candidate.

**Harm** is measured when the study measured it (``harm``: :mod:`searchskip.search.harm`, how far
each value changed alone moves the first answer token's distribution, so sparing a layer's image
tokens ranks as far less harmful than skipping the layer for every token). Otherwise it is a
prior: a layer's change harms in proportion to the share of that layer's FLOPs it removes,
weighted by the layer's importance (ShortGPT's Block Influence when the study measured it, else
equal weights); changes of other parameters (token dropping, early exit, pruning, scope) harm in
proportion to the FLOPs they remove, like an average layer, and a change that removes no FLOPs but
alters the computation (``parallel_attn_ffn``) has a small harm, so a fill prefers it to a skip.
The sampler does the learning; the harm only decides which proposals land where on the budget line.

The cheapest plan of the space (each parameter at its cheapest value) is checked once
(:meth:`BudgetFit.check_feasible`): when even it misses the budget, the search stops before any
trial with an error that gives its FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from searchskip.errors import ConfigError
from searchskip.plan import Plan
from searchskip.search.harm import harm_key
from searchskip.search.objective import ObjectiveContext

__all__ = ["BudgetFit", "FitResult"]

MAX_CUT_STEPS = 64
"""Moves a cut may make before the proposal takes the space's cheapest plan instead."""
_REORDER_HARM = 0.05
"""Harm of a change that alters a layer without removing FLOPs, as a share of the layer's weight."""


def _layer_of(name: str) -> int | None:
    """Layer index of a ``layer_XX.op`` parameter (``None`` for other parameters)."""
    if name.startswith("layer_") and name.endswith(".op"):
        return int(name[len("layer_"):-len(".op")])
    return None


@dataclass
class FitResult:
    """A repaired assignment: the parameters the trial uses, its plan and cost."""

    params: dict[str, Any]
    plan: Plan
    cost: float
    changes: int
    """Parameters changed from the proposal."""


@dataclass
class BudgetFit:
    """Repairs assignments of ``ctx.space`` onto ``ctx.budget`` (see the module docstring).

    ``importance``: one weight per decoder layer (Block Influence), or ``None`` for equal weights;
    ``harm``: the measured harm of each value (:func:`searchskip.search.harm.measure_harm`), which
    replaces the prior (and the importance) where given.
    """

    ctx: ObjectiveContext
    importance: Sequence[float] | None = None
    harm: Mapping[str, Mapping[str, float]] | None = None
    _values: dict[str, tuple[Any, ...]] = field(init=False)
    _delta: dict[tuple[str, Any], float] = field(init=False)
    _harm: dict[tuple[str, Any], float] = field(init=False)
    _costs: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        ctx = self.ctx
        self.limit = ctx.budget.limit(ctx.baseline)
        # the space's own values (a number range's exact grid points, as optuna's step distributions hold them)
        self._values = {name: tuple(values) for name, values in ctx.space.grid(ctx.num_layers).items()}
        reference = {name: values[0] for name, values in self._values.items()}
        base_cost = self.cost(reference)
        self._delta = {}
        for name, values in self._values.items():
            for value in values:
                trial = {**reference, name: value}
                try:
                    delta = self.cost(trial) - base_cost
                except ConfigError:  # a value that is invalid in the reference context
                    delta = 0.0
                self._delta[name, value] = delta
        self._harm = self._measured(self.harm) if self.harm else self._prior()

    def _prior(self) -> dict[tuple[str, Any], float]:
        """Harm without a measurement: the share of a layer's FLOPs a value removes, by layer importance."""
        ctx = self.ctx
        total = ctx.budget.cost(ctx.baseline)
        layer_cost = total / max(1, ctx.num_layers)
        weights = self._weights()
        harm: dict[tuple[str, Any], float] = {}
        for name, values in self._values.items():
            layer = _layer_of(name)
            weight = weights[layer] if layer is not None and layer < len(weights) else 1.0
            most = max(self._delta[name, v] for v in values)  # the value that removes least
            for value in values:
                removed = (most - self._delta[name, value]) / (layer_cost if layer is not None else total / ctx.num_layers)
                value_harm = weight * removed
                if value != values[0] and removed <= 0 and layer is not None and value != "keep":
                    value_harm = weight * _REORDER_HARM
                harm[name, value] = max(0.0, value_harm)
        return harm

    def _measured(self, measured: Mapping[str, Mapping[str, float]]) -> dict[tuple[str, Any], float]:
        """The measured harm; a value without a measurement (a space changed since) takes the largest
        measured harm of its parameter."""
        harm: dict[tuple[str, Any], float] = {}
        for name, values in self._values.items():
            by_value = measured.get(name, {})
            worst = max((float(v) for v in by_value.values()), default=0.0)
            for value in values:
                harm[name, value] = max(0.0, float(by_value.get(harm_key(value), worst)))
        return harm

    # ---- costs ----------------------------------------------------------------------------
    def _weights(self) -> list[float]:
        n = self.ctx.num_layers
        if not self.importance or len(self.importance) != n:
            return [1.0] * n
        values = [max(0.0, float(v)) for v in self.importance]
        mean = sum(values) / n
        return [v / mean if mean > 0 else 1.0 for v in values]

    def choices(self) -> dict[str, tuple[Any, ...]]:
        """Every parameter of the space with its values, in the order they are suggested."""
        return dict(self._values)

    def plan_of(self, params: dict[str, Any]) -> tuple[Plan, dict[str, Any]]:
        """The plan of a full assignment and the parameters :meth:`Space.suggest` read from it."""
        from optuna.trial import FixedTrial

        trial = FixedTrial(params)
        plan = self.ctx.space.suggest(trial, self.ctx.num_layers)
        return plan, dict(trial.params)

    def cost(self, params: dict[str, Any]) -> float:
        """Exact FLOPs per sample (the budget's convention) of a full assignment's plan: its
        :meth:`~searchskip.flops.Budget.binding_cost`, so that fitting it to the limit fits every
        image size of a workload whose samples differ."""
        from searchskip.search.objective import plan_cost

        plan, _ = self.plan_of(params)
        key = plan.key()
        if key not in self._costs:
            report, _, _ = plan_cost(self.ctx, plan)
            # the mean's cost, or more where an image size of the workload is tighter than the mean
            self._costs[key] = self.ctx.budget.binding_cost(report, self.ctx.baseline)
        return self._costs[key]

    def fits(self, cost: float) -> bool:
        return cost <= self.limit * (1 + 1e-9)

    # ---- the cheapest plan --------------------------------------------------------------------
    def cheapest(self) -> dict[str, Any]:
        """The cheapest assignment found: each parameter at its estimated cheapest value, then
        coordinate descent on exact costs (costs of token ops and scopes interact)."""
        params = {name: min(values, key=lambda v: (self._delta[name, v], self._harm[name, v]))
                  for name, values in self._values.items()}
        cost = self.cost(params)
        while True:
            move = self._exact_move(params, cost, cut=True)
            if move is None:
                return params
            params, cost = move

    def _cheapest_params(self) -> dict[str, Any]:
        if getattr(self, "_cheapest_cache", None) is None:
            self._cheapest_cache = self.cheapest()
        return dict(self._cheapest_cache)

    def check_feasible(self, job_file: str | None = None) -> None:
        """``ConfigError`` (exit 2, naming ``job_file`` and ``search.budget``) when even the cheapest
        plan of the space misses the budget; the message gives that plan and its FLOPs."""
        from searchskip.errors import Problem

        params = self._cheapest_params()
        cost = self.cost(params)
        if self.fits(cost):
            return
        plan, _ = self.plan_of(params)
        ctx = self.ctx
        total = ctx.budget.cost(ctx.baseline)
        raise ConfigError([Problem(job_file, "search.budget", (
            f"no plan of the space {ctx.space.file or ''} fits the budget ({ctx.budget.describe()} = "
            f"{self.limit / 1e9:.4g} GFLOPs per sample): the space's cheapest plan costs {cost / 1e9:.4g} GFLOPs per "
            f"sample ({cost / total:.4f} x the unplanned model: {'; '.join(plan.describe()) or 'the unplanned model'}). "
            "Raise the budget to at least that, or widen the space (more layers or cheaper ops)"))])

    # ---- the repair -----------------------------------------------------------------------------
    def fit(self, proposal: dict[str, Any]) -> FitResult:
        """``proposal`` (a value for every parameter; missing ones take their first value) mapped
        onto the budget: cut while over it, then fill while a change still fits.

        Moves are ranked on the additive estimate and the plan's cost is counted exactly where
        the repair settles; where the estimate misleads (parameters whose costs interact), the
        next move is chosen on exact costs."""
        params = {name: proposal.get(name, values[0]) for name, values in self._values.items()}
        start = dict(params)
        cost = self.cost(params)
        estimate = cost
        # Cut. Where costs interact the estimate can mislead and exact moves undo estimated ones; the
        # cut is bounded (MAX_CUT_STEPS moves), and a proposal that needs more takes the space's
        # cheapest plan (found once, known to fit), so a fit always ends, within the budget.
        for _ in range(MAX_CUT_STEPS):
            if self.fits(cost):
                break
            move = self._estimated_move(params, estimate, cut=True)
            if move is not None:
                name, value, delta = move
                params[name] = value
                estimate += delta
                if self.fits(estimate) or estimate < cost - 0.5 * (cost - self.limit):
                    fresh = self.cost(params)
                    if fresh >= cost:  # the estimate misled: decide on exact costs
                        exact = self._exact_move(params, fresh, cut=True)
                        if exact is None:
                            break
                        params, fresh = exact
                    cost = estimate = fresh
                continue
            exact = self._exact_move(params, cost, cut=True)
            if exact is None:
                break
            params, cost = exact
            estimate = cost
        if not self.fits(cost):
            params = self._cheapest_params()
            cost = self.cost(params)
        if self.fits(cost):
            params, cost = self._fill(params, cost)
        plan, used = self.plan_of(params)
        changes = sum(1 for name in params if params[name] != start[name])
        return FitResult(params=used, plan=plan, cost=cost, changes=changes)

    def _fill(self, params: dict[str, Any], cost: float) -> tuple[dict[str, Any], float]:
        """Give compute back (most harm undone per FLOP added) while the estimate fits; then undo
        the last moves until the exact cost fits."""
        moves: list[tuple[str, Any]] = []
        estimate = cost
        while True:
            move = self._estimated_move(params, estimate, cut=False)
            if move is None:
                break
            name, value, delta = move
            moves.append((name, params[name]))
            params = {**params, name: value}
            estimate += delta
        if not moves:
            return params, cost
        fresh = self.cost(params)
        while not self.fits(fresh) and moves:
            name, value = moves.pop()
            params = {**params, name: value}
            fresh = self.cost(params)
        return params, fresh

    def _estimated_move(self, params: dict[str, Any], cost: float, *, cut: bool) -> tuple[str, Any, float] | None:
        """``(name, value, estimated cost change)`` of the best single change, or ``None``."""
        best, best_score = None, None
        for name, values in self._values.items():
            now = params[name]
            for value in values:
                if value == now:
                    continue
                delta = self._delta[name, value] - self._delta[name, now]
                harm = self._harm[name, value] - self._harm[name, now]
                if cut:
                    if delta >= 0:
                        continue
                    score = harm / -delta  # least harm per FLOP saved
                else:
                    if delta <= 0 or harm >= 0 or not self.fits(cost + delta):
                        continue
                    score = harm / delta  # most harm undone per FLOP added
                if best_score is None or score < best_score:
                    best, best_score = (name, value, delta), score
        return best

    def _exact_move(self, params: dict[str, Any], cost: float, *, cut: bool) -> tuple[dict[str, Any], float] | None:
        """The best single change on exact costs: for a cut, the one saving the most FLOPs per
        harm added (``None`` when no change lowers the cost)."""
        best, best_score = None, None
        for name, values in self._values.items():
            for value in values:
                if value == params[name]:
                    continue
                candidate = {**params, name: value}
                try:
                    fresh = self.cost(candidate)
                except ConfigError:
                    continue
                saved = cost - fresh
                if saved <= 0:
                    continue
                harm = self._harm[name, value] - self._harm[name, params[name]]
                score = (harm / saved, -saved)
                if best_score is None or score < best_score:
                    best, best_score = (candidate, fresh), score
        return best
