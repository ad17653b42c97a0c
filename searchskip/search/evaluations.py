"""Counting a study's trials: :func:`trial_counts`."""

from __future__ import annotations

from typing import Any

__all__ = ["trial_counts"]


def trial_counts(study: Any) -> dict[str, int]:
    """``complete``, ``pruned`` (by the pruner), ``infeasible``, ``failed``, ``running``, ``waiting``, ``counted``."""
    from optuna.trial import TrialState

    out = dict.fromkeys(("complete", "pruned", "infeasible", "failed", "running", "waiting"), 0)
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif t.state == TrialState.PRUNED:
            out["infeasible" if t.user_attrs.get("infeasible") else "pruned"] += 1
        elif t.state == TrialState.FAIL:
            out["failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    out["counted"] = out["complete"] + out["pruned"] + out["infeasible"]
    return out
