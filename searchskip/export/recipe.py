"""``finetune.yaml``: the export's fine-tune recipe, itself a valid searchskip job.

:func:`render_recipe` turns the job a plan was searched with into a job for ``searchskip
finetune`` (:mod:`searchskip.finetune`) on the exported model: ``model.id`` is the export's
``model/`` folder, ``data``/``eval`` are the source job's, and a ``finetune:`` section holds
the paper's *training with skipping* (only the vision-to-LLM projector trains, the LLM is
frozen, the plan stays active; AdamW at 2e-4 with warm-up and cosine decay). A header
comment says what the recipe does, the plan, the splits, epochs and batch size, the exact
command, and how to switch to LoRA.

**Paths.** A job's relative paths resolve against the current directory (see
:mod:`searchskip.config.job`), so every path the recipe writes (``model.id``, ``outputs``,
``finetune.out``, local data files) is absolute: the recipe runs from any directory, as long
as the export folder stays where it was written (move it, and edit those paths).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from searchskip.config.job import FinetuneSpec, Job, LoraSpec
from searchskip.export.model import MODEL_DIR

__all__ = ["RECIPE_FILE", "recipe_data", "render_recipe", "write_recipe"]

RECIPE_FILE = "finetune.yaml"
FINETUNE_DIR = "finetune"
"""Where the recipe's checkpoints, recovered model and metrics go, inside the export folder."""


def _plain(value: Any) -> Any:
    """Config dataclasses as YAML-able data (internal fields left out, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get("internal")}
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _data_section(job: Job) -> dict[str, Any]:
    """The source job's ``data`` section with its local paths made absolute."""
    data = _plain(job.data)
    if data.get("path"):
        data["path"] = _absolute(data["path"])
    splits = data.get("splits") or {}
    if job.data.source == "parquet":
        splits = {role: ([_absolute(v) for v in value] if isinstance(value, list) else _absolute(value))
                  for role, value in splits.items()}
    elif job.data.source == "vqav2_json":
        splits = {role: ({k: _absolute(v) for k, v in value.items()} if isinstance(value, dict) else value)
                  for role, value in splits.items()}
    data["splits"] = splits
    return data


def recipe_data(job: Job, export_dir: str | Path, *, method: Literal["projector", "lora"] = "projector") -> dict:
    """The recipe as plain data (what :func:`render_recipe` writes below its header)."""
    folder = Path(export_dir).expanduser().absolute()
    model: dict[str, Any] = {"id": str(folder / MODEL_DIR), "dtype": job.model.dtype, "device": job.model.device}
    if job.model.prompt_template:
        model["prompt_template"] = job.model.prompt_template
    finetune = _plain(FinetuneSpec(method=method, out=str(folder / FINETUNE_DIR),
                                   lora=LoraSpec() if method == "lora" else None))
    if method != "lora":
        finetune.pop("lora")
    name = f"{job.name}-finetune"[:100]
    return {"name": name, "model": model, "data": _data_section(job), "eval": _plain(job.eval),
            "outputs": _absolute(job.outputs), "finetune": finetune}


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def render_recipe(job: Job, export_dir: str | Path, plan_summary: str, *,
                  method: Literal["projector", "lora"] = "projector") -> str:
    """The text of ``<export_dir>/finetune.yaml`` for the export of ``job``'s plan (``plan_summary``:
    one line, e.g. ``"; ".join(plan.describe())``). ``export_dir`` is where the export folder
    lives (or will live): the recipe's paths point into it."""
    folder = Path(export_dir).expanduser().absolute()
    data = recipe_data(job, folder, method=method)
    ft = data["finetune"]
    limit = "all" if ft["train_limit"] is None else f"the first {ft['train_limit']}"
    eval_limit = "all" if ft["eval_limit"] is None else f"the first {ft['eval_limit']}"
    what = ("LoRA adapters on the LLM's attention and MLP linears train (merged into the weights at the end)"
            if method == "lora" else
            "only the vision-to-LLM projector trains, the LLM stays frozen")
    header = [
        f"Fine-tune recipe for the export of job {job.name!r}: a searchskip job with a `finetune:` section.",
        "",
        "The paper's training with skipping: the compressed model is trained with its plan active",
        f"(every skipped computation stays skipped), {what};",
        f"AdamW, lr {ft['lr']:g}, {ft['schedule']} schedule with {ft['warmup_ratio']:g} of the steps as warm-up,",
        "LM loss on the answer tokens only.",
        "",
        f"plan: {plan_summary}",
        f"train split: {ft['train_split']} ({limit} questions, shuffled with seed {ft['seed']})",
        f"epochs: {ft['epochs']}   batch size: {ft['batch_size']}",
        f"evaluation split: {ft['eval_split']} ({eval_limit} questions, before and after training)",
        "",
        "Run it (from any directory; checkpoints let a rerun resume where it stopped):",
        "",
        f"  searchskip finetune {folder / RECIPE_FILE}",
        "",
        f"It writes {ft['out']}/: checkpoints/, model/ (the recovered model, same",
        "runtime plan) and metrics.json (test accuracy before and after).",
        "",
    ]
    if method == "lora":
        header += ["Projector-only training instead (the paper's default): set `finetune.method: projector`",
                   "and remove the `finetune.lora` section."]
    else:
        header += ["Stronger recovery: LoRA on the LLM (peft) instead of the projector: set",
                   "`finetune.method: lora` and optionally add",
                   "  lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: null}",
                   "under `finetune:` (null: every attention and MLP linear of the decoder layers)."]
    header += ["Paths are absolute: a job's relative paths resolve against the current directory."]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return _comment(header) + "\n" + body


def write_recipe(job: Job, export_dir: str | Path, plan_summary: str, *,
                 method: Literal["projector", "lora"] = "projector", final_dir: str | Path | None = None) -> Path:
    """Write :func:`render_recipe`'s text to ``<export_dir>/finetune.yaml`` and return its path.
    ``final_dir``: where the folder will finally live when ``export_dir`` is a temporary folder
    that is renamed afterwards (the recipe's paths point there)."""
    target = Path(export_dir) / RECIPE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_recipe(job, final_dir if final_dir is not None else export_dir, plan_summary, method=method)
    target.write_text(text, encoding="utf-8")
    return target
