"""The optuna search: budget rejection, dedup, seeds, resume, stale trials, fingerprints, job rules.

Most tests inject a cheap fake evaluator (the model is not the point there) that counts its
calls; the embedded model is loaded once per module for the workload and FLOP counts, and one
test scores real plans on 32 validation questions.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchskip.config.loader import job_from_data, load_job
from searchskip.errors import ConfigError
from searchskip.plan import Plan
from searchskip.search.objective import ModelEvaluator, PlanScore
from searchskip.search.storage import fail_stale_trials, open_storage
from searchskip.search.seeds import seed_plans
from searchskip.search.study import run_search, study_dir, trial_counts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(one_thread):
    """The embedded model and 32 validation questions, loaded once."""
    from searchskip.data.splits import load_eval_split
    from searchskip.models import load_model

    job = load_job(REPO / "jobs/demo.yaml")
    return load_model(job.model), load_eval_split(job.data, "validation").select(range(32))


class FakeEvaluator:
    """Accuracy from the plan key (distinct plans, distinct scores); counts its calls."""

    def __init__(self):
        self.calls = 0
        self.keys: list[str] = []

    def __call__(self, plan: Plan, report) -> PlanScore:
        self.calls += 1
        self.keys.append(plan.key())
        acc = (int(hashlib.sha256(plan.key().encode()).hexdigest(), 16) % 1000) / 1000  # same in every process
        return PlanScore(acc, {"what shape": acc}, 32)


def make_job(tmp_path: Path, space: str = "spaces/per-layer.yaml", **search) -> object:
    budget = search.pop("budget", {"flops_ratio": 0.8})
    data = {
        "name": "t",
        "outputs": str(tmp_path / "out"),
        "data": {"source": "easy_vqa", "carve_validation": {"fraction": 0.1, "seed": 0},
                 "validation_subset": {"size": 32, "seed": 0}},
        "eval": {"batch_size": 8, "max_new_tokens": 2},
        "search": {"space": str(REPO / space) if not Path(space).is_absolute() else space,
                   "budget": budget, "trials": 4, **search},
    }
    return job_from_data(data, None)


def run(job, demo, evaluator, **kw):
    loaded, dataset = demo
    return run_search(job, loaded=loaded, dataset=dataset, evaluator=evaluator, progress=False, **kw)


# ---- budget ---------------------------------------------------------------------------------


def fixed_ratio(demo) -> float:
    """The share of the unplanned FLOPs that no plan changes (vision tower, projector, lm_head) on
    the demo subset: the smallest budget a search accepts."""
    from searchskip.flops import count_flops, measure_workload

    loaded, dataset = demo
    baseline = count_flops(loaded.model.config, None, measure_workload(loaded, dataset, 2))
    return baseline.fixed_total() / baseline.total()


def test_over_budget_proposals_are_recorded_without_running_the_model_and_do_not_count(tmp_path, demo):
    # fit_budget off: the sampler's raw proposals; at half the FLOPs most of random search's are over budget
    ev = FakeEvaluator()
    job = make_job(tmp_path, budget={"flops_ratio": 0.5}, trials=3, sampler="random", seed_plans=False,
                   fit_budget=False)
    result = run(job, demo, ev)
    counts = trial_counts(result.study)
    assert ev.calls == result.evaluations == counts["counted"] == 3  # `trials` counts model evaluations
    infeasible = [t for t in result.study.get_trials() if t.user_attrs.get("infeasible")]
    assert infeasible and counts["infeasible"] == len(infeasible)
    for t in infeasible:
        assert t.state == TrialState.PRUNED and t.user_attrs["flops_ratio"] > 0.5
        assert "accuracy" not in t.user_attrs and not t.intermediate_values
        assert Plan.from_yaml_text(t.user_attrs["plan"]).key() == t.user_attrs["plan_key"]


def test_fitted_proposals_never_miss_the_budget_and_sit_near_it(tmp_path, demo):
    ev = FakeEvaluator()
    job = make_job(tmp_path, budget={"flops_ratio": 0.5}, trials=8, sampler="random", seed_plans=False)
    result = run(job, demo, ev)
    trials = result.study.get_trials()
    assert trial_counts(result.study)["infeasible"] == 0 and ev.calls == 8
    ratios = [t.user_attrs["flops_ratio"] for t in trials]
    assert all(r <= 0.5 + 1e-9 for r in ratios)
    assert min(ratios) > 0.4, ratios  # filled toward the budget, not left far below it
    assert any(t.user_attrs.get("fit_changes", 0) > 0 for t in trials)


def test_a_budget_no_plan_can_meet_is_refused_before_anything_is_written(tmp_path, demo):
    floor = fixed_ratio(demo)
    job = make_job(tmp_path, budget={"flops_ratio": floor * 0.99})
    with pytest.raises(ConfigError, match=r"search\.budget\.flops_ratio: `flops_ratio >= [0-9.]+` must hold") as info:
        run(job, demo, FakeEvaluator())
    assert not (tmp_path / "out").exists()
    bound = float(re.search(r">= ([0-9.]+)`", str(info.value)).group(1))
    assert floor <= bound < floor * 1.001  # the bound it names can be met


def test_within_budget_trials_are_scored(tmp_path, demo):  # the control of the test above
    ev = FakeEvaluator()
    result = run(make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=3, seed_plans=False), demo, ev)
    assert ev.calls >= 1
    complete = [t for t in result.study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete and all(t.user_attrs["infeasible"] is False for t in complete)
    for t in complete:
        assert set(t.user_attrs["flops_by_component"]) >= {"vision", "llm_prefill"}
        assert t.user_attrs["accuracy_per_question_type"] and t.user_attrs["seconds"] >= 0


# ---- dedup ------------------------------------------------------------------------------------


def test_same_plan_reuses_the_stored_score(tmp_path, demo):
    space = tmp_path / "two.yaml"
    space.write_text("version: 1\nkind: per_layer\nlayers: [3]\nops: [keep, skip_ffn]\nscope: all\n")
    ev = FakeEvaluator()
    job = make_job(tmp_path, space=str(space), budget={"flops_ratio": 1.0}, trials=2, sampler="random",
                   seed_plans=False, fit_budget=False)
    result = run(job, demo, ev)
    trials = result.study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert ev.calls == len(set(ev.keys)) == len({t.user_attrs["plan_key"] for t in trials}) == 2
    dups = [t for t in trials if "dedup_of" in t.user_attrs]
    assert len(dups) == len(trials) - 2
    for t in dups:
        original = result.study.trials[t.user_attrs["dedup_of"]]
        assert "dedup_of" not in original.user_attrs
        assert original.user_attrs["plan_key"] == t.user_attrs["plan_key"]
        assert t.value == original.value and t.user_attrs["accuracy"] == original.user_attrs["accuracy"]


def test_a_search_whose_space_is_exhausted_stops_and_says_so(tmp_path, demo, capsys):
    from searchskip.search.evaluations import STALL_LIMIT

    space = tmp_path / "two.yaml"
    space.write_text("version: 1\nkind: per_layer\nlayers: [3]\nops: [keep, skip_ffn]\nscope: all\n")
    ev = FakeEvaluator()
    job = make_job(tmp_path, space=str(space), budget={"flops_ratio": 1.0}, trials=5, sampler="random",
                   seed_plans=False)
    result = run(job, demo, ev)
    # at a budget of 1.0 the fit gives every skip back: each proposal is the unplanned model, scored once
    assert ev.calls == 1 and trial_counts(result.study)["counted"] == 1
    assert trial_counts(result.study)["dedup"] >= STALL_LIMIT
    assert "proposals ran no model" in capsys.readouterr().err


# ---- seeds ------------------------------------------------------------------------------------


def test_seeds_are_the_unplanned_model_and_fitting_paper_plans(tmp_path, demo, monkeypatch):
    ev = FakeEvaluator()
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=30)
    result = run(job, demo, ev)
    seeded = {t.user_attrs["seed"]: t for t in result.study.get_trials() if "seed" in t.user_attrs}
    assert "unplanned" in seeded and Plan.from_yaml_text(seeded["unplanned"].user_attrs["plan"]).is_empty
    plan = Plan.from_pattern(2, 0, 8, "skip_block", num_layers=8)
    label = "paper:skip_block/interval=2/start=0"
    assert seeded[label].user_attrs["plan_key"] == plan.key()
    assert all(label.startswith(("unplanned", "paper:")) for label in seeded)
    assert len(seeded) >= 10
    # the seeds ran first, and each only once even when the search is resumed
    numbers = sorted(t.number for t in seeded.values())
    assert numbers == list(range(len(seeded)))
    import searchskip.search.worker as worker_module

    enqueued: list = []
    real_enqueue = worker_module.enqueue_seeds
    monkeypatch.setattr(worker_module, "enqueue_seeds",
                        lambda study, seeds: enqueued.append(seeds) or real_enqueue(study, seeds))
    run(job, demo, ev, trials=32)
    assert enqueued == []  # the `seeded` guard: a resumed run enqueues nothing
    labels = [t.user_attrs["seed"] for t in result.study.get_trials() if "seed" in t.user_attrs]
    assert len(labels) == len(set(labels))


def test_seeds_respect_budget_and_space(tmp_path, demo):
    from searchskip.search.objective import ObjectiveContext, budget_of, plan_cost
    from searchskip.search.space import Space

    loaded, dataset = demo
    from searchskip.flops import measure_workload

    w = measure_workload(loaded, dataset, 2)
    tight = make_job(tmp_path, budget={"flops_ratio": 0.8}).search
    ctx = ObjectiveContext(space=Space.load(tight.space), num_layers=8, arch=loaded.model.config, workload=w,
                           budget=budget_of(tight.budget))
    seeds = seed_plans(ctx)
    assert seeds and "unplanned" not in [label for label, _, _ in seeds]
    assert all(plan_cost(ctx, plan)[2] for _, plan, _ in seeds)
    # spaces/sublayer.yaml cannot express skip_block: those paper plans are left out
    sub = Space.load(REPO / "spaces/sublayer.yaml")
    ctx_sub = ObjectiveContext(space=sub, num_layers=8, arch=loaded.model.config, workload=w,
                               budget=budget_of(make_job(tmp_path, budget={"flops_ratio": 1.0}).search.budget))
    labels = [label for label, _, _ in seed_plans(ctx_sub)]
    assert labels and not any("skip_block" in label for label in labels)
    assert all(sub.params_for(plan, 8) == params for _, plan, params in seed_plans(ctx_sub))


# ---- resume, stale trials ------------------------------------------------------------------------


def test_resume_continues_to_exactly_the_requested_count(tmp_path, demo):
    ev = FakeEvaluator()
    job = make_job(tmp_path, trials=3)
    first = run(job, demo, ev)
    assert trial_counts(first.study)["counted"] == 3
    second = run(job, demo, ev, trials=7)
    assert trial_counts(second.study)["counted"] == 7 and len(second.study.get_trials()) == 7
    again = run(job, demo, ev, trials=7)
    assert len(again.study.get_trials()) == 7  # nothing left to do
    # a resumed sampler does not replay the first run's suggestions
    params = [tuple(sorted(t.params.items())) for t in again.study.get_trials() if "seed" not in t.user_attrs]
    assert len(set(params)) == len(params)


def _leave_running_trial(job, tmp_path) -> int:
    folder = study_dir(job)
    study = optuna.load_study(study_name="t", storage=open_storage(None, folder))
    from searchskip.search.space import Space

    trial = study.ask()
    Space.load(job.search.space).suggest(trial, 8)
    return trial.number  # never told: RUNNING, as after SIGKILL


def test_stale_running_trial_is_failed_and_retried_once(tmp_path, demo):
    ev = FakeEvaluator()
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=2, seed_plans=False)
    run(job, demo, ev)
    stale = _leave_running_trial(job, tmp_path)
    stale_params = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job))).trials[stale].params
    result = run(job, demo, ev, trials=4)
    assert result.failed_stale == [stale]
    trials = result.study.get_trials()
    assert trials[stale].state == TrialState.FAIL and "stale" in trials[stale].user_attrs["failed_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == stale]
    assert len(retries) == 1 and retries[0].params == stale_params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    counts = trial_counts(result.study)
    assert counts["counted"] == 4 and counts["failed"] == 1 and counts["running"] == 0
    assert len(trials) == 5  # 4 counted + the failed one, nothing twice


def test_a_retry_is_retried_only_once(tmp_path, demo):
    job = make_job(tmp_path, trials=1, seed_plans=False)
    run(job, demo, FakeEvaluator())
    study = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job)))
    from searchskip.search.space import Space

    trial = study.ask()
    Space.load(job.search.space).suggest(trial, 8)
    assert fail_stale_trials(study) == [trial.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == trial.number
    retry = study.ask()  # the retry starts and is killed too
    assert retry.number == waiting[0].number
    assert fail_stale_trials(study) == [retry.number]
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_a_seed_killed_before_it_suggested_is_retried_with_its_plan(tmp_path, demo):
    """An enqueued trial killed before `suggest` has its plan only in its fixed params: the retry
    must carry them (else the seed would be lost); a sampled trial killed that early has none."""
    job = make_job(tmp_path, trials=1, seed_plans=False)
    run(job, demo, FakeEvaluator())
    study = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job)))
    from searchskip.search.space import Space, layer_param

    space = Space.load(job.search.space)
    plan = Plan.from_dict({"version": 1, "layers": {1: "skip_block"}})
    plan_params = space.params_for(plan, 8)
    assert plan_params is not None and plan_params[layer_param(1)] == "skip_block"
    study.enqueue_trial(plan_params, user_attrs={"seed": "paper:x"})
    seed = study.ask()  # started, then killed before it suggested anything
    assert seed.params == {}
    sampled = study.ask()  # a sampled trial killed as early
    assert sorted(fail_stale_trials(study)) == [seed.number, sampled.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": seed.number, "seed": "paper:x"}
    assert waiting[0].system_attrs["fixed_params"] == plan_params
    retry = study.ask()  # the retry replays the seed's plan
    assert retry.number == waiting[0].number
    assert space.suggest(retry, 8) == plan


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from searchskip.config.loader import job_from_data
from searchskip.search.objective import PlanScore
from searchskip.search.study import run_search
import json
job = job_from_data(json.loads(sys.argv[1]), None)
marker = Path(sys.argv[2])
def hang(plan, report):
    marker.write_text("running")
    time.sleep(120)
run_search(job, evaluator=hang, progress=False, loaded=None, dataset=None)
"""


def test_sigkill_mid_trial_then_resume(tmp_path, demo):
    import json

    job_data = {"name": "t", "outputs": str(tmp_path / "out"),
                "data": {"source": "easy_vqa", "validation_subset": {"size": 32, "seed": 0}},
                "search": {"space": str(REPO / "spaces/per-layer.yaml"), "budget": {"flops_ratio": 1.0},
                           "trials": 3, "seed_plans": False}}
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(job_data), str(marker)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the subprocess never reached its first trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job = job_from_data(job_data, None)
    before = optuna.load_study(study_name="t", storage=open_storage(None, study_dir(job))).get_trials()
    assert [t.state for t in before] == [TrialState.RUNNING]
    regs = list((study_dir(job) / "workers").iterdir())
    assert [r.name.rsplit("-", 1)[1] for r in regs] == [str(proc.pid)]  # left by the dead process: stale
    ev = FakeEvaluator()
    result = run(job, demo, ev)
    trials = result.study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert [t.user_attrs.get("retry_of") for t in trials[1:]].count(0) == 1
    assert trial_counts(result.study)["counted"] == 3 and len(trials) == 4
    assert list((study_dir(job) / "workers").iterdir()) == []  # the stale one removed, ours removed at exit


# ---- fingerprint -------------------------------------------------------------------------------


def test_changed_budget_or_space_is_refused(tmp_path, demo):
    space = tmp_path / "space.yaml"
    space.write_text((REPO / "spaces/per-layer.yaml").read_text())
    job = make_job(tmp_path, space=str(space), trials=1, seed_plans=False)
    run(job, demo, FakeEvaluator())
    other_budget = make_job(tmp_path, space=str(space), budget={"flops_ratio": 0.6}, trials=2, seed_plans=False)
    with pytest.raises(ConfigError) as err:
        run(other_budget, demo, FakeEvaluator())
    assert "search.budget" in str(err.value) and '"flops_ratio": 0.8' in str(err.value)
    assert '"flops_ratio": 0.6' in str(err.value) and "--force-new-study" in str(err.value)
    space.write_text(space.read_text().replace("parallel_attn_ffn]", "parallel_attn_ffn, parallel_blocks]"))
    changed = make_job(tmp_path, space=str(space), trials=2, seed_plans=False)
    with pytest.raises(ConfigError, match="search.space.sha256"):
        run(changed, demo, FakeEvaluator())
    # nothing was added by the refused runs; --force-new-study starts over and keeps the old journal
    result = run(changed, demo, FakeEvaluator(), force_new_study=True)
    assert trial_counts(result.study)["counted"] == 2
    assert list(study_dir(job).glob("study.journal.old-*"))


def test_sampler_seed_and_objectives_are_fingerprinted(tmp_path, demo):
    job = make_job(tmp_path, trials=1, seed_plans=False)
    run(job, demo, FakeEvaluator())
    for change in ({"seed": 1}, {"objectives": ["accuracy", "flops"]}, {"sampler": "random"}):
        with pytest.raises(ConfigError, match=f"search.{next(iter(change))}"):
            run(make_job(tmp_path, trials=2, seed_plans=False, **change), demo, FakeEvaluator())


# ---- the real model ---------------------------------------------------------------------------


def test_real_model_scores_reports_and_restores(tmp_path, demo):
    loaded, dataset = demo
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=3, pruner="none")
    ev = ModelEvaluator(loaded, dataset, 8, 2, report_every=1,
                        apply_fn=lambda plan: __import__("searchskip.apply", fromlist=["apply"]).apply(loaded.model, plan))
    result = run(job, demo, ev)
    by_seed = {t.user_attrs.get("seed"): t for t in result.study.get_trials()}
    unplanned = by_seed["unplanned"]
    assert unplanned.state == TrialState.COMPLETE and unplanned.value > 0.5
    assert sorted(unplanned.intermediate_values) == [8, 16, 24]  # 4 batches of 8, the last is the final value
    assert set(unplanned.user_attrs["accuracy_per_question_type"])
    skip = by_seed["paper:skip_block/interval=2/start=0"]
    assert skip.user_attrs["flops_ratio"] < 1 and "dedup_of" not in skip.user_attrs  # scored on its own
    assert skip.user_attrs["questions"] == len(dataset)
    from searchskip.apply import applied_plan

    assert applied_plan(loaded.model) is None  # restored after every trial
    again = ModelEvaluator(loaded, dataset, 8, 2)(Plan(), None)
    assert again.accuracy == unplanned.value


def test_multi_objective_study_has_two_values(tmp_path, demo):
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=4, objectives=["accuracy", "flops"],
                   sampler="nsga2")
    result = run(job, demo, FakeEvaluator())
    done = [t for t in result.study.get_trials() if t.state == TrialState.COMPLETE]
    assert done and all(len(t.values) == 2 and t.values[1] == t.user_attrs["flops_ratio"] for t in done)
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE"]


def test_latency_objective_uses_the_measured_time_per_question(tmp_path, demo, monkeypatch):
    """[accuracy, latency]: the second value is the measured wall time of answering the subset per
    question. (The tiny model's time is mostly fixed overhead, so skipping its layers does not
    measurably change it; the test makes the unplanned model's batches 50 ms slower instead.)"""
    import searchskip.eval.generate as generate
    from searchskip.apply import applied_plan

    loaded, dataset = demo
    generate_answers = generate.generate_answers

    def slower_without_plan(model_loaded, *args):
        applied = applied_plan(model_loaded.model)
        if applied is None or applied.plan.is_empty:
            time.sleep(0.05)
        return generate_answers(model_loaded, *args)

    monkeypatch.setattr(generate, "generate_answers", slower_without_plan)
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=3, objectives=["accuracy", "latency"],
                   sampler="random", seed_plans=False)
    from searchskip.apply import apply

    batch_size = 16
    ev = ModelEvaluator(loaded, dataset, batch_size, 2, apply_fn=lambda plan: apply(loaded.model, plan))
    result = run(job, demo, ev)
    done = [t for t in result.study.get_trials() if t.state == TrialState.COMPLETE]
    assert done and all(len(t.values) == 2 and t.values[1] == t.user_attrs["latency_ms"] > 0 for t in done)
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    unplanned = ev(Plan(), None).latency_ms
    planned = ev(Plan.from_dict({"version": 1, "layers": {3: "skip_block"}}), None).latency_ms
    batches = -(-len(dataset) // batch_size)  # each unplanned batch sleeps 50 ms
    assert unplanned - planned > 0.8 * batches * 50 / len(dataset), (unplanned, planned)


def test_ctrl_c_stops_after_the_running_trial(tmp_path, demo):
    def interrupt(study, trial):
        os.kill(os.getpid(), signal.SIGINT)

    job = make_job(tmp_path, trials=10, seed_plans=False)
    result = run(job, demo, FakeEvaluator(), callbacks=[interrupt])
    assert result.interrupted
    counts = trial_counts(result.study)
    assert counts["counted"] in (1, 2) and counts["running"] == 0 and counts["failed"] == 0


# ---- job rules -----------------------------------------------------------------------------------


def job_problems(tmp_path, **search) -> str:
    with pytest.raises(ConfigError) as err:
        make_job(tmp_path, **search)
    return str(err.value)


def test_two_workers_are_allowed_on_journal_and_postgresql(tmp_path):
    make_job(tmp_path, workers=2)
    make_job(tmp_path, storage="postgresql://u@h/db", workers=3)


def test_sqlite_with_two_workers_is_refused(tmp_path):
    text = job_problems(tmp_path, storage="sqlite:///s.db", workers=2)
    assert "search.storage" in text and "sqlite:///s.db" in text and "workers=2" in text
    make_job(tmp_path, storage="sqlite:///s.db", workers=1)  # fine with one worker


@pytest.mark.parametrize("search, words", [
    ({"backend": "ray", "storage": "sqlite:///s.db"}, ["search.storage", "sqlite:///s.db", "backend='ray'"]),
    ({"budget": {"flops_ratio": 0.5, "gflops_per_sample": 2}}, ["exactly one", "flops_ratio=0.5"]),
    ({"budget": {"count": "dense"}}, ["exactly one", "flops_ratio=null"]),
    ({"budget": {"flops_ratio": -0.5}}, ["search.budget.flops_ratio", "`flops_ratio > 0`"]),
    ({"objectives": ["flops"]}, ["search.objectives", "[accuracy, flops]", "[accuracy, latency]"]),
    ({"space": "spaces/nope.yaml"}, ["search.space", "does not exist"]),
    ({"sampler": "cmaes"}, ["search.sampler"]),
    ({"trials": 0}, ["`trials >= 1`"]),
    ({"trials": None}, ["`trials` or `timeout_s`"]),
    ({"report_every": 0}, ["report_every"]),
    ({"storage": "redis://x"}, ["search.storage"]),
])
def test_search_rules(tmp_path, search, words):
    text = job_problems(tmp_path, **search)
    for word in words:
        assert word in text


def test_invalid_space_file_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nkind: per_layer\nops: [keep, jump]\n")
    assert "must be a valid search space" in job_problems(tmp_path, space=str(bad))


def test_shipped_jobs_have_valid_search_sections():
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            job = load_job(path)
        finally:
            os.chdir(cwd)
        assert job.search is not None and job.search.backend == "optuna", path


def test_median_pruner_stops_a_poor_trial_early(tmp_path, demo):
    class Reporting(FakeEvaluator):
        def __call__(self, plan, report):
            self.calls += 1
            acc = 0.9 if self.calls <= 5 else 0.1
            for step in (8, 16, 24):
                report(acc, step)  # raises TrialPruned when the pruner says so
            return PlanScore(acc, {}, 32)

    ev = Reporting()
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=7, sampler="random", seed_plans=False)
    result = run(job, demo, ev)
    pruned = [t for t in result.study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned and all(not t.user_attrs["infeasible"] and t.user_attrs["pruned_at"] == 8 for t in pruned)
    assert trial_counts(result.study)["pruned"] == len(pruned) and trial_counts(result.study)["counted"] == 7
    no_pruner = run(make_job(tmp_path / "b", budget={"flops_ratio": 1.0}, trials=7, sampler="random",
                             seed_plans=False, pruner="none"), demo, Reporting())
    assert trial_counts(no_pruner.study)["pruned"] == 0


def test_halving_pruner_scores_a_growing_subset(tmp_path, demo):
    """``pruner: halving``: a trial is scored on one batch (8 questions) first and goes on only while
    it is in the top third at that size; from the start, unlike the median pruner's 5 start-up trials."""
    class Worsening(FakeEvaluator):
        def __call__(self, plan, report):
            self.calls += 1
            acc = 1.0 - 0.1 * self.calls  # each trial worse than every earlier one
            for step in (8, 16, 24):
                report(acc, step)
            return PlanScore(acc, {}, 32)

    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=6, sampler="random", seed_plans=False,
                   pruner="halving")
    trials = sorted(run(job, demo, Worsening()).study.get_trials(), key=lambda t: t.number)
    assert trials[0].state == TrialState.COMPLETE
    later = [t for t in trials[1:] if "dedup_of" not in t.user_attrs]
    assert later and all(t.state == TrialState.PRUNED and t.user_attrs["pruned_at"] == 8 for t in later)
    median = run(make_job(tmp_path / "m", budget={"flops_ratio": 1.0}, trials=6, sampler="random",
                          seed_plans=False), demo, Worsening())
    assert trial_counts(median.study)["pruned"] <= 1  # the median pruner needs 5 finished trials first


@pytest.mark.parametrize("search, words", [
    ({"pruner": "hyperband"}, ["search.pruner", "median", "halving", "none"]),
    ({"feature_cache": "ram"}, ["search.feature_cache", "memory", "disk"]),
    ({"cache_memory_gb": -1}, ["search.cache_memory_gb", "`cache_memory_gb >= 0`"]),
])
def test_pruner_and_cache_rules(tmp_path, search, words):
    text = job_problems(tmp_path, **search)
    for word in words:
        assert word in text, text


def test_seeded_baselines_are_scored_in_full(tmp_path, demo):
    """The pruner never stops a seeded baseline, even one that scores worst: comparisons stay fair."""
    class Scoring(FakeEvaluator):
        def __init__(self, accuracy):
            super().__init__()
            self.accuracy = accuracy

        def __call__(self, plan, report):
            self.calls += 1
            for step in (8, 16, 24):
                report(self.accuracy, step)  # raises TrialPruned when the pruner says so
            return PlanScore(self.accuracy, {}, 32)

    # Six good unseeded trials first, so the median pruner (5 start-up trials) is armed ...
    run(make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=6, sampler="random", seed_plans=False),
        demo, Scoring(0.9))
    # ... then the same study goes on with the seeds enqueued, and everything scores badly.
    result = run(make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=40, sampler="random", seed_plans=True),
                 demo, Scoring(0.1))
    trials = result.study.get_trials()
    seeds = [t for t in trials if "seed" in t.user_attrs and not t.user_attrs.get("dedup_of")]
    assert len(seeds) >= 3
    assert all(t.state == TrialState.COMPLETE for t in seeds), [(t.number, t.state.name) for t in seeds]
    # Control: the same six good trials, then one unseeded trial that scores badly: it is pruned.
    run(make_job(tmp_path / "control", budget={"flops_ratio": 1.0}, trials=6, sampler="random", seed_plans=False),
        demo, Scoring(0.9))
    control = run(make_job(tmp_path / "control", budget={"flops_ratio": 1.0}, trials=7, sampler="random",
                           seed_plans=False), demo, Scoring(0.1))
    seventh = control.study.get_trials()[6]
    assert seventh.state == TrialState.PRUNED and not seventh.user_attrs["infeasible"]


def test_block_influence_plans_are_seeded(tmp_path, demo):
    from searchskip.flops import Workload
    from searchskip.search.baselines import block_influence_plan
    from searchskip.search.objective import budget_of

    space = tmp_path / "wide.yaml"
    space.write_text("version: 1\nkind: per_layer\nlayers: {from: 1, to: -1}\n"
                     "ops: [keep, skip_block, skip_attn, skip_ffn]\nscope: all\n")
    job = make_job(tmp_path, space=str(space), budget={"flops_ratio": 0.8}, trials=40)
    result = run(job, demo, FakeEvaluator())
    bi = result.study.user_attrs["block_influence"]
    assert len(bi) == 8 and all(0 <= v <= 2 for v in bi)
    seeded = {t.user_attrs["seed"]: t for t in result.study.get_trials() if "seed" in t.user_attrs}
    workload = Workload.from_dict(result.study.user_attrs["workload"])
    expected = block_influence_plan(bi, demo[0].model.config, workload, budget_of(job.search.budget), op="skip_block")
    assert seeded["block_influence:skip_block"].user_attrs["plan_key"] == expected.key()
    assert {"block_influence:skip_attn", "block_influence:skip_ffn"} <= set(seeded)
    assert all(t.user_attrs["infeasible"] is False for t in seeded.values())


def test_layer_contribution_plans_are_seeded_where_the_space_offers_scope_visual(tmp_path, demo):
    from searchskip.flops import Workload
    from searchskip.search.baselines import labelled_layer_contribution_plans
    from searchskip.search.objective import budget_of

    space = tmp_path / "visual.yaml"
    space.write_text("version: 1\nkind: per_layer\nlayers: {from: 0, to: -1}\n"
                     "ops: [keep, skip_block, skip_attn, skip_ffn]\nscope: visual\n")
    job = make_job(tmp_path, space=str(space), budget={"flops_ratio": 0.9}, trials=30)
    result = run(job, demo, FakeEvaluator())
    lc = result.study.user_attrs["layer_contribution"]
    assert len(lc) == 8 and all(v >= 0 for v in lc)
    seeded = {t.user_attrs["seed"]: t for t in result.study.get_trials() if "seed" in t.user_attrs}
    workload = Workload.from_dict(result.study.user_attrs["workload"])
    expected = labelled_layer_contribution_plans(lc, demo[0].model.config, workload, budget_of(job.search.budget))
    # freezing the image tokens' attention alone in every layer saves too little for 0.9
    assert {label for label, _ in expected} == {"layer_contribution:skip_block", "layer_contribution:skip_ffn"}
    for label, plan in expected:
        assert seeded[label].user_attrs["plan_key"] == plan.key() and seeded[label].user_attrs["infeasible"] is False
    assert not any(label.startswith("block_influence:") for label in seeded)  # scope all: outside this space
    # a space without scope visual measures no Layer Contribution
    plain = make_job(tmp_path / "plain", budget={"flops_ratio": 0.9}, trials=3, seed_plans=True)
    assert "layer_contribution" not in run(plain, demo, FakeEvaluator()).study.user_attrs


def test_harm_is_measured_once_per_study_and_steers_the_fit(tmp_path, demo, monkeypatch):
    from searchskip.search import worker
    from searchskip.search.harm import HARM_ATTR, harm_key

    job = make_job(tmp_path, budget={"flops_ratio": 0.8}, trials=3, seed_plans=False)
    result = run(job, demo, FakeEvaluator())
    harm = result.study.user_attrs[HARM_ATTR]
    from searchskip.search.space import Space

    grid = Space.load(job.search.space).grid(8)
    assert set(harm) == set(grid) and all(harm[n][harm_key(grid[n][0])] == 0.0 for n in grid)
    assert any(v > 0 for values in harm.values() for v in values.values())

    def measured_again(*args, **kwargs):
        raise AssertionError("the harm was measured again")

    monkeypatch.setattr(worker, "measure_harm", measured_again)
    resumed = run(job, demo, FakeEvaluator(), trials=5)
    assert trial_counts(resumed.study)["counted"] == 5
    # fit_budget: false measures nothing
    unfitted = make_job(tmp_path / "unfitted", budget={"flops_ratio": 0.8}, trials=2, seed_plans=False,
                        fit_budget=False)
    assert HARM_ATTR not in run(unfitted, demo, FakeEvaluator()).study.user_attrs


def test_sqlite_storage_with_one_worker_resumes(tmp_path, demo):
    url = f"sqlite:///{tmp_path / 's.db'}"
    job = make_job(tmp_path, storage=url, trials=2, seed_plans=False)
    run(job, demo, FakeEvaluator())
    assert (tmp_path / "s.db").is_file() and not (study_dir(job) / "study.journal").exists()
    result = run(job, demo, FakeEvaluator(), trials=3)
    assert trial_counts(result.study)["counted"] == 3
    with pytest.raises(ConfigError, match="search.seed"):
        run(make_job(tmp_path, storage=url, trials=4, seed_plans=False, seed=5), demo, FakeEvaluator())


def test_live_view_shows_the_leaderboard_so_far(tmp_path, demo, capsys):
    loaded, dataset = demo
    job = make_job(tmp_path, budget={"flops_ratio": 1.0}, trials=4, sampler="random", seed_plans=False)
    run_search(job, loaded=loaded, dataset=dataset, evaluator=FakeEvaluator(), progress=True)
    err = capsys.readouterr().err
    assert "leaderboard so far" in err and "search" in err and "feasible" in err
    assert re.search(r"feasible 4 +infeasible 0 +pruned 0 +failed 0 +best \d+\.\d\d%", err), err
