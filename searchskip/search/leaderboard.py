"""Rank a study's trials: the leaderboard, the Pareto front, and the comparison with seeded baselines.

Shared by ``searchskip search`` (its live view and summary) and ``searchskip ls``. Leaderboard:
COMPLETE (feasible, scored) trials by accuracy (ties: fewer FLOPs), one per plan. Pareto front:
the scored trials no other scored trial beats on both accuracy (higher) and FLOP ratio (lower).
"""

from __future__ import annotations

from typing import Any


def _plan_dict(trial: Any) -> dict | None:
    from searchskip.plan import Plan

    text = trial.user_attrs.get("plan")
    return Plan.from_yaml_text(text).to_dict() if text else None


def _plan_summary(trial: Any) -> str:
    from searchskip.plan import Plan

    text = trial.user_attrs.get("plan")
    if not text:
        return "?"
    lines = Plan.from_yaml_text(text).describe()
    return "; ".join(lines) if lines else "unplanned"


def scored(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "accuracy" in t.user_attrs]


def leaderboard(study: Any) -> list[Any]:
    """Scored trials by accuracy, one per plan (repeats, ``dedup_of``, are left out)."""
    return sorted([t for t in scored(study) if "dedup_of" not in t.user_attrs],
                  key=lambda t: (-t.user_attrs["accuracy"], t.user_attrs.get("flops_ratio", 0), t.number))


def pareto(study: Any) -> list[Any]:
    """Scored trials not dominated in (accuracy up, flops_ratio down); one per distinct plan."""
    trials, seen, front = leaderboard(study), set(), []
    for t in trials:
        a, r = t.user_attrs["accuracy"], t.user_attrs.get("flops_ratio", 0)
        key = t.user_attrs.get("plan_key")
        if key in seen:
            continue
        dominated = any(o.user_attrs["accuracy"] >= a and o.user_attrs.get("flops_ratio", 0) <= r
                        and (o.user_attrs["accuracy"] > a or o.user_attrs.get("flops_ratio", 0) < r)
                        for o in trials)
        if not dominated:
            front.append(t)
            seen.add(key)
    return sorted(front, key=lambda t: t.user_attrs.get("flops_ratio", 0))


def leaderboard_table(study: Any, top: int = 10, rows: list | None = None, title: str | None = None):
    from rich.table import Table

    table = Table(title=title or f"{study.study_name}: best feasible plans")
    for col, just in (("trial", "right"), ("accuracy", "right"), ("flops ratio", "right"), ("plan", "left"),
                      ("note", "left")):
        table.add_column(col, justify=just)
    for t in (rows if rows is not None else leaderboard(study)[:top]):
        note = []
        if "seed" in t.user_attrs:
            note.append(f"seed {t.user_attrs['seed']}")
        if "dedup_of" in t.user_attrs:
            note.append(f"= #{t.user_attrs['dedup_of']}")
        table.add_row(str(t.number), f"{100 * t.user_attrs['accuracy']:.2f}%",
                      f"{t.user_attrs.get('flops_ratio', float('nan')):.3f}", _plan_summary(t), ", ".join(note))
    return table


BASELINES = (("paper", "the best paper interval plan"), ("block_influence", "the best Block Influence plan"),
             ("unplanned", "the unplanned model"))
"""Seed families the search is compared with: ``seed`` user-attr prefix -> description."""


def seed_family(label: Any) -> str | None:
    """The :data:`BASELINES` family of a trial's ``seed`` label (``paper:skip_block/...`` ->
    ``paper``), ``None`` for a trial the sampler chose or an unknown label."""
    if label is None:
        return None
    family = str(label).split(":")[0]
    return family if any(family == name for name, _ in BASELINES) else None


def baselines(study: Any) -> dict[str, dict | None]:
    """The best scored trial overall (``search``) and of each seeded baseline family, all within the budget."""
    board = leaderboard(study)

    def entry(t: Any) -> dict:
        return {"trial": t.number, "accuracy": t.user_attrs["accuracy"], "flops_ratio": t.user_attrs.get("flops_ratio"),
                "seed": t.user_attrs.get("seed")}

    out: dict[str, dict | None] = {"search": entry(board[0]) if board else None}
    for family, _ in BASELINES:
        seeded = [t for t in board if seed_family(t.user_attrs.get("seed")) == family]
        out[family] = entry(seeded[0]) if seeded else None
    return out


def verdict(study: Any) -> list[str]:
    """One line per baseline family: does the search's best plan beat it at the same budget?"""
    found = baselines(study)
    best = found["search"]
    if best is None:
        return ["no plan within the budget has been scored yet"]
    lines = [f"best plan within the budget: trial {best['trial']}, {100 * best['accuracy']:.2f}% at "
             f"{best['flops_ratio']:.3f}x the unplanned FLOPs"]
    for family, description in BASELINES[:2]:
        base = found[family]
        if base is None:
            lines.append(f"{description}: none fits the budget (or none was seeded)")
        elif base["trial"] == best["trial"]:
            lines.append(f"{description} (trial {base['trial']}) IS the best plan found: the search did not beat it")
        elif best["accuracy"] > base["accuracy"]:
            lines.append(f"beats {description} (trial {base['trial']}, {100 * base['accuracy']:.2f}%) "
                         f"by {100 * (best['accuracy'] - base['accuracy']):.2f} points")
        else:
            lines.append(f"does NOT beat {description} (trial {base['trial']}, {100 * base['accuracy']:.2f}%): ties it")
    return lines
