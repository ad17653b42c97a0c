"""Label-free fitness (``agreement``, ``kl``): exact against a brute-force teacher-forced pass, and searchable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from searchskip.apply import apply
from searchskip.eval.fidelity import ForceTokens, Reference, _generate, kl_rows, score_batch
from searchskip.eval.prepared import prepare_subset
from searchskip.plan import Plan
from searchskip.search.objective import ModelEvaluator

REPO = Path(__file__).resolve().parents[1]
PLANS = [Plan(layers={3: "skip_block", 5: "skip_ffn"}), Plan(layers={i: "skip_block" for i in (1, 2, 4, 6)}),
         Plan(layers={2: "skip_attn"}, scope="generated")]


@pytest.fixture(scope="module")
def demo(one_thread):
    from searchskip.config.loader import load_job
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model

    job = load_job(REPO / "jobs/demo.yaml")
    return load_model(job.model), load_eval_split(job.data, "validation").select(range(24))


def _forced_everywhere(loaded, batch, reference, max_new_tokens):
    """The teacher-forced log-probabilities of every row, all forced (the definition, without shortcuts)."""
    inputs = batch.generate_inputs()
    forcer = ForceTokens(reference.tokens, inputs["input_ids"].shape[1], loaded.processor.tokenizer.pad_token_id)
    _, logits = _generate(loaded, inputs, max_new_tokens, [forcer])
    logp = torch.log_softmax(logits.float(), -1)
    return [logp[:len(t), i] for i, t in enumerate(reference.tokens)]


@pytest.mark.parametrize("plan", PLANS, ids=["two-ops", "four-blocks", "generated-scope"])
def test_kl_equals_the_teacher_forced_definition_and_agreement_the_answers(demo, plan):
    loaded, dataset = demo
    prepared = prepare_subset(loaded, dataset, 8, feature_cache="memory")
    reference = Reference(loaded, prepared, 2).ensure()
    unplanned = [score_batch(loaded, b.generate_inputs, r, 2) for b, r in zip(prepared, reference)]
    assert all(a == 1.0 for s in unplanned for a in s.agreement)
    assert all(abs(k) < 1e-6 for s in unplanned for k in s.kl)  # the same model: no divergence
    handle = apply(loaded.model, plan)
    try:
        diverged = 0
        for batch, ref in zip(prepared, reference):
            scored = score_batch(loaded, batch.generate_inputs, ref, 2)
            expected = kl_rows(ref, _forced_everywhere(loaded, batch, ref, 2))
            assert scored.kl == pytest.approx(expected, rel=1e-4, abs=1e-6)
            assert scored.agreement == [float(a == b) for a, b in zip(scored.answers, ref.answers)]
            diverged += sum(a == 0 for a in scored.agreement)
            assert all(k >= -1e-6 for k in scored.kl)
    finally:
        handle.restore()
    if plan is PLANS[1]:
        assert diverged > 0  # four blocks skipped change answers: the forced pass ran


def test_the_evaluator_reports_the_objective_and_records_accuracy_too(demo):
    loaded, dataset = demo
    reports = []
    ev = ModelEvaluator(loaded, dataset, 8, 2, feature_cache="memory", objective="kl",
                        apply_fn=lambda plan: apply(loaded.model, plan))
    score = ev(PLANS[1], lambda value, step: reports.append((step, value)))
    assert score.kl > 0 and 0 <= score.agreement < 1 and 0 <= score.accuracy <= 1
    assert [s for s, _ in reports] == [8, 16] and all(v >= 0 for _, v in reports)
    same = ev(Plan(), None)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0, abs=1e-6)
    plain = ModelEvaluator(loaded, dataset, 8, 2, feature_cache="memory")(Plan(), None)
    assert plain.kl is None and plain.agreement is None and plain.accuracy == same.accuracy


def test_a_kl_search_ranks_by_kl_and_records_every_score(tmp_path, demo):
    from searchskip.search.leaderboard import leaderboard, primary, verdict
    from searchskip.search.study import run_search
    from test_study import make_job

    loaded, dataset = demo
    job = make_job(tmp_path, budget={"flops_ratio": 0.7}, trials=6, objectives=["kl"])
    study = run_search(job, loaded=loaded, dataset=dataset, progress=False).study
    assert primary(study) == ("kl", False) and study.directions[0].name == "MINIMIZE"
    board = leaderboard(study)
    assert board and [t.user_attrs["kl"] for t in board] == sorted(t.user_attrs["kl"] for t in board)
    for t in board:
        assert {"kl", "agreement", "accuracy"} <= set(t.user_attrs) and t.values[0] == t.user_attrs["kl"]
    assert "kl" in verdict(study)[0]


@pytest.mark.parametrize("objectives, ok", [(["kl"], True), (["agreement", "flops"], True), (["kl", "latency"], True),
                                            (["flops"], False), (["kl", "accuracy"], False), ([], False)])
def test_objective_lists(tmp_path, objectives, ok):
    import yaml

    from searchskip.config.loader import load_job
    from searchskip.errors import ConfigError

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "search": {"space": str(REPO / "spaces/per-layer.yaml"),
                                                             "budget": {"flops_ratio": 0.5}, "objectives": objectives}}))
    if ok:
        assert list(load_job(path).search.objectives) == objectives
    else:
        with pytest.raises(ConfigError, match="search.objectives"):
            load_job(path)


def test_kl_rows_is_the_kl_divergence():
    from searchskip.eval.fidelity import ReferenceBatch

    gen = torch.Generator().manual_seed(0)
    ref = [torch.log_softmax(torch.randn(n, 11, generator=gen), -1) for n in (1, 3)]
    planned = [torch.log_softmax(torch.randn(n, 11, generator=gen), -1) for n in (1, 3)]
    reference = ReferenceBatch(["a", "b"], [[0], [0, 1, 2]], [r.exp() for r in ref], [(r.exp() * r).sum(-1) for r in ref])
    expected = [float(torch.nn.functional.kl_div(q, r, log_target=True, reduction="none").sum(-1).mean())
                for r, q in zip(ref, planned)]
    assert kl_rows(reference, planned) == pytest.approx(expected, rel=1e-5)
    assert kl_rows(reference, ref) == pytest.approx([0.0, 0.0], abs=1e-6)
