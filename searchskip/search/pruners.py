"""The pruners a job may name in ``search.pruner``: :func:`make_pruner`.

Steps are questions scored (the objective reports the running accuracy every
``search.report_every`` batches); with several objectives optuna cannot prune, so every pruner
is then ``NopPruner``.

* ``median``: optuna's MedianPruner (below the median of earlier trials at the same step).
* ``halving``: optuna's SuccessiveHalvingPruner on a growing subset: the first rung is the first
  report's questions, then x3, while the trial is in the top third at that size.
* ``parent``: :class:`ParentPruner`, the staged selection of ``sampler: evo``: a child goes on
  only while it keeps up with the best plan so far on the same questions (within noise).
* ``auto`` (the default): ``parent`` with ``sampler: evo``, ``median`` otherwise.
* ``none``.
"""

from __future__ import annotations

from typing import Any

from optuna.pruners import BasePruner

__all__ = ["make_pruner", "ParentPruner", "HALVING_FACTOR", "resolved_pruner"]

HALVING_FACTOR = 3
"""``pruner: halving``: a trial goes on at each rung (questions ``r, 3r, 9r, ...``) while in the top third."""


def resolved_pruner(search: Any) -> str:
    """The pruner a job's ``search`` section means (``auto`` resolved)."""
    if search.pruner == "auto":
        from searchskip.search.samplers import resolved_sampler

        return "parent" if resolved_sampler(search) == "evo" else "median"
    return search.pruner


def make_pruner(search: Any, batch_size: int = 1) -> Any:
    """The job's pruner (``NopPruner`` with several objectives); ``batch_size``: the job's eval
    batch size (``halving`` puts its first rung at the first report)."""
    import optuna

    name = resolved_pruner(search)
    if len(search.objectives) != 1 or name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "halving":
        first = batch_size * search.report_every
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=HALVING_FACTOR)
    if name == "parent":
        from searchskip.search.objective import MAXIMIZED

        return ParentPruner(maximize=search.objectives[0] in MAXIMIZED)
    raise ValueError(f"search.pruner: unknown pruner {name!r}")


class ParentPruner(BasePruner):
    """Stop a trial at a reported step where its running value falls clearly below the parent's
    (the best complete trial, :func:`~searchskip.search.samplers.evo.parent_trial`) at the same
    step, i.e. on the same questions. "Clearly": by more than ``z`` standard errors of the
    parent's running accuracy on that many questions (``sqrt(p (1 - p) / n)``, at least one
    question's worth), so a child that is as good as the parent survives the noise of a small
    prefix, and one that is worse is stopped early. Trials before any parent with intermediate
    values go on."""

    def __init__(self, maximize: bool = True, z: float = 2.0):
        self.maximize = maximize
        self.z = z

    def prune(self, study: Any, trial: Any) -> bool:
        import math

        from searchskip.search.samplers.evo import parent_trial

        step = trial.last_step
        if step is None:
            return False
        parent = parent_trial(study, self.maximize)
        if parent is None or parent.number == trial.number or step not in parent.intermediate_values:
            return False
        mine, theirs = trial.intermediate_values[step], parent.intermediate_values[step]
        p = min(max(theirs, 0.0), 1.0)
        margin = max(self.z * math.sqrt(p * (1 - p) / max(step, 1)), 1.0 / max(step, 1))
        return mine < theirs - margin if self.maximize else mine > theirs + margin
