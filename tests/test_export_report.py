"""The export's report (searchskip.export.report): trial points, pareto.png, layer map, report.md."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from searchskip.export.report import (
    layer_map_rows,
    plot_pareto,
    render_report,
    trial_points,
    write_report,
)
from searchskip.plan import Plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FLOPS = {"vision": 4.0e11, "projector": 2.0e10, "llm_prefill": 1.2e12, "llm_decode": 3.0e11, "lm_head": 8.0e10}


def _plan(layers=None, **extra) -> Plan:
    data = {"version": 1, **extra}
    if layers:
        data["layers"] = layers
    return Plan.from_dict(data)


def _attrs(plan: Plan, *, ratio: float, accuracy: float | None = None, seed: str | None = None, **extra) -> dict:
    attrs = {"plan": plan.to_yaml(), "plan_key": plan.key(), "flops": ratio * 2.0e12, "flops_ratio": ratio,
             "flops_by_component": {k: ratio * v for k, v in FLOPS.items()}, "infeasible": False}
    if accuracy is not None:
        attrs.update(accuracy=accuracy, accuracy_per_question_type={"yes/no": accuracy + 0.05,
                                                                    "number": accuracy - 0.1},
                     questions=200)
    if seed is not None:
        attrs["seed"] = seed
    attrs.update(extra)
    return attrs


PLAN_3 = _plan({3: "skip_block", 5: "skip_ffn"})


@pytest.fixture()
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(directions=["maximize"])
    s.set_user_attr("budget", {"count": "dense", "attention": "causal", "ratio": 0.6})

    def add(plan: Plan, ratio: float, accuracy: float, **kw):
        s.add_trial(create_trial(value=accuracy, user_attrs=_attrs(plan, ratio=ratio, accuracy=accuracy, **kw)))

    add(_plan(), 1.0, 0.80, seed="unplanned")                                                       # 0
    add(Plan.from_pattern(2, 0, 8, "skip_block"), 0.55, 0.70, seed="paper:skip_block/interval=2/start=0")  # 1
    add(_plan({2: "skip_block", 6: "skip_block"}), 0.60, 0.72, seed="block_influence:skip_block")    # 2
    add(PLAN_3, 0.58, 0.75)                                                                          # 3
    add(_plan({1: "skip_block", 2: "skip_block", 4: "skip_block"}), 0.40, 0.60)                      # 4
    add(_plan({6: "skip_attn"}), 0.70, 0.65)                                                         # 5
    infeasible = _plan({1: "skip_ffn"})
    s.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=_attrs(infeasible, ratio=0.9, infeasible=True)))  # 6
    add(PLAN_3, 0.58, 0.75, dedup_of=3)                                                              # 7
    add(_plan({7: "parallel_attn_ffn"}), 0.56, 0.69)                                                 # 8
    return s


# ---- trial points ---------------------------------------------------------------------------


def test_trial_points_content_and_front(study):
    points = trial_points(study)
    assert [p.number for p in points] == [0, 1, 2, 3, 4, 5, 8]  # no PRUNED infeasible trial, no dedup_of repeat
    by = {p.number: p for p in points}
    assert {n for n, p in by.items() if p.on_front} == {0, 1, 3, 4}
    assert by[0].label == "unplanned" and by[0].summary == "unplanned"
    assert by[1].label == "paper:skip_block/interval=2/start=0"
    assert by[2].label == "block_influence:skip_block"
    assert by[3].label is None
    assert by[3].accuracy == pytest.approx(0.75) and by[3].flops_ratio == pytest.approx(0.58)
    assert by[3].summary == "3: skip_block; 5: skip_ffn"


def test_trial_points_empty_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert trial_points(optuna.create_study(directions=["maximize"])) == []


# ---- pareto.png ------------------------------------------------------------------------------


def test_plot_pareto_writes_png_and_closes_figures(study, tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    points = trial_points(study)
    path = tmp_path / "sub" / "pareto.png"
    plot_pareto(points, path, chosen=3, budget_ratio=0.6, title="demo")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5 * 1024
    assert plt.get_fignums() == before  # nothing left open
    again = tmp_path / "again.png"
    plot_pareto(points, again, chosen=3, budget_ratio=0.6, title="demo")
    assert again.read_bytes() == data  # deterministic


def test_plot_pareto_without_points_still_writes(tmp_path):
    path = tmp_path / "empty.png"
    plot_pareto([], path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


# ---- layer map -------------------------------------------------------------------------------

MIXED = Plan.from_dict({
    "version": 1,
    "layers": {1: "skip_block", 3: {"op": "skip_attn", "scope": "generated"}, 4: "parallel_attn_ffn",
               6: {"op": "parallel_blocks", "average": True}, 8: {"op": "skip_block", "scope": "generated"},
               11: "skip_ffn"},
    "drop": {"start": 9, "end": 11},
    "prune": {"method": "wanda", "sparsity": {0: 0.3, 1: 0.5, 3: 0.3, 7: 0.25}, "targets": ["attn", "ffn"]},
})


def _row(layer, attention="kept", ffn="kept", scope="", pruned="", note=""):
    return {"layer": layer, "attention": attention, "ffn": ffn, "scope": scope, "pruned": pruned, "note": note}


def test_layer_map_rows():
    rows = layer_map_rows(MIXED, 12)
    assert len(rows) == 12 and [r["layer"] for r in rows] == list(range(12))
    assert rows[0] == _row(0, pruned="30% attn+ffn")
    assert rows[1] == _row(1, "removed", "removed", "all", "", "skip_block")  # removed physically: no pruning
    assert rows[2] == _row(2)
    assert rows[3] == _row(3, "skipped (generated)", "kept", "generated", "30% attn+ffn", "skip_attn")
    assert rows[4] == _row(4, "parallel", "parallel", "all", "", "attention and FFN in parallel")
    assert rows[5] == _row(5)
    assert rows[6] == _row(6, "parallel", "parallel", "all", "", "parallel with layer 7, averaged")
    assert rows[7] == _row(7, "parallel", "parallel", "all", "25% attn+ffn", "parallel with layer 6, averaged")
    assert rows[8] == _row(8, "skipped (generated)", "skipped (generated)", "generated", "", "skip_block")
    assert rows[9] == _row(9, "removed", "removed", "", "", "dropped")
    assert rows[10] == _row(10, "removed", "removed", "", "", "dropped")
    assert rows[11] == _row(11, "kept", "skipped", "all", "", "skip_ffn")


def test_layer_map_uniform_prune_structure_and_empty_plan():
    plan = Plan.from_dict({"version": 1, "prune": {"method": "magnitude", "structure": "2:4", "sparsity": 0.5,
                                                   "targets": ["ffn"]}})
    assert {r["pruned"] for r in layer_map_rows(plan, 4)} == {"50% ffn 2:4"}
    assert layer_map_rows(Plan.from_dict({"version": 1}), 2) == [_row(0), _row(1)]


# ---- report.md -------------------------------------------------------------------------------


def _kwargs(**over):
    kw = dict(title="demo export", plan=PLAN_3, num_layers=8, flops=FLOPS, flops_ratio=0.58, accuracy=0.75,
              per_question_type={"yes/no": 0.80, "number": 0.65},
              unplanned_per_question_type={"yes/no": 0.85, "number": 0.70, "other": 0.5},
              unplanned_accuracy=0.80, points=None, chosen=3, source="outputs/demo", pareto_png="pareto.png",
              notes=["exported with searchskip"])
    kw.update(over)
    return kw


def test_render_report_sections_and_numbers(study):
    text = render_report(**_kwargs(points=trial_points(study), llm_flops_ratio=0.52))
    for heading in ("# demo export", "## Summary", "## Accuracy vs FLOPs", "### Pareto front", "## Layer map",
                    "## FLOPs breakdown", "## Accuracy per question type", "## Notes"):
        assert heading in text.splitlines(), heading
    assert "outputs/demo" in text and "- `3: skip_block`" in text
    assert "| validation accuracy | 75.00% |" in text
    assert "| unplanned model's accuracy | 80.00% |" in text
    assert "| share of the unplanned model | 93.75% |" in text
    assert "| FLOPs (x unplanned) | 0.580 |" in text
    assert "| LLM FLOPs (x unplanned) | 0.520 |" in text
    assert "| decoder layers kept | 7 of 8 |" in text  # skip_block at 3 (scope all) is removed
    assert "![accuracy vs FLOPs](pareto.png)" in text
    # the front, fewest FLOPs first, chosen trial marked
    front = [line for line in text.splitlines() if line.startswith("| 4 |") or line.startswith("| 1 |")
             or line.startswith("| 3 |") or line.startswith("| 0 |")]
    assert front[0].startswith("| 4 | 60.00% | 0.400 |")
    assert "| 3 | 75.00% | 0.580 | 3: skip_block; 5: skip_ffn | **chosen** |" in text
    assert "| 1 | 70.00% | 0.550 |" in text and "seed paper:skip_block/interval=2/start=0" in text
    assert "| 2 | 72.00%" not in text  # dominated: not in the front table
    # layer map
    assert "| 3 | removed | removed | all |  | skip_block |" in text
    assert "| 5 | kept | skipped | all |  | skip_ffn |" in text
    assert "| 0 | kept | kept |  |  |  |" in text
    # FLOPs: 3 significant digits, shares
    assert "| vision tower | 400 | 20.0% |" in text
    assert "| projector | 20.0 | 1.0% |" in text
    assert "| LLM prefill | 1200 | 60.0% |" in text
    assert "| lm_head | 80.0 | 4.0% |" in text
    assert "| **total** | **2000** | 100.0% |" in text
    assert "| GFLOPs per sample | 2000 |" in text
    # per question type: unplanned, plan, difference in points
    assert "| yes/no | 85.00% | 80.00% | -5.00 |" in text
    assert "| number | 70.00% | 65.00% | -5.00 |" in text
    assert "| other | 50.00% | — | — |" in text
    assert "- exported with searchskip" in text


def test_render_report_without_study_is_graceful():
    plan = Plan.from_dict({"version": 1, "layers": {2: "skip_ffn"}})
    text = render_report(**_kwargs(plan=plan, points=None, pareto_png=None, chosen=None, accuracy=None,
                                   unplanned_accuracy=None, per_question_type=None,
                                   unplanned_per_question_type=None, flops=None, flops_ratio=0.9,
                                   source="plans/mine.yaml", notes=()))
    lines = text.splitlines()
    assert "## Summary" in lines and "## Layer map" in lines
    for absent in ("## Accuracy vs FLOPs", "### Pareto front", "## FLOPs breakdown", "## Accuracy per question type",
                   "## Notes", "share of the unplanned model", "validation accuracy", "pareto.png", "trial"):
        assert absent not in text, absent
    assert "| FLOPs (x unplanned) | 0.900 |" in text
    assert "LLM FLOPs" not in text  # no llm_flops_ratio: no row
    assert "| 2 | kept | skipped | all |  | skip_ffn |" in text


def test_render_report_unplanned_plan_without_baseline():
    text = render_report(**_kwargs(plan=Plan.from_dict({"version": 1}), unplanned_per_question_type=None,
                                   unplanned_accuracy=None, points=None, pareto_png=None))
    assert "unplanned (the plan changes nothing)" in text
    assert "| yes/no | — | 80.00% | — |" in text
    assert "share of the unplanned model" not in text


def test_gflops_three_significant_digits():
    text = render_report(**_kwargs(flops={"vision": 1.23456e9, "llm_prefill": 0.0123456e9, "llm_decode": 999.6e9},
                                   points=None, pareto_png=None))
    assert "| vision tower | 1.23 |" in text
    assert "| LLM prefill | 0.0123 |" in text
    assert "| LLM decode | 1000 |" in text


# ---- write_report ----------------------------------------------------------------------------


def test_write_report_with_study(study, tmp_path):
    kw = _kwargs()
    del kw["points"], kw["pareto_png"]
    written = write_report(tmp_path / "export", study=study, **kw)
    assert [p.name for p in written] == ["report.md", "pareto.png"]
    assert written[1].read_bytes()[:8] == PNG_SIGNATURE
    text = written[0].read_text(encoding="utf-8")
    assert "![accuracy vs FLOPs](pareto.png)" in text and "### Pareto front" in text


def test_write_report_without_study(tmp_path):
    kw = _kwargs(per_question_type=None, unplanned_per_question_type=None, accuracy=None, unplanned_accuracy=None,
                 chosen=None)
    del kw["points"], kw["pareto_png"]
    written = write_report(tmp_path, **kw)
    assert written == [tmp_path / "report.md"]
    assert not (tmp_path / "pareto.png").exists()
    text = written[0].read_text(encoding="utf-8")
    assert "pareto.png" not in text and "## Layer map" in text
