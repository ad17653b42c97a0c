"""``search.seed_greedy``: greedy sublayer removal as a seed of the study, not only a rival.

The FinerCut-style greedy removal (:func:`~searchskip.search.baselines.greedy_sublayer_removal`,
the same path the benchmark compares with) runs once per study, during seeding, on the worker's
own evaluator: from the unplanned model it removes, one at a time, the attention or FFN sublayer
whose removal keeps the validation accuracy highest, until the plan fits the budget. That plan
becomes a COMPLETE trial of the study (user attrs ``seed: greedy``, ``from_greedy: true``), with
the score, per-question-type accuracies and running accuracies the greedy measured, so the search
starts from it (``evo`` takes the best complete trial as its parent) and ends no worse on
validation than greedy removal, whatever ``search.trials`` is.

Why its other plans are not trials: they are over the budget by construction, and no over-budget
plan may reach the study's trials (the leaderboard, the samplers and the pruners would take them
for candidates). Each plan the greedy scores is remembered in one study user attr
``greedy:<n>`` (its key, accuracy, per-type accuracies, questions, latency, running accuracies),
written as soon as it is scored, so:

* a killed run resumes the greedy where it stopped: a plan already scored is never scored again;
* those model evaluations **count toward ``search.trials``** (:func:`greedy_evaluations`, read
  by :func:`~searchskip.search.evaluations.trial_counts`); the greedy's own trial does not count
  again. Greedy removal costs about ``2L - k`` evaluations at its ``k``-th step for ``L`` layers
  (100 to reach half the language model's FLOPs of the 8-layer demo model): give the search trials
  beyond that, or it stops right after the seeding.

Only the space's layers are considered, and only candidates the space can express
(:meth:`~searchskip.search.space.Space.params_for`). The greedy runs under the study's lock
while seeding, like the other seeds, so several workers run it once (the others wait).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from searchskip.plan import Plan
from searchskip.search.baselines import greedy_sublayer_removal

__all__ = ["greedy_seed", "greedy_evaluations", "FROM_GREEDY", "LABEL", "SCORE_PREFIX"]

SCORE_PREFIX = "greedy:"
"""Study user attrs ``greedy:<n>``: the ``n``-th plan the greedy scored."""
FROM_GREEDY = "from_greedy"
"""Trial user attr of the greedy's plan at the budget: scored by the greedy (counted there), not by the trial."""
LABEL = "greedy"


def greedy_evaluations(attrs: dict[str, Any]) -> int:
    """Plans the greedy seed scored on the model, from a study's user attrs."""
    return sum(1 for key in attrs if key.startswith(SCORE_PREFIX))


def greedy_seed(study: Any, ctx: Any, evaluator: Any, say: Callable[[str], None] | None = None) -> Plan | None:
    """Run (or resume) greedy removal on ``evaluator`` (``evaluator(plan, report) -> PlanScore``) and
    add its plan at the budget to ``study`` as a COMPLETE trial (once); return that plan, or
    ``None`` when no plan the space can express fits the budget along the greedy path."""
    from searchskip.search.objective import MAXIMIZED, OBJECTIVE_ATTRS, plan_attrs, plan_cost, score_attrs

    records = {r["plan_key"]: r for key, r in study.user_attrs.items() if key.startswith(SCORE_PREFIX)}
    attr, sign = OBJECTIVE_ATTRS[ctx.objectives[0]], 1.0 if ctx.objectives[0] in MAXIMIZED else -1.0

    def score(plan: Plan) -> float:
        if ctx.space.params_for(plan, ctx.num_layers) is None:
            return -math.inf  # the space cannot express it: never chosen, never run
        key = plan.key()
        if key not in records:
            running: dict[str, float] = {}
            result = evaluator(plan, lambda accuracy, step: running.__setitem__(str(step), float(accuracy)))
            records[key] = {"plan_key": key, **score_attrs(result), "intermediate": running}
            study.set_user_attr(f"{SCORE_PREFIX}{len(records)}", records[key])
        return sign * records[key][attr]  # greedy keeps the highest: a minimized objective is negated

    def step(s: Any) -> None:
        if say is not None:
            layer, part = s.removed
            say(f"greedy seed: removed layer {layer} {part} -> {attr} {sign * s.score:.4g} at {s.flops_ratio:.3f}x FLOPs "
                f"({len(records)} model evaluations)")

    steps = greedy_sublayer_removal(score, ctx.arch, ctx.workload, ctx.budget,
                                    layers=ctx.space.searchable_layers(ctx.num_layers), on_step=step)
    if not steps or steps[-1].score == -math.inf:
        return None
    plan = steps[-1].plan
    cost = plan_cost(ctx, plan)
    if not cost[2]:
        return None
    if not any(t.user_attrs.get(FROM_GREEDY) for t in study.get_trials(deepcopy=False)):
        _add_trial(study, ctx, plan, plan_attrs(plan, *cost), records[plan.key()])
    return plan


def _add_trial(study: Any, ctx: Any, plan: Plan, costs: dict[str, Any], record: dict[str, Any]) -> None:
    """The greedy's plan as a COMPLETE trial with the attrs (``costs``: :func:`plan_attrs`) and values a
    scored trial has."""
    from optuna.trial import create_trial

    from searchskip.search.objective import SCORE_ATTRS, objective_values

    params = ctx.space.params_for(plan, ctx.num_layers)
    distributions = ctx.space.distributions(ctx.num_layers)
    attrs = {"seed": LABEL, FROM_GREEDY: True, **costs, "seconds": 0.0,
             **{k: record[k] for k in SCORE_ATTRS if record.get(k) is not None}}
    study.add_trial(create_trial(params=params, distributions={k: distributions[k] for k in params},
                                 values=objective_values(ctx.objectives, attrs), user_attrs=attrs,
                                 intermediate_values={int(k): v for k, v in record["intermediate"].items()}))
