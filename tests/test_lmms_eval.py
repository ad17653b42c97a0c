"""searchskip in lmms-eval: the ``searchskip`` model (entry point ``lmms_eval.models``), the local task
of a job's split, the retention table of ``searchskip eval --lmms-eval``, and the metric's parity.

lmms-eval pins its own dependency set, so CI runs these in a virtualenv of their own
(``bash .ci/lmms-env DIR``: lmms-eval 0.7.3 + this checkout); elsewhere they skip, except the case
that checks the message a user without lmms-eval gets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from searchskip.cli import main

REPO = Path(__file__).resolve().parents[1]
HAVE_LMMS = importlib.util.find_spec("lmms_eval") is not None
if os.environ.get("SEARCHSKIP_REQUIRE_LMMS") and not HAVE_LMMS:  # CI's lmms-eval leg: skipping would hide it
    raise RuntimeError("SEARCHSKIP_REQUIRE_LMMS is set, but lmms-eval is not importable here")
needs_lmms = pytest.mark.skipif(not HAVE_LMMS, reason="lmms-eval is not installed here: CI runs these in the "
                                                      "virtualenv `bash .ci/lmms-env DIR` makes")
QUESTIONS = 32
PLAN = {"version": 1, "layers": {i: "skip_attn" for i in range(4)}}
"""A plan that changes answers of the embedded model (about a third right), so scores can disagree."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The demo job (outputs in a temporary folder), the plan file, the job's first QUESTIONS
    validation questions as a local lmms-eval task, and an export of the plan."""
    from searchskip.config.loader import load_job

    root = tmp_path_factory.mktemp("lmms")
    data = yaml.safe_load((REPO / "jobs/demo.yaml").read_text())
    data["outputs"] = str(root / "out")
    data["data"]["validation_subset"]["size"] = 200
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(data))
    plan_file = root / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(PLAN))
    out = {"root": root, "job_file": job_file, "job": load_job(job_file), "plan_file": plan_file}
    if HAVE_LMMS:
        from searchskip.lmms.tasks import write_vqa_task

        out["tasks"] = root / "tasks"
        out["task"] = write_vqa_task(out["job"], out["tasks"], limit=QUESTIONS)
        assert main(["export", "--job", str(job_file), "--plan", str(plan_file), "--out", str(root / "export"),
                     "--no-progress"]) == 0
        out["export"] = root / "export"
    return out


def searchskip_answers(setup: dict, plan: bool) -> tuple[list[str], float]:
    """``searchskip eval``'s answers and accuracy on the task's questions (the plan applied or not)."""
    from searchskip.apply import apply
    from searchskip.data.splits import load_eval_split
    from searchskip.eval.generate import answer_all
    from searchskip.eval.vqa_accuracy import score
    from searchskip.models import load_model
    from searchskip.plan import Plan

    job = setup["job"]
    rows = load_eval_split(job.data, "validation").select(range(QUESTIONS))
    loaded = load_model(job.model)
    if plan:
        with apply(loaded.model, Plan.from_dict(PLAN)):
            answers = answer_all(loaded, rows, job.eval.batch_size, job.eval.max_new_tokens)
    else:
        answers = answer_all(loaded, rows, job.eval.batch_size, job.eval.max_new_tokens)
    return answers, score(answers, rows["answers"]).accuracy


def evaluate(setup: dict, **model_args) -> dict:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from searchskip.lmms.backend import SearchSkipLMMS

    lm = SearchSkipLMMS(**model_args)
    manager = TaskManager("ERROR", include_path=str(setup["tasks"]), include_defaults=False, model_name="searchskip")
    result = simple_evaluate(model=lm, tasks=[setup["task"]], task_manager=manager, log_samples=True,
                             bootstrap_iters=0, device="cpu", verbosity="ERROR")
    samples = sorted(result["samples"][setup["task"]], key=lambda s: s["doc_id"])
    return {"score": result["results"][setup["task"]]["exact_match,none"],
            "answers": [s["filtered_resps"][0] for s in samples], "lm": lm}


@needs_lmms
def test_the_entry_point_gives_lmms_eval_the_searchskip_model():
    from lmms_eval.models import get_model

    from searchskip.lmms.backend import SearchSkipLMMS

    assert get_model("searchskip") is SearchSkipLMMS


@needs_lmms
@pytest.mark.parametrize("planned", [False, True], ids=["unplanned", "plan"])
def test_scores_through_lmms_eval_equal_searchskip_eval_on_the_same_questions(setup, planned):
    kw = {"job": str(setup["job_file"]), "batch_size": 8}
    if planned:
        kw["plan"] = str(setup["plan_file"])
    got = evaluate(setup, **kw)
    answers, accuracy = searchskip_answers(setup, planned)
    assert got["answers"] == answers
    assert got["score"] == pytest.approx(accuracy, abs=1e-12)
    assert 0.1 < accuracy < 0.9 if planned else accuracy > 0.9  # the plan really changes answers


@needs_lmms
def test_an_export_scores_as_its_plan_with_its_plan_active(setup):
    from searchskip.apply import applied_plan

    got = evaluate(setup, export=str(setup["export"]), batch_size=5)
    answers, accuracy = searchskip_answers(setup, True)
    assert got["answers"] == answers and got["score"] == pytest.approx(accuracy, abs=1e-12)
    assert applied_plan(got["lm"].loaded.model) is not None  # load_compressed's runtime plan: skips not run


@needs_lmms
def test_the_lmms_eval_command_serves_an_export(setup, tmp_path):
    """As a user types it: ``lmms-eval --model searchskip --model_args export=...``."""
    run = subprocess.run([str(Path(sys.executable).parent / "lmms-eval"), "--model", "searchskip", "--model_args",
                          f"export={setup['export']}", "--tasks", setup["task"], "--include_path", str(setup["tasks"]),
                          "--batch_size", "4", "--output_path", str(tmp_path / "logs")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    files = list((tmp_path / "logs").rglob("*results*.json"))
    assert files, run.stdout[-2000:]
    score = json.loads(files[0].read_text())["results"][setup["task"]]["exact_match,none"]
    assert score == pytest.approx(searchskip_answers(setup, True)[1], abs=1e-12)


@needs_lmms
def test_the_retention_table_of_an_export(setup, capsys):
    assert main(["eval", str(setup["job_file"]), "--lmms-eval", setup["task"], "--export", str(setup["export"]),
                 "--lmms-include-path", str(setup["tasks"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    beside = setup["export"].parent / f"{setup['export'].name}-lmms-eval"  # the export's own folder stays sealed
    assert result["written"] == str(beside / "lmms-eval-retention.md")
    from searchskip.export.manifest import verify_manifest

    assert verify_manifest(setup["export"]) == [] and verify_manifest(beside) == []
    (row,) = result["rows"]
    _, unplanned = searchskip_answers(setup, False)
    _, planned = searchskip_answers(setup, True)
    assert row["unplanned"] == pytest.approx(unplanned) and row["planned"] == pytest.approx(planned)
    assert row["retention"] == pytest.approx(planned / unplanned)
    metrics = json.loads((setup["export"] / "metrics.json").read_text())
    # the same plan priced on this task's questions: the export priced it on the job's validation subset
    assert row["flops_ratio"] == pytest.approx(metrics["flops"]["ratio"], abs=0.02)
    assert 0 < row["llm_flops_ratio"] < 1
    text = (beside / "lmms-eval-retention.md").read_text()
    assert f"| {setup['task']} | exact_match |" in text


@needs_lmms
def test_the_job_task_and_a_plan_file(setup, capsys):
    """``--lmms-eval job``: the job's validation subset, written as a local task."""
    out = setup["root"] / "ret"
    assert main(["eval", str(setup["job_file"]), "--lmms-eval", "job", "--plan", str(setup["plan_file"]),
                 "--limit", str(QUESTIONS), "--out", str(out), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["unplanned"] == pytest.approx(searchskip_answers(setup, False)[1])
    assert row["planned"] == pytest.approx(searchskip_answers(setup, True)[1])
    assert (out / "lmms-eval-retention.json").is_file()


@needs_lmms
@pytest.mark.parametrize(("argv", "words"), [
    (["--lmms-eval", "no_such_task_xyz", "--plan", "PLAN"], ["unknown lmms-eval task", "'no_such_task_xyz'"]),
    (["--lmms-eval", "job"], ["--plan PLAN.yaml or --export DIR"]),
    (["--lmms-eval", "job", "--plan", "PLAN", "--export", "EXPORT"], ["--plan", "exclude each other"]),
    (["--lmms-eval", "job", "--export", "ROOT"], ["searchskip export", "missing"]),
    (["--lmms-eval", ",", "--plan", "PLAN"], ["name at least one task"]),
    (["--export", "EXPORT"], ["--export", "goes with --lmms-eval"]),
    (["--lmms-eval", "jobb", "--plan", "PLAN"], ["'jobb'", "did you mean 'job'"]),
    (["--lmms-eval", "job", "--plan", "BADPLAN"], ["badplan.yaml", "layers.3", "skip_blok"]),
    (["--lmms-eval", "job", "--plan", "NOPLAN"], ["nope.yaml", "does not exist"]),
    (["--lmms-eval", "job", "--export", "BADRECORD"], ["searchskip_export.json", "unreadable export record"]),
    (["--lmms-eval", "job", "--export", "NOWEIGHTS"], ["model.safetensors"]),
    (["--lmms-eval", "job", "--plan", "PLAN", "--lmms-include-path", "NODIR"], ["--lmms-include-path", "not a folder"]),
    (["--lmms-eval", "broken", "--plan", "PLAN", "--lmms-include-path", "BROKENDIR"],
     ["--lmms-include-path", "cannot read the task files", "ScannerError"]),
    (["--lmms-eval", "job", "--plan", "PLAN", "--out", "AFILE"], ["afile", "not a folder"]),
    (["--lmms-eval", "job", "--plan", "PLAN", "--out", "UNDERFILE"], ["afile", "could not be written"]),
    (["--lmms-eval", "job", "--plan", "PLAN", "--out", "FOREIGN"], ["mine", "did not write"]),
])
def test_bad_lmms_eval_arguments_are_one_line_and_exit_2_before_any_model_loads(setup, capsys, monkeypatch, argv,
                                                                                words):
    import shutil

    from searchskip.lmms import backend

    root = setup["root"] / "bad"
    if not root.exists():
        root.mkdir()
        (root / "badplan.yaml").write_text("version: 1\nlayers: {3: skip_blok}\n")
        shutil.copytree(setup["export"], root / "badrecord")
        (root / "badrecord/model/searchskip_export.json").write_text('{"source_model": "embedded:tiny')
        shutil.copytree(setup["export"], root / "noweights")
        (root / "noweights/model/model.safetensors").unlink()
        (root / "brokendir").mkdir()
        (root / "brokendir/broken.yaml").write_text("task: broken\n  dataset_path: : x\n")
        (root / "afile").write_text("a file\n")
        (root / "mine").mkdir()
        (root / "mine/lmms-eval-retention.md").write_text("my notes\n")
    subs = {"PLAN": str(setup["plan_file"]), "EXPORT": str(setup.get("export", setup["root"])), "ROOT": str(setup["root"]),
            "BADPLAN": str(root / "badplan.yaml"), "NOPLAN": str(root / "nope.yaml"), "BADRECORD": str(root / "badrecord"),
            "NOWEIGHTS": str(root / "noweights"), "NODIR": str(root / "nodir"), "BROKENDIR": str(root / "brokendir"),
            "AFILE": str(root / "afile"), "UNDERFILE": str(root / "afile" / "out"), "FOREIGN": str(root / "mine")}
    monkeypatch.setattr(backend.SearchSkipLMMS, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["eval", str(setup["job_file"]), *[subs.get(a, a) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    assert (root / "mine/lmms-eval-retention.md").read_text() == "my notes\n"
    assert (root / "afile").read_text() == "a file\n"


@needs_lmms
def test_the_retention_table_is_replaced_by_a_rerun_and_a_task_named_twice_is_scored_once(setup, capsys):
    out = setup["root"] / "rerun"
    for _ in range(2):
        assert main(["eval", str(setup["job_file"]), "--lmms-eval", "job,job", "--plan", str(setup["plan_file"]),
                     "--limit", "4", "--out", str(out), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["rows"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["lmms-eval-retention.json", "lmms-eval-retention.md", "manifest.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".rerun")]  # no temporary leftovers


@needs_lmms
def test_an_unwritable_outputs_folder_for_the_job_task_is_one_line(setup, tmp_path, capsys):
    data = yaml.safe_load(setup["job_file"].read_text())
    (tmp_path / "afile").write_text("x")
    data["outputs"] = str(tmp_path / "afile" / "out")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    assert main(["eval", str(job), "--lmms-eval", "job", "--plan", str(setup["plan_file"]),
                 "--out", str(tmp_path / "ret")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "afile" in err and "could not be written" in err, err


@needs_lmms
@pytest.mark.parametrize(("args", "words"), [
    ({"job": "JOB", "export": "EXPORT"}, ["exactly one of export="]),
    ({}, ["exactly one of export="]),
    ({"export": "EXPORT", "plan": "PLAN"}, ["plan= applies to job="]),
    ({"job": "JOB", "colour": "red"}, ["unknown argument(s) colour"]),
    ({"job": "JOB", "batch_size": "auto"}, ["--batch_size", "whole number"]),
    ({"export": "EXPORT", "dtype": "float64"}, ["dtype must be float32, float16 or bfloat16", "'float64'"]),
    ({"job": "JOB", "max_new_tokens": 0}, ["max_new_tokens must be a whole number >= 1", "0"]),
    ({"job": "JOB", "max_new_tokens": 2.5}, ["max_new_tokens must be a whole number >= 1"]),
])
def test_bad_model_args_name_the_argument(setup, args, words):
    from searchskip.errors import ConfigError
    from searchskip.lmms.backend import SearchSkipLMMS

    subs = {"JOB": str(setup["job_file"]), "EXPORT": str(setup["export"]), "PLAN": str(setup["plan_file"])}
    with pytest.raises(ConfigError) as err:
        SearchSkipLMMS(**{k: subs.get(v, v) for k, v in args.items()})
    assert all(w in str(err.value) for w in words), str(err.value)


@needs_lmms
def test_sampling_and_documents_without_one_image_are_refused_naming_the_task(setup):
    from lmms_eval.api.instance import Instance

    from searchskip.errors import ConfigError, DataError
    from searchskip.lmms.backend import SearchSkipLMMS

    lm = SearchSkipLMMS(job=str(setup["job_file"]))
    lm.task_dict = {"t": {"s": [{"q": "what color?"}]}}
    image = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (64, 64), "red")

    def request(gen_kwargs, visuals):
        return Instance("generate_until", ("what color?", gen_kwargs, lambda doc: visuals, 0, "t", "s"), 0,
                        {"task": "t", "doc_id": 0, "repeats": 1, "split": "s"})

    with pytest.raises(ConfigError, match="task t.*sampling"):
        lm.generate_until([request({"temperature": 0.7}, [image])])
    with pytest.raises(DataError, match="task t, document 0: .*one image per question.*2 visual"):
        lm.generate_until([request({}, [image, image])])
    with pytest.raises(DataError, match="gives 0 visual"):
        lm.generate_until([request({}, [])])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([request({}, [image])])
    from searchskip.eval.generate import answer_batch

    want = answer_batch(lm.loaded, [image], ["what color?"], 2)
    assert lm.generate_until([request({"until": ["\n\n"], "max_new_tokens": 2}, [image])]) == want


@needs_lmms
def test_loglikelihood_is_the_planned_models_and_picks_the_greedy_answer(setup):
    """Multiple-choice requests: the loss of each continuation with the plan active (lmms-eval's
    convention: mean negative log-likelihood), and whether greedy decoding gives it; the likeliest
    choice is the model's own answer."""
    from lmms_eval.api.instance import Instance, unwrap_generation_output

    from searchskip.data.splits import load_eval_split
    from searchskip.lmms.backend import SearchSkipLMMS

    rows = load_eval_split(setup["job"].data, "validation").select(range(6))
    for planned in (False, True):
        kw = {"job": str(setup["job_file"])} | ({"plan": str(setup["plan_file"])} if planned else {})
        lm = SearchSkipLMMS(**kw)
        lm.task_dict = {"t": {"s": list(rows)}}
        answers, _ = searchskip_answers(setup, planned)
        for doc_id, row in enumerate(rows):
            choices = ["red", "blue", "green", "yellow", "circle", "rectangle", "triangle", "yes", "no"]
            requests = [Instance("loglikelihood", (row["question"], choice, lambda doc: [doc["image"]], doc_id, "t", "s"),
                                 k, {"task": "t", "doc_id": doc_id, "repeats": 1, "split": "s"})
                        for k, choice in enumerate(choices)]
            scored = [unwrap_generation_output(x)[0] for x in lm.loglikelihood(requests)]  # as the evaluator keeps them
            best = min(range(len(choices)), key=lambda k: scored[k][0])  # the loss: lower is likelier
            assert all(loss >= 0 for loss, _ in scored)
            if answers[doc_id] in choices:  # one-token answers: the greedy one is the most likely
                assert choices[best] == answers[doc_id]
                assert scored[best][1] is True and sum(g for _, g in scored) == 1


@needs_lmms
def test_vqa_accuracy_agrees_with_lmms_evals_vqav2_metric():
    """On the same predictions, lmms-eval's VQAv2 ``exact_match`` equals ``vqa_accuracy`` in its
    ``lmms-eval`` convention, always; the official convention differs only where the ten answers
    are all identical (the official code compares raw strings then)."""
    import copy

    from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val

    from searchskip.eval.vqa_accuracy import question_accuracy

    answer_sets = [
        ["yes"] * 10, ["2"] * 10, ["two"] * 7 + ["2"] * 3, ["red"] * 4 + ["dark red"] * 3 + ["maroon"] * 3,
        ["the cat"] * 5 + ["cat"] * 5, ["left /right up/down"] * 2 + ["left right"] * 8,
        ["1,000"] * 6 + ["1000"] * 4, ["3.5"] * 9 + ["3"], ["don't know"] * 5 + ["dont know"] * 5,
        ["no"] * 9 + ["yes"], ["teddy bear"] * 3 + ["bear"] * 3 + ["stuffed animal"] * 4,
    ]
    predictions = ["yes", "Yes", "yes.", "2", "two", "Two", "red", "Red!", "dark red", "cat", "the cat", "a cat",
                   "left right", "1,000", "1000", "3.5", "3", "dont know", "don't know", "no", "teddy bear",
                   "  bear\n", "stuffed-animal", "", "maroon."]
    differ = 0
    for answers in answer_sets:
        doc = {"question_id": 1, "answers": [{"answer": a, "answer_id": k} for k, a in enumerate(answers)]}
        for prediction in predictions:
            theirs = vqav2_process_results_val(copy.deepcopy(doc), [prediction])["exact_match"]
            assert question_accuracy(prediction, answers, "lmms-eval") == pytest.approx(theirs, abs=1e-12), (
                prediction, answers)
            official = question_accuracy(prediction, answers)
            if official != pytest.approx(theirs, abs=1e-12):
                differ += 1
                assert len(set(answers)) == 1, (prediction, answers)
    assert differ > 0  # the conventions really differ (e.g. "Yes" against ten "yes")


@pytest.mark.skipif(HAVE_LMMS, reason="lmms-eval is installed here")
def test_without_lmms_eval_the_command_says_how_to_install_it(tmp_path, capsys):
    from tests.helpers import demo_job

    job = demo_job(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    assert main(["eval", str(job), "--lmms-eval", "job", "--plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "needs lmms-eval" in err and "searchskip[lmms-eval]" in err and "torch==2.13.0" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@needs_lmms
def test_a_multiple_choice_task_through_lmms_eval_picks_the_planned_models_answer(setup, tmp_path):
    """lmms-eval's ``multiple_choice`` output type: one ``loglikelihood`` request per choice; the
    chosen answer (lowest loss) is the planned model's own greedy answer."""
    import datasets
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from searchskip.lmms.backend import SearchSkipLMMS

    data = datasets.load_from_disk(str(setup["tasks"] / "data"))["validation"]
    choices = sorted({a["answer"] for row in data for a in row["answers"]})
    data = data.map(lambda row: {"target": choices.index(row["answer"])})
    datasets.DatasetDict({"validation": data}).save_to_disk(str(tmp_path / "data"))
    (tmp_path / "utils.py").write_text((setup["tasks"] / "utils.py").read_text())
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump({
        "task": "searchskip_mc", "dataset_path": str(tmp_path / "data"), "dataset_kwargs": {"load_from_disk": True},
        "test_split": "validation", "output_type": "multiple_choice", "doc_to_choice": choices, "doc_to_target": "target",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "lmms_eval_specific_kwargs": {"default": {"pre_prompt": "", "post_prompt": ""}}}).replace(
        "doc_to_choice:", "doc_to_visual: !function utils.vqav2_doc_to_visual\ndoc_to_text: !function "
                          "utils.vqav2_doc_to_text\ndoc_to_choice:"))
    lm = SearchSkipLMMS(job=str(setup["job_file"]), plan=str(setup["plan_file"]))
    manager = TaskManager("ERROR", include_path=str(tmp_path), include_defaults=False, model_name="searchskip")
    result = simple_evaluate(model=lm, tasks=["searchskip_mc"], task_manager=manager, log_samples=True,
                             bootstrap_iters=0, device="cpu", verbosity="ERROR", limit=12)
    answers, _ = searchskip_answers(setup, True)
    samples = sorted(result["samples"]["searchskip_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == 12
    for sample in samples:
        losses = [float(r[0]) for r in sample["filtered_resps"]]
        picked = choices[min(range(len(choices)), key=losses.__getitem__)]
        if answers[sample["doc_id"]] in choices:
            assert picked == answers[sample["doc_id"]]
    right = sum(answers[s["doc_id"]] == data[s["doc_id"]]["answer"] for s in samples)
    assert result["results"]["searchskip_mc"]["acc,none"] == pytest.approx(right / 12)
