"""A job's VQA split as a local lmms-eval task: :func:`write_vqa_task`.

The folder it writes is an lmms-eval ``--include_path``: the split saved with ``save_to_disk`` in
VQAv2's layout (``answers`` as ``{"answer", "answer_id"}`` records), a task YAML reading it with
``load_from_disk`` and a ``utils.py`` that takes lmms-eval's own VQAv2 functions (image, question,
and its ``exact_match`` metric). So a plan can be scored with lmms-eval on the questions
``searchskip eval`` scores, offline, with the field's metric. The task adds no instruction to the
question (``post_prompt`` empty): the model's prompt template gives the prompt ``searchskip eval``
gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["write_vqa_task"]

UTILS = '''"""Written by searchskip.lmms.tasks: lmms-eval's VQAv2 functions for a local VQA split."""
from lmms_eval.tasks.vqav2.utils import vqav2_doc_to_text, vqav2_doc_to_visual, vqav2_process_results_val  # noqa: F401
'''

TASK = """# Written by searchskip.lmms.tasks from {job} ({split}: {rows} questions): lmms-eval's VQAv2 task
# layout over a local save_to_disk folder.
task: {name}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: {split}
output_type: generate_until
doc_to_visual: !function utils.vqav2_doc_to_visual
doc_to_text: !function utils.vqav2_doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  until: ["\\n\\n"]
process_results: !function utils.vqav2_process_results_val
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
metadata:
  version: 0.0
"""

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def write_vqa_task(job: Any, folder: str | Path, *, split: str = "validation", name: str | None = None,
                   limit: int | None = None, data_path: str | Path | None = None) -> str:
    """Write ``job``'s ``split`` (its validation subset, or the test split; the first ``limit``
    questions) into ``folder`` as the lmms-eval task ``name`` (default ``searchskip_<job>_<split>``);
    return the task name (give ``folder`` to lmms-eval as ``--include_path``). ``data_path``: where
    the task's data will be read from, when ``folder`` is moved after writing (default
    ``folder/data``)."""
    import datasets

    from searchskip.data.splits import load_eval_split

    datasets.disable_progress_bars()  # searchskip shows its own progress

    name = name or re.sub(r"[^A-Za-z0-9_]", "_", f"searchskip_{job.name}_{split}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"an lmms-eval task name is letters, digits and '_', but got {name!r}")
    rows = load_eval_split(job.data, split)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def vqav2_layout(row: dict) -> dict:
        return {"answers": [{"answer": a, "answer_id": k} for k, a in enumerate(row["answers"])],
                "answer": row["answers"][0], "question_id": str(row["question_id"])}

    data = rows.map(vqav2_layout, remove_columns=["answers", "question_id"])
    datasets.DatasetDict({split: data}).save_to_disk(str(folder / "data"))
    (folder / "utils.py").write_text(UTILS)
    (folder / f"{name}.yaml").write_text(TASK.format(job=job.source_file or job.name, split=split, rows=len(data),
                                                     name=name, data=str(Path(data_path or folder / "data").resolve()),
                                                     max_new_tokens=job.eval.max_new_tokens))
    return name
