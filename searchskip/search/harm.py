"""The measured harm of every single change a space offers: the budget fit's prior, read off the model.

The budget fit (:mod:`searchskip.search.budget_fit`) ranks changes by *harm per FLOP*. Without a
measurement its harm is a prior: the share of a layer's FLOPs a change removes. That prior cannot
see that sparing the image tokens of a layer (scope ``visual``) moves the answer far less than
skipping the layer for every token, though both remove similar FLOPs. So a worker measures, once
per study, the harm of each value of each parameter **alone**: the plan of the space's reference
assignment (every parameter at its first value) with that one parameter changed, scored by how far
it moves the first answer token's distribution from the unplanned model's
(:func:`searchskip.eval.shift.first_token_kl`, on the study's calibration questions,
:func:`searchskip.search.seeds.calibration_questions`). A
value whose plan is the reference plan has harm 0. The result is stored in the study
(:data:`HARM_ATTR`), so every worker, the Ray driver and a resumed run read the same numbers.

Harms are additive estimates, as the fit's FLOP deltas are: two changes together may harm more or
less than their sum. The sampler does the learning; the measured harm only decides which changes a
proposal gives up first when it is fitted onto the budget.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from searchskip.errors import ConfigError

__all__ = ["HARM_ATTR", "harm_key", "single_change_plans", "measure_harm"]

HARM_ATTR = "harm"
"""Study user attr holding ``{parameter: {harm_key(value): harm}}``."""

def harm_key(value: Any) -> str:
    """A parameter value as a key of the stored harm (JSON text: ``"skip_block@visual"``, ``0.25``)."""
    return json.dumps(value)


def single_change_plans(space: Any, num_layers: int) -> dict[tuple[str, str], Any]:
    """``{(parameter, harm_key(value)): plan}`` of every value of every parameter of ``space`` changed
    alone from the reference assignment (each parameter at its first value); values that give the
    reference plan, or no valid plan there, are left out."""
    from optuna.trial import FixedTrial

    grid = space.grid(num_layers)
    reference = {name: values[0] for name, values in grid.items()}
    base = space.suggest(FixedTrial(reference), num_layers)
    out: dict[tuple[str, str], Any] = {}
    for name, values in grid.items():
        for value in values[1:]:
            try:
                plan = space.suggest(FixedTrial({**reference, name: value}), num_layers)
            except (ValueError, ConfigError):  # a value that is invalid in the reference context
                continue
            if plan != base:
                out[name, harm_key(value)] = plan
    return out


def measure_harm(space: Any, num_layers: int, model: Any, batches: Sequence[dict]) -> dict[str, dict[str, float]]:
    """The harm of every single change of ``space`` (see the module docstring): ``{parameter:
    {harm_key(value): first-token KL}}``, 0 for a value that leaves the reference plan. Each distinct
    plan is scored once; ``batches`` also calibrate Wanda pruning."""
    from searchskip.eval.shift import first_token_kl

    plans = single_change_plans(space, num_layers)
    distinct = list({plan.key(): plan for plan in plans.values()}.values())
    kl = dict(zip((p.key() for p in distinct), first_token_kl(model, batches, distinct)))
    harm: dict[str, dict[str, float]] = {name: {harm_key(v): 0.0 for v in values}
                                         for name, values in space.grid(num_layers).items()}
    for (name, key), plan in plans.items():
        harm[name][key] = kl[plan.key()]
    return harm
