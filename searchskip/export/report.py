"""The export's report: ``report.md`` and ``pareto.png`` for the chosen compression plan.

What the report shows (each section is left out when its data is missing, e.g. when a
hand-written plan is exported without a study)::

    # title                       source (study folder or plan file), the plan in short lines
    ## Summary                    accuracy, share of the unplanned model's accuracy, FLOPs ratio
    ## Accuracy vs FLOPs          pareto.png + the top of the Pareto front (trial, accuracy, ratio, plan)
    ## Layer map                  one row per original decoder layer: kept / skipped / parallel / removed, pruned %
    ## FLOPs breakdown            component, GFLOPs per sample, share of the total
    ## Accuracy per question type unplanned vs plan, difference in points
    ## Notes

``pareto.png`` plots the validation accuracy against the FLOP ratio of every feasible scored
trial of the study (:func:`trial_points`), draws the Pareto front as a step line, marks the
seeded baselines (the paper's interval plans, ``paper:...``; Block Influence plans,
``block_influence:...``; the unplanned model), highlights the chosen trial and draws the
budget as a vertical dashed line. matplotlib is imported lazily and draws on the Agg
(file-only) canvas, so no display is needed and no pyplot figure is left open.

Formatting: accuracies are percentages with 2 decimals, GFLOPs have 3 significant digits,
FLOP ratios 3 decimals.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from searchskip.flops.report import COMPONENT_TITLES
from searchskip.plan import (
    PARALLEL_ATTN_FFN,
    PARALLEL_BLOCKS,
    SCOPE_ALL,
    SKIP_ATTN,
    SKIP_BLOCK,
    SKIP_FFN,
    Plan,
)

__all__ = ["TrialPoint", "trial_points", "plot_pareto", "layer_map_rows", "render_report", "write_report",
           "REPORT_FILE", "PARETO_FILE", "FRONT_ROWS"]

REPORT_FILE = "report.md"
PARETO_FILE = "pareto.png"
FRONT_ROWS = 10
"""How many trials of the Pareto front the report's table lists (the smallest FLOP ratios first)."""


# --------------------------------------------------------------------------------------
# Trials of a study
# --------------------------------------------------------------------------------------


@dataclass
class TrialPoint:
    """One feasible scored trial of a study, as the plot and the front table show it."""

    number: int
    accuracy: float
    flops_ratio: float
    label: str | None
    """The trial's ``seed`` user attr (``paper:skip_block/interval=2/start=0``,
    ``block_influence:skip_block``, ``unplanned``), ``None`` for a trial the sampler chose."""
    on_front: bool
    """Whether the trial is on the study's Pareto front (:func:`~searchskip.search.leaderboard.pareto`)."""
    summary: str = ""
    """The plan in one line (:meth:`Plan.describe` joined by ``; ``, ``unplanned`` for the empty plan)."""


def trial_points(study: Any) -> list[TrialPoint]:
    """Every plan of :func:`~searchskip.search.leaderboard.leaderboard` (feasible, scored, repeats
    left out), by trial number; ``on_front`` is membership of
    :func:`~searchskip.search.leaderboard.pareto`."""
    from searchskip.search.leaderboard import _plan_summary, leaderboard, pareto

    front = {t.number for t in pareto(study)}
    points = []
    for t in sorted(leaderboard(study), key=lambda t: t.number):
        seed = t.user_attrs.get("seed")
        points.append(TrialPoint(number=t.number, accuracy=float(t.user_attrs["accuracy"]),
                                 flops_ratio=float(t.user_attrs.get("flops_ratio", float("nan"))),
                                 label=str(seed) if seed is not None else None, on_front=t.number in front,
                                 summary=_plan_summary(t)))
    return points


# --------------------------------------------------------------------------------------
# pareto.png
# --------------------------------------------------------------------------------------


def plot_pareto(points: Sequence[TrialPoint], path: str | Path, *, chosen: int | None = None,
                budget_ratio: float | None = None, title: str = "") -> None:
    """Write the accuracy-vs-FLOPs scatter of ``points`` to ``path`` (PNG, 120 dpi).

    Every point is drawn; the Pareto front (``on_front``) as a step line; the paper's interval
    plans (label ``paper:...``), Block Influence plans (``block_influence:...``), Layer
    Contribution plans (``layer_contribution:...``) and the unplanned model with their own markers; trial ``chosen`` highlighted; ``budget_ratio`` as
    a vertical dashed line. The same points give the same file (no timestamp is written).
    The figure is drawn on matplotlib's Agg canvas, without pyplot, so nothing stays open.
    """
    import matplotlib
    import matplotlib.ticker

    if "matplotlib.pyplot" not in sys.modules:  # switching the backend under pyplot would close its figures
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from searchskip.search.leaderboard import seed_family

    fig = Figure(figsize=(7.0, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    pts = sorted(points, key=lambda p: (p.flops_ratio, -p.accuracy, p.number))

    def pct(p: TrialPoint) -> float:
        return 100.0 * p.accuracy

    others = [p for p in pts if seed_family(p.label) is None]
    if others:
        ax.scatter([p.flops_ratio for p in others], [pct(p) for p in others], s=18, color="0.6", alpha=0.8,
                   label="search trials", zorder=2)
    front = [p for p in pts if p.on_front]
    if front:
        ax.step([p.flops_ratio for p in front], [pct(p) for p in front], where="post", color="tab:blue",
                linewidth=1.5, label="Pareto front", zorder=3)
        ax.scatter([p.flops_ratio for p in front], [pct(p) for p in front], s=26, color="tab:blue", zorder=4)
    styles = (("paper", "paper interval plans", "s", "tab:orange"),
              ("block_influence", "Block Influence", "^", "tab:green"),
              ("layer_contribution", "Layer Contribution", "v", "tab:purple"),
              ("unplanned", "unplanned model", "D", "black"))
    for family, name, marker, color in styles:
        group = [p for p in pts if seed_family(p.label) == family]
        if group:
            ax.scatter([p.flops_ratio for p in group], [pct(p) for p in group], s=46, marker=marker, color=color,
                       edgecolors="white", linewidths=0.6, label=name, zorder=5)
    picked = [p for p in pts if chosen is not None and p.number == chosen]
    if picked:
        p = picked[0]
        ax.scatter([p.flops_ratio], [pct(p)], s=220, marker="*", color="tab:red", edgecolors="black",
                   linewidths=0.6, label=f"chosen (trial {p.number})", zorder=6)
    if budget_ratio is not None:
        ax.axvline(budget_ratio, color="tab:red", linestyle="--", linewidth=1.0,
                   label=f"budget ({budget_ratio:.3g}x)", zorder=1)
    ax.set_xlabel("FLOPs (x unplanned)")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}%"))
    ax.grid(True, linestyle=":", linewidth=0.6, alpha=0.7)
    if title:
        ax.set_title(title)
    if not pts:
        ax.text(0.5, 0.5, "no feasible scored trial", transform=ax.transAxes, ha="center", va="center")
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png", metadata={"Software": None})


# --------------------------------------------------------------------------------------
# The layer map
# --------------------------------------------------------------------------------------


def _scoped(state: str, scope: str) -> str:
    return state if scope == SCOPE_ALL else f"{state} ({scope})"


def _pct(fraction: float) -> str:
    return f"{100.0 * fraction:.3g}%"


def layer_map_rows(plan: Plan, num_layers: int, pinned: frozenset[int] = frozenset()) -> list[dict]:
    """One row per original decoder layer ``0 .. num_layers - 1`` of what ``plan`` does to it.

    Row keys: ``layer``; ``attention`` and ``ffn``: ``kept``, ``skipped``, ``parallel`` or
    ``removed`` (a scope other than ``all`` is added in brackets: ``skipped (generated)``);
    ``scope``: the op's token scope (``""`` for a kept or dropped layer); ``pruned``: e.g.
    ``30% attn+ffn`` (the structure added when not unstructured: ``50% attn+ffn 2:4``), ``""``
    when the layer is not pruned or is removed; ``note``: the op, ``dropped``, or for
    ``parallel_blocks`` ``parallel with layer i+1`` (``, averaged``).

    A ``skip_block`` with scope ``all`` is ``removed`` (the export deletes the layer
    physically, like ``drop``); with another scope the layer stays and is ``skipped (scope)``.
    """
    from searchskip.export.model import removed_layers

    dropped = plan.dropped_layers()
    gone = set(removed_layers(plan, num_layers, pinned))
    rows = []
    for i in range(num_layers):
        row = {"layer": i, "attention": "kept", "ffn": "kept", "scope": "", "pruned": "", "note": ""}
        kept_whole = "skipped (kept: the model injects features after it)"  # a pinned layer skipped whole
        if i in dropped:
            state = kept_whole if i in pinned else "removed"
            row.update(attention=state, ffn=state, note="dropped")
            rows.append(row)
            continue
        op = plan.op_for(i)
        scope = op.scope
        partner = plan.op_for(i - 1) if i > 0 else None
        if op.op == SKIP_BLOCK:
            state = (kept_whole if i in pinned else "removed") if scope == SCOPE_ALL else _scoped("skipped", scope)
            row.update(attention=state, ffn=state, scope=scope, note=SKIP_BLOCK)
        elif op.op == SKIP_ATTN:
            row.update(attention=_scoped("skipped", scope), scope=scope, note=SKIP_ATTN)
        elif op.op == SKIP_FFN:
            row.update(ffn=_scoped("skipped", scope), scope=scope, note=SKIP_FFN)
        elif op.op == PARALLEL_ATTN_FFN:
            state = _scoped("parallel", scope)
            row.update(attention=state, ffn=state, scope=scope, note="attention and FFN in parallel")
        elif op.op == PARALLEL_BLOCKS:
            state = _scoped("parallel", scope)
            row.update(attention=state, ffn=state, scope=scope,
                       note=f"parallel with layer {i + 1}" + (", averaged" if op.average else ""))
        elif partner is not None and partner.op == PARALLEL_BLOCKS:
            pscope = partner.scope
            state = _scoped("parallel", pscope)
            row.update(attention=state, ffn=state, scope=pscope,
                       note=f"parallel with layer {i - 1}" + (", averaged" if partner.average else ""))
        if plan.prune is not None and i not in gone:
            fraction = plan.prune.sparsity_for(i)
            if fraction > 0:
                text = f"{_pct(fraction)} {'+'.join(plan.prune.targets)}"
                if plan.prune.structure != "unstructured":
                    text += f" {plan.prune.structure}"
                row["pruned"] = text
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}%"


def _sig3(value: float) -> str:
    """``value`` with 3 significant digits, without an exponent (``1230``, ``12.3``, ``0.0123``)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    digits = 2 - math.floor(math.log10(abs(value)))
    rounded = round(value, digits)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) != math.floor(math.log10(abs(value))):
        digits -= 1  # 999.6 -> 1000: one digit fewer after the point
        rounded = round(value, digits)
    return f"{rounded:.{max(digits, 0)}f}"


def _gflops(flops: float) -> str:
    return _sig3(flops / 1e9)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """The lines of a Markdown table; ``align``: ``l``, ``r`` or ``c`` per column (default all ``l``)."""
    align = align or ["l"] * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def render_report(*, title: str, plan: Plan, num_layers: int, pinned: frozenset[int] = frozenset(), flops: Mapping[str, float] | None,
                  flops_ratio: float | None, accuracy: float | None,
                  llm_flops_ratio: float | None = None,
                  per_question_type: Mapping[str, float] | None,
                  unplanned_per_question_type: Mapping[str, float] | None,
                  unplanned_accuracy: float | None, points: Sequence[TrialPoint] | None, chosen: int | None,
                  source: str, pareto_png: str | None, notes: Iterable[str] = ()) -> str:
    """The Markdown text of ``report.md``.

    ``flops``: FLOPs per sample by component (:meth:`FlopReport.by_component`); ``flops_ratio``:
    the whole model's FLOPs over the unplanned model's; ``llm_flops_ratio``: the same for the
    language model alone (:meth:`searchskip.flops.FlopReport.llm_ratio`; its row is left out when ``None``); ``accuracy`` / ``unplanned_accuracy``: fractions in ``[0, 1]``;
    ``per_question_type`` / ``unplanned_per_question_type``: question type -> accuracy fraction;
    ``points``: the study's trials (:func:`trial_points`), ``chosen`` the exported trial's
    number; ``source``: the study folder or plan file; ``pareto_png``: the image's file name
    next to the report. Sections whose data is ``None`` (or empty) are left out.
    """
    out: list[str] = [f"# {title}", "", f"Source: `{source}`", ""]
    if chosen is not None:
        out += [f"Chosen plan: trial {chosen}.", ""]
    described = plan.describe()
    out += ["Plan:", ""]
    out += [f"- `{line}`" for line in described] if described else ["- unplanned (the plan changes nothing)"]
    out.append("")

    # ---- summary ----
    summary: list[tuple[str, str]] = []
    if accuracy is not None:
        summary.append(("validation accuracy", _acc(accuracy)))
    if unplanned_accuracy is not None:
        summary.append(("unplanned model's accuracy", _acc(unplanned_accuracy)))
    if accuracy is not None and unplanned_accuracy:
        summary.append(("share of the unplanned model", f"{100.0 * accuracy / unplanned_accuracy:.2f}%"))
    if flops_ratio is not None:
        summary.append(("FLOPs (x unplanned)", f"{flops_ratio:.3f}"))
    if llm_flops_ratio is not None:
        summary.append(("LLM FLOPs (x unplanned)", f"{llm_flops_ratio:.3f}"))
    if flops:
        summary.append(("GFLOPs per sample", _gflops(sum(flops.values()))))
    from searchskip.export.model import removed_layers

    removed = len(removed_layers(plan, num_layers, pinned))
    summary.append(("decoder layers kept", f"{num_layers - removed} of {num_layers}"))
    out += ["## Summary", ""] + markdown_table(("measure", "value"), summary, ("l", "r")) + [""]

    # ---- accuracy vs FLOPs ----
    if points or pareto_png:
        out += ["## Accuracy vs FLOPs", ""]
        if pareto_png:
            out += [f"![accuracy vs FLOPs]({pareto_png})", ""]
        if points:
            front = sorted((p for p in points if p.on_front), key=lambda p: (p.flops_ratio, -p.accuracy, p.number))
            n_front = len(front)
            out += [f"{len(points)} feasible scored trials, {n_front} on the Pareto front"
                    + (f" (the {FRONT_ROWS} with the fewest FLOPs below)" if n_front > FRONT_ROWS else "") + ".", ""]
            if front:
                rows = []
                for p in front[:FRONT_ROWS]:
                    note = [f"seed {p.label}"] if p.label else []
                    if chosen is not None and p.number == chosen:
                        note.insert(0, "**chosen**")
                    rows.append((p.number, _acc(p.accuracy), f"{p.flops_ratio:.3f}", p.summary or "?",
                                 ", ".join(note)))
                out += ["### Pareto front", ""]
                out += markdown_table(("trial", "accuracy", "FLOPs ratio", "plan", "note"), rows, ("r", "r", "r", "l", "l"))
                out.append("")

    # ---- layer map ----
    out += ["## Layer map", ""]
    rows = [(r["layer"], r["attention"], r["ffn"], r["scope"], r["pruned"], r["note"])
            for r in layer_map_rows(plan, num_layers, pinned)]
    out += markdown_table(("layer", "attention", "FFN", "scope", "pruned", "note"), rows, ("r", "l", "l", "l", "l", "l"))
    out.append("")

    # ---- FLOPs breakdown ----
    if flops:
        total = sum(flops.values())
        rows = [(COMPONENT_TITLES.get(name, name), _gflops(value),
                 f"{100.0 * value / total:.1f}%" if total else "—") for name, value in flops.items()]
        rows.append(("**total**", f"**{_gflops(total)}**", "100.0%" if total else "—"))
        out += ["## FLOPs breakdown", "", "FLOPs per sample of the compressed model, by component.", ""]
        out += markdown_table(("component", "GFLOPs/sample", "share"), rows, ("l", "r", "r")) + [""]

    # ---- per question type ----
    if per_question_type:
        base = unplanned_per_question_type or {}
        rows = []
        for qtype in sorted(set(per_question_type) | set(base)):
            mine, theirs = per_question_type.get(qtype), base.get(qtype)
            diff = f"{100.0 * (mine - theirs):+.2f}" if mine is not None and theirs is not None else "—"
            rows.append((qtype, _acc(theirs), _acc(mine), diff))
        out += ["## Accuracy per question type", ""]
        if not unplanned_per_question_type:
            out += ["(no score of the unplanned model to compare with)", ""]
        out += markdown_table(("question type", "unplanned", "plan", "difference (points)"), rows, ("l", "r", "r", "r"))
        out.append("")

    notes = list(notes)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _budget_ratio(study: Any) -> float | None:
    attrs = getattr(study, "user_attrs", {}) or {}
    budget = attrs.get("budget") or {}
    if budget.get("ratio") is not None:
        return float(budget["ratio"])
    limit, unplanned = attrs.get("budget_flops"), attrs.get("unplanned_flops")
    if limit and unplanned:
        return float(limit) / float(unplanned)
    return None


def write_report(folder: str | Path, *, study: Any = None, budget_ratio: float | None = None,
                 points: Sequence[TrialPoint] | None = None, pareto_png: str | None = PARETO_FILE,
                 **kwargs: Any) -> list[Path]:
    """Write ``report.md`` (and ``pareto.png`` when there are trial points) into ``folder``.

    Takes :func:`render_report`'s keyword arguments. With ``study`` and no ``points``, the
    points are :func:`trial_points` of the study, and ``budget_ratio`` (the dashed line of the
    plot) defaults to the study's budget (its ``budget`` user attr). ``pareto_png`` is the
    image's file name (``None``: no image). Returns the written paths, ``report.md`` first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if points is None and study is not None:
        points = trial_points(study)
    if budget_ratio is None and study is not None:
        budget_ratio = _budget_ratio(study)
    written: list[Path] = []
    image = None
    if points and pareto_png:
        image = folder / pareto_png
        plot_pareto(points, image, chosen=kwargs.get("chosen"), budget_ratio=budget_ratio,
                    title=kwargs.get("title", ""))
    text = render_report(points=points, pareto_png=pareto_png if image is not None else None, **kwargs)
    report = folder / REPORT_FILE
    report.write_text(text, encoding="utf-8")
    written.append(report)
    if image is not None:
        written.append(image)
    return written
