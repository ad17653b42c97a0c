"""A VQA split turned into training tensors once: preprocessed images, tokenised prompt + answer.

Used by the embedded model's training (:mod:`searchskip.zoo.train`) and by ``searchskip
finetune`` (:mod:`searchskip.finetune`)::

    data = TrainingTensors(ds, loaded.processor, loaded.template)     # left padding
    b = data.batch(torch.arange(16))
    with plan_context(model, prompt_length=b.prompt_length):
        loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                     pixel_values=b.pixel_values, labels=b.labels, use_cache=False).loss

Each row is ``prompt + answer + eos``: the prompt is the model's template filled with the
question (``<image>`` expanded to the model's number of image tokens, as the processor
does), the answer is the first reference answer (``answers[0]``), tokenised on its own
without special tokens. ``labels`` hold the answer and eos tokens and ``-100`` elsewhere,
so the LM loss covers the answer only (transformers shifts the labels inside the model).

**Padding.** ``padding_side="left"`` (the default) pads each *prompt* on the left, so that
in every batch all prompts end at the same column ``prompt_length`` (the answers follow,
right-padded). That is the layout of batched generation (:mod:`searchskip.eval.generate`
pads left too), and it is what a plan's token scopes need: a teacher-forced forward with a
plan active declares one prompt length for the whole batch
(:func:`searchskip.apply.plan_context`). ``position_ids`` count from the first real token
of each row, as ``generate`` does for left-padded inputs. ``padding_side="right"`` puts
every row at column 0 (the embedded model was trained that way; ``prompt_length`` is then
only meaningful for a batch whose prompts have one length).

Images are preprocessed once per unique ``image_id`` and shared by the questions on them.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

__all__ = ["Batch", "TrainingTensors"]


class Batch(NamedTuple):
    """One batch of :class:`TrainingTensors`, trimmed to the columns its rows use."""

    input_ids: Any
    attention_mask: Any
    labels: Any
    pixel_values: Any
    position_ids: Any
    prompt_length: int
    """Column where every prompt of the batch ends (left padding); the longest prompt (right padding)."""
    answer_pos: Any
    """Per row: column of the first answer token (its logits are read at ``answer_pos - 1``)."""

    def to(self, device: Any, dtype: Any = None) -> "Batch":
        """The batch with its tensors on ``device`` (``pixel_values`` also cast to ``dtype``)."""
        pixels = self.pixel_values.to(device)
        if dtype is not None:
            pixels = pixels.to(dtype)
        return self._replace(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                             labels=self.labels.to(device), pixel_values=pixels,
                             position_ids=self.position_ids.to(device))


class TrainingTensors:
    """A schema VQA split as tensors: ``pixels`` (one row per unique image), ``input_ids``,
    ``attention``, ``labels`` (full width), and per question ``sample_image`` (its row in
    ``pixels``), ``prompt_len``, ``answer_id`` (first answer token). See the module docstring."""

    def __init__(self, ds, processor, template: str, *, n_image_tokens: int | None = None,
                 padding_side: Literal["left", "right"] = "left", add_special_tokens: bool = True):
        """``ds``: a schema dataset (``image``, ``image_id``, ``question``, ``answers``);
        ``processor``: the model's processor (its ``tokenizer`` and ``image_processor``);
        ``template``: the prompt template (``<image>`` and ``{question}``);
        ``n_image_tokens``: tokens one ``<image>`` expands to (``None``: ask the processor);
        ``add_special_tokens``: whether the prompt gets the tokenizer's special tokens (BOS),
        as the processor adds them when the model answers."""
        import torch

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', but got {padding_side!r}")
        tokenizer = processor.tokenizer
        self.padding_side = padding_side
        image_ids = list(ds["image_id"])
        first: dict[str, int] = {}
        for i, img in enumerate(image_ids):
            first.setdefault(img, i)
        order = sorted(first)
        self.image_ids = order
        self.image_row = {img: r for r, img in enumerate(order)}
        pil = list(ds.select([first[img] for img in order])["image"])
        self.pixels = processor.image_processor(pil, return_tensors="pt")["pixel_values"]
        self.sample_image = torch.tensor([self.image_row[i] for i in image_ids])

        image_token = getattr(processor, "image_token", None) or "<image>"
        if n_image_tokens is None:
            n_image_tokens = _count_image_tokens(processor, template, image_token, pil[0])
        expanded = template.replace("<image>", image_token * n_image_tokens)
        prompts = tokenizer([expanded.format(question=q) for q in list(ds["question"])],
                            add_special_tokens=add_special_tokens)["input_ids"]
        answers = tokenizer([a[0] for a in list(ds["answers"])], add_special_tokens=False)["input_ids"]
        tails = [a + [tokenizer.eos_token_id] for a in answers]

        n = len(prompts)
        p_width = max(map(len, prompts))
        left = padding_side == "left"
        width = (p_width + max(map(len, tails))) if left else max(len(p) + len(t) for p, t in zip(prompts, tails))
        self.input_ids = torch.full((n, width), tokenizer.pad_token_id)
        self.labels = torch.full((n, width), -100)
        self.attention = torch.zeros((n, width), dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompts, tails)):
            start = p_width - len(p) if left else 0
            mid, end = start + len(p), start + len(p) + len(t)
            self.input_ids[i, start:end] = torch.tensor(p + t)
            self.labels[i, mid:end] = torch.tensor(t)
            self.attention[i, start:end] = 1
        self.prompt_len = torch.tensor([len(p) for p in prompts])
        self.tail_len = torch.tensor([len(t) for t in tails])
        self.prompt_width = p_width
        self.answer_id = torch.tensor([a[0] if a else tokenizer.eos_token_id for a in answers])

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, idx) -> Batch:
        """The rows ``idx`` (a 1-d index tensor), trimmed to the columns they use."""
        if self.padding_side == "left":
            start = self.prompt_width - int(self.prompt_len[idx].max())
            prompt_end = self.prompt_width
            end = prompt_end + int(self.tail_len[idx].max())
            answer_pos = self.prompt_len.new_full((len(idx),), prompt_end - start)
        else:
            start = 0
            end = int((self.prompt_len[idx] + self.tail_len[idx]).max())
            prompt_end = int(self.prompt_len[idx].max())
            answer_pos = self.prompt_len[idx]
        attention = self.attention[idx, start:end]
        return Batch(
            input_ids=self.input_ids[idx, start:end],
            attention_mask=attention,
            labels=self.labels[idx, start:end],
            pixel_values=self.pixels[self.sample_image[idx]],
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            prompt_length=prompt_end - start,
            answer_pos=answer_pos,
        )


def _count_image_tokens(processor, template: str, image_token: str, image) -> int:
    """How many tokens the processor expands one ``<image>`` of ``template`` into."""
    text = template.replace("<image>", image_token).format(question="?")
    ids = processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0]
    token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    return max(1, int((ids == token_id).sum()))
