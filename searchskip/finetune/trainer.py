"""``run_finetune(job)``: recover accuracy of a compressed model by training with its plan active.

What runs, for a job with a ``finetune:`` section (:class:`~searchskip.config.job.FinetuneSpec`):

1. the model loads with :func:`searchskip.export.load.load_compressed` (an export's ``model/``
   folder gets its runtime plan applied; any other model loads plainly), on ``model.device``;
2. every parameter is frozen; ``method: projector`` (the paper's training with skipping) makes
   the vision-to-LLM projector trainable, ``method: lora`` injects peft LoRA adapters into the
   language model's decoder linears (:class:`~searchskip.config.job.LoraSpec`);
3. the train split is shuffled (``seed``) and cut to ``train_limit``; the eval split to
   ``eval_limit``; accuracy on the eval split is measured before training (plan active);
4. AdamW, linear warm-up then cosine decay to 0 (or constant), gradient clipping; the loss is
   the LM loss on the answer tokens (and eos), teacher-forced, left-padded batches
   (:class:`~searchskip.data.tensors.TrainingTensors`) inside
   :func:`~searchskip.apply.plan_context` with the batch's prompt length, so token scopes
   (``generated``, ``prompt``) mean in training what they mean in generation;
5. checkpoints every ``checkpoint_every`` steps, at each epoch end and on Ctrl-C
   (:mod:`searchskip.finetune.checkpoint`); a rerun resumes from the newest one;
6. at the end LoRA is merged into the base weights and the weights that were exactly zero
   before (pruned) are zeroed again; the plan is restored and the model saved with
   :func:`~searchskip.export.model.save_compressed` into ``<out>/model/`` with the same runtime
   plan; accuracy is measured again (plan active) and ``<out>/metrics.json`` written.

Determinism: epoch ``e`` visits the questions in the order of ``torch.randperm`` seeded with
``seed`` and ``e``, so a resumed run skips the batches already done and sees the same batches
as an uninterrupted one; the trainable tensors, the optimizer state and the torch RNG (LoRA
dropout) come back from the checkpoint exactly. On the CPU with the same thread count a
resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from searchskip.config.job import FinetuneSpec, Job
from searchskip.errors import ConfigError
from searchskip.export.model import MODEL_DIR
from searchskip.finetune import checkpoint as ckpt_io

__all__ = ["FinetuneResult", "finetune_out", "lr_at", "run_finetune"]

METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` did and wrote."""

    out: Path
    model_dir: Path
    metrics: dict
    losses: list[float] = field(default_factory=list)
    """Training loss of every step, from step 1 (steps before a resume come from the checkpoint)."""
    resumed_from: int | None = None
    """The checkpoint step this run continued from (``None``: started fresh)."""

    @property
    def steps(self) -> int:
        return int(self.metrics["steps"])


def finetune_out(job: Job) -> Path:
    """``finetune.out``, or ``<outputs>/<name>-finetune`` when it is null."""
    spec = _spec(job)
    return Path(spec.out if spec.out is not None else Path(job.outputs) / f"{job.name}-finetune").expanduser()


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str = "cosine", *,
          floor: float = 0.0) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up over ``warmup`` steps to ``peak``, then
    cosine decay to ``floor * peak`` at ``total`` (``cosine``) or ``peak`` (``constant``)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _spec(job: Job) -> FinetuneSpec:
    if job.finetune is None:
        raise ConfigError(f"finetune: the job {job.name!r} has no `finetune:` section, so there is nothing to run; "
                          "add one (e.g. `finetune: {method: projector}`) or use the finetune.yaml that "
                          "`searchskip export` writes", job.source_file)
    return job.finetune


# --------------------------------------------------------------------------------------
# Trainable parameters
# --------------------------------------------------------------------------------------


def _lora_targets(adapter: Any, model: Any, lm: Any) -> list[str]:
    """Names (inside the language model) of every attention and MLP linear of the decoder layers."""
    from searchskip.arch.fused import source_of

    names = {id(m): n for n, m in lm.named_modules()}
    out = []
    for layer in adapter.layers(model):
        for linear in (*adapter.attn_linears(layer).values(), *adapter.mlp_linears(layer).values()):
            module = source_of(linear)  # a fused linear once, for all its slices
            if id(module) in names and names[id(module)] not in out:
                out.append(names[id(module)])
    return out


def _inject_lora(spec: FinetuneSpec, adapter: Any, model: Any) -> list[Any]:
    """Inject LoRA adapters into the language model; return the modules that got one."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    lora = spec.lora_settings
    lm = adapter.language_model(model)
    targets = list(lora.target_modules) if lora.target_modules is not None else _lora_targets(adapter, model, lm)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        bias="none")
    try:
        inject_adapter_in_model(config, lm)
    except ValueError as err:  # no module matched target_modules
        raise ConfigError(f"finetune.lora.target_modules: {err}") from None
    return [m for m in lm.modules() if isinstance(m, LoraLayer)]


def _merge_lora(adapter: Any, model: Any, zeros: dict[str, Any]) -> int:
    """Merge every LoRA adapter into its base linear, put the base linears back in place, and zero
    again the weights listed in ``zeros`` (name -> mask of weights that were exactly 0). Returns
    the number of merged modules."""
    import torch
    from peft.tuners.lora import LoraLayer

    lm = adapter.language_model(model)
    merged = 0
    for name, module in list(lm.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        setattr(parent, child, module.get_base_layer())
        merged += 1
    with torch.no_grad():
        for name, mask in zeros.items():
            lm.get_submodule(name).weight[mask.to(lm.get_submodule(name).weight.device)] = 0
    return merged


def _zero_masks(adapter: Any, model: Any, lora_modules: list[Any]) -> dict[str, Any]:
    """Masks of the exactly-zero weights of the linears under the LoRA adapters ``lora_modules``
    (:func:`_inject_lora`'s result), by module name inside the language model (where
    :func:`_merge_lora` puts the base linear back); only linears with zeros are listed."""
    wrapped = {id(m) for m in lora_modules}
    masks = {}
    for name, module in adapter.language_model(model).named_modules():
        if id(module) not in wrapped:
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        mask = weight.detach() == 0
        if bool(mask.any()):
            masks[name] = mask.cpu()
    return masks


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def _train_split(job: Job, spec: FinetuneSpec):
    from searchskip.data.splits import load_split

    ds = load_split(job.data, spec.train_split, check_disjoint=False)
    order = list(range(len(ds)))
    random.Random(spec.seed).shuffle(order)
    if spec.train_limit is not None:
        order = order[: spec.train_limit]
    return ds.select(order)


def _eval_split(job: Job, spec: FinetuneSpec):
    from searchskip.data.splits import load_eval_split

    ds = load_eval_split(job.data, spec.eval_split)
    if spec.eval_limit is not None:
        ds = ds.select(range(min(spec.eval_limit, len(ds))))
    return ds


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _pinned(job: Job, spec: FinetuneSpec, plan: Any) -> dict[str, Any]:
    """The :data:`~searchskip.finetune.checkpoint.PINNED` fields of this run: the spec's, and the
    model, the plan's key and the LoRA settings (``None`` unless ``method: lora``)."""
    from searchskip.finetune.checkpoint import PINNED

    lora = dataclasses.asdict(spec.lora_settings) if spec.method == "lora" else None
    if lora is not None and lora["target_modules"] is not None:
        lora["target_modules"] = list(lora["target_modules"])
    special = {"model": job.model.id, "plan": plan.key() if plan is not None else None, "lora": lora}
    return {name: special[name] if name in special else getattr(spec, name) for name in PINNED}


def _optimizer_tensors(opt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The optimizer state as ``(tensors, plain values)``, keyed ``optim.<index>.<key>``."""
    import torch

    tensors, plain = {}, {}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                plain[f"optim.{index}.{key}"] = value
    return tensors, plain


def _restore_optimizer(opt: Any, tensors: dict[str, Any], plain: dict[str, Any], device: Any) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *plain.items()]:
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        if hasattr(value, "to") and key != "step":
            value = value.to(device)
        state.setdefault(int(index), {})[key] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def _console(progress: bool):
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


def run_finetune(job: Job, *, progress: bool = True, loaded: Any = None, restart: bool = False,
                 on_step: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Run the job's ``finetune:`` recipe (see the module docstring) and return what it wrote.

    ``loaded``: a :class:`~searchskip.models.LoadedModel` to train instead of loading
    ``job.model`` (its applied plan, if any, is the runtime plan); ``restart``: delete the
    checkpoints and start over; ``on_step(step, loss)``: called after every optimizer step
    (and after that step's checkpoint), e.g. to stop a run — a ``KeyboardInterrupt`` raised
    there (or by Ctrl-C) writes a checkpoint of the last finished step and propagates.
    """
    import shutil

    import torch

    from searchskip.apply import apply, applied_plan, plan_context, restore
    from searchskip.arch import get_adapter
    from searchskip.data.tensors import TrainingTensors
    from searchskip.eval.runner import score_model
    from searchskip.export.atomic import atomic_directory
    from searchskip.export.model import save_compressed

    spec = _spec(job)
    started = time.perf_counter()
    out = finetune_out(job)
    ckpt_root = out / CHECKPOINTS
    if restart and ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    console = _console(progress)

    if loaded is None:
        from searchskip.export.load import load_compressed

        if console is not None:
            with console.status("loading the model"):
                loaded = load_compressed(job.model)
        else:
            loaded = load_compressed(job.model)
    model = loaded.model
    applied = applied_plan(model)
    plan = applied.plan if applied is not None else None
    if plan is not None and plan.prune is not None:
        raise ConfigError("model: the model carries a pruning plan applied at runtime; fine-tuning needs the pruning "
                          "baked into the weights (run `searchskip export` and fine-tune its finetune.yaml)",
                          job.source_file)
    adapter = get_adapter(model)
    device = loaded.device

    # Data first (seeded, independent of the model's RNG use).
    train_ds = _train_split(job, spec)
    eval_ds = _eval_split(job, spec)
    data = TrainingTensors(train_ds, loaded.processor, loaded.template, padding_side="left")

    torch.manual_seed(spec.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    zeros: dict[str, Any] = {}
    if spec.method == "lora":
        train_modules = _inject_lora(spec, adapter, model)
        zeros = _zero_masks(adapter, model, train_modules)
        for m in train_modules:
            for name, p in m.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
    else:
        projector = adapter.projector(model)
        if projector is None:
            raise ConfigError("finetune.method: 'projector' needs a multimodal model with a vision-to-LLM "
                              f"projector, but {type(model).__name__} has none; use method: lora", job.source_file)
        train_modules = [projector]
        for p in projector.parameters():
            p.requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)

    per_epoch = data.batches_per_epoch(spec.batch_size)
    total = spec.epochs * per_epoch
    warmup = math.ceil(spec.warmup_ratio * total) if spec.warmup_ratio > 0 else 0
    pinned = _pinned(job, spec, plan)

    step, losses, seconds_before, resumed_from, acc_before = 0, [], 0.0, None, None
    latest = ckpt_io.latest(ckpt_root)
    if latest is not None:
        ckpt = ckpt_io.load(latest)
        ckpt_io.check_compatible(ckpt, pinned, job.source_file)
        with torch.no_grad():
            for name, p in trainable:
                p.copy_(ckpt.tensors[f"param.{name}"].to(p.device, p.dtype))
        _restore_optimizer(opt, ckpt.tensors, ckpt.state.get("optimizer", {}), device)
        torch.set_rng_state(ckpt.tensors["rng.torch"])
        if "rng.cuda" in ckpt.tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.tensors["rng.cuda"])
        step, losses = ckpt.step, list(ckpt.state["losses"])
        seconds_before = float(ckpt.state.get("seconds", 0.0))
        acc_before = ckpt.state.get("before")
        resumed_from = step
        if console is not None:
            console.print(f"training already finished at step {step} ({latest}); scoring and saving again "
                          "(--restart trains anew)" if step >= total else f"resuming from {latest} (step {step} of {total})")

    if acc_before is None:
        before = score_model(loaded, eval_ds, job.eval, label="scoring before", console=console)
        acc_before = {"accuracy": before.score.accuracy, "per_question_type": dict(before.score.per_question_type)}

    last_saved = step

    def save_checkpoint() -> None:
        nonlocal last_saved
        if step == last_saved and ckpt_io.latest(ckpt_root) is not None:
            return
        tensors = {f"param.{n}": p for n, p in trainable}
        opt_tensors, opt_plain = _optimizer_tensors(opt)
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if str(device).startswith("cuda"):
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        state = {"format": 1, "step": step, "epoch": step // per_epoch, "total_steps": total, "losses": losses,
                 "seconds": seconds_before + time.perf_counter() - started, "before": acc_before,
                 "optimizer": opt_plain, "recipe": pinned}
        ckpt_io.save(ckpt_root, step, tensors, state)
        last_saved = step

    model.eval()
    for m in train_modules:
        m.train()
    bar = None
    if console is not None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        bar = Progress(TextColumn(f"[bold]fine-tuning ({spec.method})"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        task = bar.add_task("train", total=total, completed=step, loss=f"{losses[-1]:.4f}" if losses else "-",
                            lr=f"{lr_at(step - 1, total, warmup, spec.lr, spec.schedule):.2e}" if step else "-")
        bar.start()
    try:
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.seed * 100_003 + epoch))
            batches = data.epoch_batches(perm, spec.batch_size)
            for b in range(offset, per_epoch):
                idx = batches[b]
                batch = data.batch(idx).to(device, model.dtype)
                lr = lr_at(step, total, warmup, spec.lr, spec.schedule)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                with plan_context(model, prompt_length=batch.prompt_length):
                    loss = model(**batch.model_inputs(), use_cache=False).loss
                loss.backward()
                if spec.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
                opt.step()
                step += 1
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(task, completed=step, loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
                if step % spec.checkpoint_every == 0 or b == per_epoch - 1:
                    save_checkpoint()
                if on_step is not None:
                    on_step(step, losses[-1])
    except KeyboardInterrupt:
        opt.zero_grad(set_to_none=True)
        save_checkpoint()
        if console is not None:
            console.print(f"interrupted: checkpoint at step {step} in {ckpt_root}; rerun the same command to resume")
        raise
    finally:
        if bar is not None:
            bar.stop()
    opt.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()

    merged = _merge_lora(adapter, model, zeros) if spec.method == "lora" else 0
    after = score_model(loaded, eval_ds, job.eval, label="scoring after", console=console)
    if plan is not None:
        restore(model)
    model_dir = out / MODEL_DIR
    extra = {"finetune": {"method": spec.method, "steps": step, "epochs": spec.epochs, "lr": spec.lr,
                          "train_split": spec.train_split, "train_questions": len(data), "recipe": job.source_file}}
    with atomic_directory(model_dir, kind="fine-tuned model") as tmp:
        save_compressed(loaded, tmp, runtime_plan=plan, prompt_template=loaded.template,
                        source_model=job.model.id, extra=extra)
    if plan is not None:
        apply(model, plan)

    metrics = {
        "method": spec.method,
        "accuracy_before": acc_before["accuracy"],
        "accuracy_after": after.score.accuracy,
        "per_question_type": {"before": acc_before["per_question_type"],
                              "after": dict(after.score.per_question_type)},
        "eval_split": spec.eval_split,
        "eval_questions": after.score.n,
        "train_split": spec.train_split,
        "train_questions": len(data),
        "epochs": spec.epochs,
        "steps": step,
        "final_loss": losses[-1] if losses else None,
        "lora_modules_merged": merged,
        "resumed_from": resumed_from,
        "runtime_plan": json.loads(plan.to_json()) if plan is not None else None,
        "model": job.model.id,
        "model_dir": str(model_dir),
        "seconds": round(seconds_before + time.perf_counter() - started, 3),
    }
    tmp_metrics = out / f".{METRICS_FILE}.tmp-{os.getpid()}"
    tmp_metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp_metrics, out / METRICS_FILE)
    return FinetuneResult(out=out, model_dir=model_dir, metrics=metrics, losses=losses, resumed_from=resumed_from)
