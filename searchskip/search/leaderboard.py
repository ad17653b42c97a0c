"""Rank a study's trials: the leaderboard, the Pareto front, and the comparison with seeded baselines.

Shared by ``searchskip search`` (its live view and summary) and ``searchskip ls``. Leaderboard:
COMPLETE (feasible, scored) trials by the study's first objective (accuracy unless the job names
``agreement`` or ``kl``; ties: fewer FLOPs), one per plan. Pareto front: the scored trials no other
scored trial beats on both that objective and FLOP ratio (lower).
"""

from __future__ import annotations

from typing import Any

OBJECTIVES_ATTR = "objectives"
"""Study user attr: the job's ``search.objectives`` (stored at setup; a study without it ranks by accuracy)."""


def primary(study: Any) -> tuple[str, bool]:
    """``(trial user attr, maximized)`` of the study's first objective."""
    from searchskip.search.objective import MAXIMIZED, OBJECTIVE_ATTRS

    name = (study.user_attrs.get(OBJECTIVES_ATTR) or ["accuracy"])[0]
    return OBJECTIVE_ATTRS[name], name in MAXIMIZED


SHARES = ("accuracy", "agreement")
"""Objective attrs that are shares of questions (shown as percentages, differences in points)."""


def format_value(attr: str, value: float) -> str:
    """``accuracy``/``agreement`` as a percentage, ``kl`` with 4 decimals."""
    return f"{100 * value:.2f}%" if attr in SHARES else f"{value:.4f}"


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

    attr, _ = primary(study)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "accuracy" in t.user_attrs and attr in t.user_attrs]


def _goodness(attr: str, maximize: bool) -> Any:
    """Higher is better: the trial's first-objective value, negated when it is minimized."""
    return lambda t: t.user_attrs[attr] if maximize else -t.user_attrs[attr]


def leaderboard(study: Any) -> list[Any]:
    """Scored trials by the first objective, one per plan (repeats, ``dedup_of``, are left out)."""
    good = _goodness(*primary(study))
    return sorted([t for t in scored(study) if "dedup_of" not in t.user_attrs],
                  key=lambda t: (-good(t), t.user_attrs.get("flops_ratio", 0), t.number))


def pareto(study: Any) -> list[Any]:
    """Scored trials not dominated in (first objective better, flops_ratio down); one per distinct plan."""
    good = _goodness(*primary(study))
    trials, seen, front = leaderboard(study), set(), []
    for t in trials:
        a, r = good(t), t.user_attrs.get("flops_ratio", 0)
        key = t.user_attrs.get("plan_key")
        if key in seen:
            continue
        dominated = any(good(o) >= a and o.user_attrs.get("flops_ratio", 0) <= r
                        and (good(o) > a or o.user_attrs.get("flops_ratio", 0) < r)
                        for o in trials)
        if not dominated:
            front.append(t)
            seen.add(key)
    return sorted(front, key=lambda t: t.user_attrs.get("flops_ratio", 0))


def leaderboard_table(study: Any, top: int = 10, rows: list | None = None, title: str | None = None):
    from rich.table import Table

    attr, _ = primary(study)
    extra = [] if attr == "accuracy" else [attr]
    table = Table(title=title or f"{study.study_name}: best feasible plans")
    for col, just in (("trial", "right"), *((a, "right") for a in extra), ("accuracy", "right"),
                      ("flops ratio", "right"), ("plan", "left"), ("note", "left")):
        table.add_column(col, justify=just)
    for t in (rows if rows is not None else leaderboard(study)[:top]):
        note = []
        if "seed" in t.user_attrs:
            note.append(f"seed {t.user_attrs['seed']}")
        if "dedup_of" in t.user_attrs:
            note.append(f"= #{t.user_attrs['dedup_of']}")
        table.add_row(str(t.number), *(format_value(a, t.user_attrs[a]) for a in extra),
                      f"{100 * t.user_attrs['accuracy']:.2f}%",
                      f"{t.user_attrs.get('flops_ratio', float('nan')):.3f}", _plan_summary(t), ", ".join(note))
    return table


BASELINES = (("paper", "the best paper interval plan"), ("block_influence", "the best Block Influence plan"),
             ("layer_contribution", "the best Layer Contribution plan"),
             ("greedy", "greedy sublayer removal's plan"), ("unplanned", "the unplanned model"))
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
    attr, _ = primary(study)

    def entry(t: Any) -> dict:
        return {"trial": t.number, "accuracy": t.user_attrs["accuracy"], "flops_ratio": t.user_attrs.get("flops_ratio"),
                "seed": t.user_attrs.get("seed"), "value": t.user_attrs[attr]}

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
    attr, maximize = primary(study)
    shown = "" if attr == "accuracy" else f" ({attr} {format_value(attr, best['value'])})"
    lines = [f"best plan within the budget: trial {best['trial']}, {100 * best['accuracy']:.2f}%{shown} at "
             f"{best['flops_ratio']:.3f}x the unplanned FLOPs"]
    for family, description in BASELINES[:-1]:
        base = found[family]
        if base is None:
            # greedy is seeded only with search.seed_greedy, Layer Contribution only where the space offers scope visual
            if family != "greedy" and (family != "layer_contribution" or family in study.user_attrs):
                lines.append(f"{description}: none fits the budget (or none was seeded)")
            continue
        theirs = f"trial {base['trial']}, {format_value(attr, base['value'])}"
        gain = (best["value"] - base["value"]) * (1 if maximize else -1)
        if base["trial"] == best["trial"]:
            lines.append(f"{description} (trial {base['trial']}) IS the best plan found: the search did not beat it")
        elif gain > 0:
            by = f"{100 * gain:.2f} points" if attr in SHARES else f"{gain:.4f} {attr}"
            lines.append(f"beats {description} ({theirs}) by {by}")
        else:
            lines.append(f"does NOT beat {description} ({theirs}): ties it")
    return lines
