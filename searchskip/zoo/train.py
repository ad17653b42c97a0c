"""Train the embedded tiny LLaVA on easy-VQA's train images (validation images held out).

Reproduce the shipped weights with::

    python -m searchskip.zoo.train --out searchskip/zoo/weights/tiny-llava-easyvqa

Two stages, both seeded:

1. *Vision warm-up*: the CLIP tower learns each training image's shape and colour
   (labels mined from the training questions) through two linear heads on its
   pooled output. End-to-end training alone learns shape very slowly because the
   gradient has to pass through an untrained decoder first.
   Random flips augment the images in both stages (no easy-VQA answer depends on
   orientation); without them the tower's shape accuracy on held-out images stalls.
2. *End to end*: every parameter trains on the answer tokens (answer word and
   ``</s>``) of every training question, with the warm-up heads kept as an auxiliary
   loss. The warm-up heads are not part of the saved model.

Only easy-VQA's train split minus the carved validation images is used, so the
validation split the search scores on stays unseen. Time is reported in CPU
seconds (``time.process_time``) because these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from searchskip.data.tensors import TrainingTensors
from searchskip.finetune.trainer import lr_at
from searchskip.zoo.tiny_llava import (
    PROMPT_TEMPLATE,
    TinyLlavaShape,
    build_config,
    build_model,
    build_processor,
    build_tokenizer,
    vocabulary,
)

LR_FLOOR = 0.05
"""The zoo's cosine decay ends at this fraction of the peak learning rate (:func:`~searchskip.finetune.trainer.lr_at`)."""

COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def mine_image_labels(questions, answers, image_ids) -> dict[str, tuple[int, int]]:
    """(shape, colour) class indices per image, read off the questions that state them."""
    shape: dict[str, int] = {}
    colour: dict[str, int] = {}
    for q, ans, img in zip(questions, answers, image_ids):
        words = q.replace("?", " ").split()
        if ans in SHAPES:
            shape[img] = SHAPES.index(ans)
        elif ans in COLOURS:
            colour[img] = COLOURS.index(ans)
        elif ans in ("yes", "no"):
            positive = (ans == "yes") != ("not" in words or "no" in words)
            if positive:
                for w in words:
                    if w in SHAPES:
                        shape[img] = SHAPES.index(w)
                    if w in COLOURS:
                        colour[img] = COLOURS.index(w)
    return {img: (shape.get(img, -100), colour.get(img, -100)) for img in set(image_ids)}


def _flip(pixels, gen):
    """Random horizontal and vertical flips: easy-VQA answers (shape, colour) do not change under them."""
    import torch

    n = len(pixels)
    for dim in (-1, -2):
        flip = (torch.rand(n, generator=gen) < 0.5)[:, None, None, None]
        pixels = torch.where(flip, pixels.flip(dim), pixels)
    return pixels


def _answer_accuracy(model, data: TrainingTensors, batch_size: int = 256) -> float:
    """Teacher-forced exact match of the first answer token (a fast proxy for VQA accuracy)."""
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            b = data.batch(idx)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values).logits
            pred = logits[torch.arange(len(idx)), b.answer_pos - 1].argmax(-1)
            right += int((pred == data.answer_id[idx]).sum())
    model.train()
    return right / len(data)


def train(out: Path, seed: int = 0, epochs: int = 8, warmup_epochs: int = 60, batch_size: int = 64,
          lr: float = 1e-3, threads: int = 2, log=print) -> dict:
    """Train the embedded model and save it (with tokenizer and processor) to ``out``."""
    import torch
    import torch.nn.functional as F

    from searchskip.config.job import DataSpec
    from searchskip.data.splits import load_split

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    spec = DataSpec()
    t_cpu, t_wall = time.process_time(), time.time()
    train_ds = load_split(spec, "train")
    val_ds = load_split(spec, "validation")
    shape = TinyLlavaShape()
    from easy_vqa import get_answers

    tokenizer = build_tokenizer(vocabulary(list(train_ds["question"]) + list(get_answers())))
    processor = build_processor(tokenizer, shape)
    model = build_model(build_config(tokenizer, shape), seed=seed)
    # Right padding, no special tokens: how the shipped weights were trained.
    tensors = dict(n_image_tokens=shape.image_tokens, padding_side="right", add_special_tokens=False)
    data = TrainingTensors(train_ds, processor, PROMPT_TEMPLATE, **tensors)
    val = TrainingTensors(val_ds, processor, PROMPT_TEMPLATE, **tensors)
    labels = mine_image_labels(list(train_ds["question"]), [a[0] for a in train_ds["answers"]], list(train_ds["image_id"]))
    image_labels = torch.tensor([labels[img] for img in data.image_ids])
    log(f"data: {len(data)} train questions on {len(data.image_ids)} images, {len(val)} validation questions; "
        f"labels known for shape {int((image_labels[:, 0] >= 0).sum())}, colour {int((image_labels[:, 1] >= 0).sum())}")

    vision = model.model.vision_tower
    width = shape.vision_width
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(width, len(SHAPES)), "colour": torch.nn.Linear(width, len(COLOURS))})

    def aux_loss(pixels, lab):
        pooled = vision(pixel_values=pixels).last_hidden_state.mean(1)
        return (F.cross_entropy(heads["shape"](pooled), lab[:, 0], ignore_index=-100)
                + F.cross_entropy(heads["colour"](pooled), lab[:, 1], ignore_index=-100))

    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    # Stage 1: vision warm-up.
    opt = torch.optim.AdamW(list(vision.parameters()) + list(heads.parameters()), lr=lr, weight_decay=0.01)
    n_img = len(data.image_ids)
    steps = warmup_epochs * math.ceil(n_img / batch_size)
    step = 0
    for epoch in range(warmup_epochs):
        perm = torch.randperm(n_img, generator=gen)
        for start in range(0, n_img, batch_size):
            idx = perm[start : start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, steps // 10, lr, floor=LR_FLOOR)
            loss = aux_loss(_flip(data.pixels[idx], gen), image_labels[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
        if (epoch + 1) % 10 == 0 or epoch + 1 == warmup_epochs:
            log(f"warm-up epoch {epoch + 1}/{warmup_epochs}: loss {loss.item():.3f} cpu {time.process_time() - t_cpu:.0f}s")

    # Stage 2: end to end.
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    per_epoch = math.ceil(len(data) / batch_size)
    steps, step = epochs * per_epoch, 0
    best = -1.0
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        running = 0.0
        for start in range(0, len(data), batch_size):
            idx = perm[start : start + batch_size]
            b = data.batch(idx)
            ids, att, lab, pix = b.input_ids, b.attention_mask, b.labels, _flip(b.pixel_values, gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, per_epoch // 2, lr, floor=LR_FLOOR)
            output = model(input_ids=ids, attention_mask=att, pixel_values=pix, labels=lab)
            loss = output.loss + 0.3 * aux_loss(pix, image_labels[data.sample_image[idx]])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            running += output.loss.item()
            step += 1
        acc = _answer_accuracy(model, val)
        record = {"epoch": epoch + 1, "loss": running / per_epoch, "val_answer_acc": acc,
                  "cpu_s": time.process_time() - t_cpu, "wall_s": time.time() - t_wall}
        history.append(record)
        log(json.dumps(record))
        if acc >= best:
            best = acc
            save(model, processor, out)
    summary = {"seed": seed, "epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch_size, "lr": lr,
               "threads": threads, "best_val_answer_acc": best, "cpu_s": time.process_time() - t_cpu,
               "wall_s": time.time() - t_wall, "history": history}
    (out / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


def save(model, processor, out: Path) -> None:
    """Save weights (safetensors), config, tokenizer and processor, replacing ``out`` atomically."""
    import shutil
    import tempfile

    from searchskip.export.layout import release_names

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    release_names(model, tmp)  # as llava-hf's checkpoints name the tower's tensors (vLLM reads those)
    processor.save_pretrained(tmp)
    if out.exists():
        keep = out / "training.json"
        if keep.exists():
            shutil.copy2(keep, tmp / "training.json")
        shutil.rmtree(out)
    tmp.rename(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup-epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    summary = train(a.out, a.seed, a.epochs, a.warmup_epochs, a.batch_size, a.lr, a.threads)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))


if __name__ == "__main__":
    main()
