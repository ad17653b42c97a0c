"""What a search's trial target counts: **model evaluations**, the unit users pay for.

A trial *runs the model* when it scores its plan, in full (COMPLETE) or until the pruner
stops it (PRUNED, not over budget). The plans the greedy seed scored count too
(:mod:`searchskip.search.greedy_seed`; its plan's trial, ``from_greedy``, is not counted twice).
Two kinds of trial cost no model run and do not count toward ``search.trials``:

* an **over-budget** proposal (PRUNED with ``infeasible: true``), rejected after a FLOP count
  (rare since proposals are fitted to the budget, :mod:`searchskip.search.budget_fit`; ``grid``
  and ``fit_budget: false`` searches still make them);
* a **duplicate** (COMPLETE with ``dedup_of``): its plan was already scored and its values reused.

So ``trials: 100`` means 100 plans scored on the model, whatever the sampler proposed. A search
whose sampler keeps proposing plans that run no model (a small space exhausted at this budget)
stops after :data:`STALL_LIMIT` such proposals in a row, and says so, instead of spinning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["runs_model", "trial_counts", "describe_counts", "EvaluationTarget", "STALL_LIMIT"]

STALL_LIMIT = 200
"""Proposals in a row that ran no model (duplicates, over budget) after which a run stops."""


def runs_model(trial: Any) -> bool:
    """Whether a finished trial scored its plan on the model (see the module docstring)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:  # a duplicate, or the greedy seed's plan (counted as the greedy's)
        return "dedup_of" not in trial.user_attrs and not trial.user_attrs.get("from_greedy")
    if trial.state == TrialState.PRUNED:
        return not trial.user_attrs.get("infeasible")
    return False


def trial_counts(study: Any) -> dict[str, int]:
    """``complete`` (scored in full; ``dedup`` of them reused a twin's values), ``pruned`` (by
    the pruner), ``infeasible``, ``failed``, ``running``, ``waiting``, ``greedy`` (plans the greedy
    seed scored, :mod:`searchskip.search.greedy_seed`), and ``counted``: the model evaluations,
    which ``search.trials`` counts (the greedy seed's included)."""
    from optuna.trial import TrialState

    from searchskip.search.greedy_seed import greedy_evaluations

    out = dict.fromkeys(("complete", "dedup", "pruned", "infeasible", "failed", "running", "waiting", "counted"), 0)
    out["greedy"] = greedy_evaluations(study.user_attrs)  # the greedy seed's, outside the trials
    out["counted"] = out["greedy"]
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
            out["dedup"] += "dedup_of" in t.user_attrs
        elif t.state == TrialState.PRUNED:
            out["infeasible" if t.user_attrs.get("infeasible") else "pruned"] += 1
        elif t.state == TrialState.FAIL:
            out["failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
        out["counted"] += runs_model(t)
    return out


def describe_counts(counts: dict[str, int]) -> str:
    """One line for people: ``30 model evaluations (11 scored in full, 19 pruned); 1 duplicate and 0
    over-budget proposals ran no model; 0 failed``."""
    full = counts["complete"] - counts["dedup"]
    dups = counts["dedup"]
    greedy = f", {counts['greedy']} by the greedy seed" if counts.get("greedy") else ""
    return (f"{counts['counted']} model evaluations ({full} scored in full, {counts['pruned']} pruned{greedy}); "
            f"{dups} duplicate{'s' if dups != 1 else ''} and {counts['infeasible']} over-budget proposals ran no "
            f"model; {counts['failed']} failed")


class EvaluationTarget:
    """An optuna callback that stops the study once it holds ``target`` model evaluations (each
    worker stops after its running trial, as optuna's ``MaxTrialsCallback`` does), or after
    :data:`STALL_LIMIT` trials in a row of this process ran no model (:attr:`stalled`)."""

    def __init__(self, target: int | None, stall_limit: int = STALL_LIMIT):
        self.target = target
        self.stall_limit = stall_limit
        self.in_a_row = 0
        self.stalled = False

    def observe(self, trial: Any) -> None:
        """Count one finished trial of this process toward the stall rule."""
        self.in_a_row = 0 if runs_model(trial) else self.in_a_row + 1
        self.stalled = self.stalled or self.in_a_row >= self.stall_limit

    def __call__(self, study: Any, trial: Any) -> None:
        self.observe(trial)
        if self.stalled or (self.target is not None and trial_counts(study)["counted"] >= self.target):
            study.stop()

    def stall_message(self) -> str:
        return (f"stopped: the last {self.in_a_row} proposals ran no model (plans already scored, or over the "
                "budget): the space seems exhausted at this budget; widen the space or change the budget")
