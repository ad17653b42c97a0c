"""A VQA split turned into training tensors once: preprocessed images, tokenised prompt + answer.

Used by the embedded model's training (:mod:`searchskip.zoo.train`) and by ``searchskip
finetune`` (:mod:`searchskip.finetune`)::

    data = TrainingTensors(ds, loaded.processor, loaded.template)     # left padding
    b = data.batch(torch.arange(16))
    with plan_context(model, prompt_length=b.prompt_length):
        loss = model(**b.model_inputs(), use_cache=False).loss

Each row is ``prompt + answer + eos``: the prompt is the model's template filled with the
question (the image placeholder expanded to the image's number of tokens, as the processor
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

**Images at their own resolution** (LLaVA-NeXT: the image processor returns ``image_sizes``,
each image's crops padded to the most any image has, and its placeholder expands to the count
the processor gives its size; the batch holds its rows' ``image_sizes``). Qwen-VL (the image
processor returns ``image_grid_thw``):
each image keeps its patches and grid, its placeholder expands to ``t * h * w / merge ** 2``
tokens, so prompts differ in length with their images; a batch holds the patches of its rows'
images, their ``image_grid_thw`` and ``mm_token_type_ids``, and no ``position_ids`` (the model
computes its 3-D M-RoPE positions from those, left padding included). InternVL (the image
processor returns ``num_patches``): each image keeps its tiles, a batch holds its rows' tiles.
A placeholder becomes what the processor puts in its place for that image shape (its image
tokens and any frame around them, InternVL's ``<img>`` ... ``</img>``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from searchskip.processors import encode, expanded_image_text, image_inputs, image_placeholder
from searchskip.processors import image_token as image_token_of

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
    image_inputs: dict = {}
    """Further image inputs of the model's forward (Qwen-VL: ``image_grid_thw``, ``mm_token_type_ids``)."""

    def to(self, device: Any, dtype: Any = None) -> "Batch":
        """The batch with its tensors on ``device`` (``pixel_values`` also cast to ``dtype``)."""
        pixels = self.pixel_values.to(device)
        if dtype is not None:
            pixels = pixels.to(dtype)
        return self._replace(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                             labels=self.labels.to(device), pixel_values=pixels,
                             position_ids=None if self.position_ids is None else self.position_ids.to(device),
                             image_inputs={k: v.to(device) for k, v in self.image_inputs.items()})

    def model_inputs(self) -> dict:
        """Keyword arguments of the model's forward for this batch (labels included)."""
        out = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=self.pixel_values,
                   labels=self.labels, **self.image_inputs)
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out


class TrainingTensors:
    """A schema VQA split as tensors: ``pixels`` (one row per unique image), ``input_ids``,
    ``attention``, ``labels`` (full width), and per question ``sample_image`` (its row in
    ``pixels``), ``prompt_len``, ``answer_id`` (first answer token). See the module docstring."""

    def __init__(self, ds, processor, template: str, *, n_image_tokens: int | None = None,
                 padding_side: Literal["left", "right"] = "left", add_special_tokens: bool = True):
        """``ds``: a schema dataset (``image``, ``image_id``, ``question``, ``answers``);
        ``processor``: the model's processor (its ``tokenizer`` and ``image_processor``);
        ``template``: the prompt template (the image placeholder and ``{question}``);
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
        images = image_inputs(processor, pil)
        self.pixels = images["pixel_values"]
        self.sample_image = torch.tensor([self.image_row[i] for i in image_ids])

        placeholder = image_placeholder(processor)
        image_token, self.image_token_id = image_token_of(processor)
        self.type_ids_key = _type_ids_key(processor, pil[0], placeholder)
        """The input marking image tokens where the model reads one (Qwen-VL's ``mm_token_type_ids``,
        Gemma 3's ``token_type_ids``: its masks let an image's tokens see each other), else ``None``."""
        self.grids = images.get("image_grid_thw")
        """Per unique image: its patch grid (Qwen-VL), else ``None``."""
        self.sizes = images.get("image_sizes")
        """Per unique image: its original size (LLaVA-NeXT's anyres), else ``None``."""
        tiles = images.get("num_patches")
        self.pixel_rows = (self.grids.prod(-1) if self.grids is not None
                           else torch.as_tensor(tiles).reshape(-1) if tiles is not None else None)
        """Per unique image: its rows of ``pixels`` when images have different numbers of them
        (Qwen-VL's patches, InternVL's tiles); ``None`` when ``pixels`` has a row per image."""
        if self.pixel_rows is not None:
            self.patch_start = torch.cat([self.pixel_rows.new_zeros(1), self.pixel_rows.cumsum(0)[:-1]])
        # what one placeholder becomes, asked of the processor once per image shape
        if self.grids is not None or self.sizes is not None:
            keys = [tuple(k) for k in (self.grids if self.grids is not None else self.sizes).tolist()]
        elif self.pixel_rows is not None:
            keys = [(int(n),) for n in self.pixel_rows.tolist()]
        else:
            keys = [None] * len(pil)
        expansion: dict = {}
        for image, key in zip(pil, keys):
            if key not in expansion:
                text = None if (key is None and n_image_tokens is not None) else expanded_image_text(processor, image)
                if text is None:
                    count = n_image_tokens or _count_image_tokens(processor, template, placeholder, image)
                    text = image_token * count
                expansion[key] = text
        per_question = [expansion[keys[self.image_row[i]]] for i in image_ids]
        self.image_tokens = [text.count(image_token) for text in per_question]
        """Per question: the image tokens its prompt holds."""
        if placeholder not in template:
            placeholder = "<image>"
        prompts = tokenizer([template.replace(placeholder, text).format(question=q)
                             for q, text in zip(list(ds["question"]), per_question)],
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

    def epoch_batches(self, order, batch_size: int) -> list:
        """The questions of ``order`` (a 1-d index tensor, e.g. an epoch's permutation) in batches
        of at most ``batch_size``: consecutive chunks, except that questions whose images give
        different numbers of image tokens never share a batch (``visual_tokens`` needs one count
        per batch): each count's questions are chunked in ``order``, and the batches follow the
        position of their first question in ``order``. :meth:`batches_per_epoch` of them."""
        import torch

        if len(set(self.image_tokens)) <= 1:
            return list(order.split(batch_size))
        groups: dict[int, list[int]] = {}
        for i in order.tolist():
            groups.setdefault(self.image_tokens[i], []).append(i)
        position = {i: p for p, i in enumerate(order.tolist())}
        batches = [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]
        return [torch.tensor(b) for b in sorted(batches, key=lambda b: position[b[0]])]

    def batches_per_epoch(self, batch_size: int) -> int:
        """How many batches :meth:`epoch_batches` makes of all the questions (any order)."""
        counts: dict[int, int] = {}
        for n in self.image_tokens:
            counts[n] = counts.get(n, 0) + 1
        return sum(-(-c // batch_size) for c in counts.values())

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
        input_ids = self.input_ids[idx, start:end]
        rows = self.sample_image[idx]
        if self.pixel_rows is None:
            pixels = self.pixels[rows]
        else:  # each row's own patches (Qwen-VL) or tiles (InternVL), in row order
            import torch

            pixels = torch.cat([self.pixels[int(s):int(s) + int(n)]
                                for s, n in zip(self.patch_start[rows], self.pixel_rows[rows])])
        image_inputs = {} if self.type_ids_key is None else {self.type_ids_key: (input_ids == self.image_token_id).long()}
        if self.grids is None:
            if self.sizes is not None:
                image_inputs["image_sizes"] = self.sizes[rows]
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        else:  # with their grids; the model computes M-RoPE
            image_inputs["image_grid_thw"] = self.grids[rows]
            position_ids = None
        return Batch(
            input_ids=input_ids,
            attention_mask=attention,
            labels=self.labels[idx, start:end],
            pixel_values=pixels,
            position_ids=position_ids,
            prompt_length=prompt_end - start,
            answer_pos=answer_pos,
            image_inputs=image_inputs,
        )


def _count_image_tokens(processor, template: str, placeholder: str, image) -> int:
    """How many image tokens the processor expands one ``<image>`` of ``template`` into."""
    text = template.replace("<image>", placeholder).format(question="?")
    ids = encode(processor, [image], [text])["input_ids"][0]
    return max(1, int((ids == image_token_of(processor)[1]).sum()))


def _type_ids_key(processor, image, placeholder: str) -> str | None:
    """Which of ``token_type_ids`` / ``mm_token_type_ids`` the processor returns beside the ids
    (a mark of its image tokens the model reads), if either."""
    out = encode(processor, [image], [placeholder])
    return next((key for key in ("mm_token_type_ids", "token_type_ids") if key in out), None)
