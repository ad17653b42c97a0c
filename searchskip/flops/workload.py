"""What one sample costs: images, image tokens, prompt text tokens, generated tokens.

A :class:`Workload` is part of a study (its FLOP budget is relative to it): it is a frozen
dataclass with a versioned :meth:`Workload.to_dict` / :meth:`Workload.from_dict`.
:func:`measure_workload` measures one from a dataset subset with the model's processor.

Positions of one sample, in order (``S`` = prompt length)::

    [0, text_before_image)                         text before the image(s)    "prompt"
    [text_before_image, +images*image_tokens)      image tokens                "prompt", visual
    [.., S)                                        the rest of the prompt text "prompt"
    [S, S + generated_tokens - 1)                  generated tokens fed back   "generated"

``S = images * image_tokens + prompt_tokens``. Several images are counted as one block of
image positions after ``text_before_image`` (exact for one image, LLaVA-1.5's case).

**Images at their own resolution** (Qwen-VL, LLaVA-NeXT): an image has a shape
(``image_shape``: Qwen-VL's patch grid ``(t, h, w)``, giving ``t * h * w / merge ** 2`` LLM
positions; LLaVA-NeXT's original size, giving its crops and tokens), so samples of one dataset
differ. Such a workload lists its **variants**: ``(weight, Workload)`` pairs,
one per image grid met, each with the means of its own samples (``weight`` = their share of
the samples). The FLOPs of the workload are the weighted mean of the variants' exact counts,
and a budget must hold for every variant as well as for the mean
(:meth:`~searchskip.flops.report.Budget.allows`). The workload's own numbers are then the
means over all samples, for display.
Token counts may be fractional (means over a dataset); every formula is a closed form that
takes them as they are (the quadratic attention term at the mean length is then an
approximation of the mean of the quadratic term, by ``var(S) * h * d`` per layer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from searchskip.errors import ConfigError, Problem
from searchskip.eval.batching import image_keys, shape_size
from searchskip.processors import encode, image_placeholder, image_token

__all__ = ["WORKLOAD_VERSION", "Workload", "measure_workload"]

WORKLOAD_VERSION = 1

Grid = tuple[int, int, int]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Workload:
    """What one sample costs (see the module docstring)."""

    prompt_tokens: float
    """Text tokens of the prompt (BOS, template, question), image tokens excluded."""
    generated_tokens: float = 1
    """Tokens generated per sample (the answer and its end-of-sequence token), >= 1."""
    images: int = 1
    """Images per sample (0 for a text-only model)."""
    image_tokens: int | None = None
    """LLM positions per image; ``None``: what the model's config gives (576 for LLaVA-1.5 at 336 px)."""
    text_before_image: float = 0
    """Prompt text tokens before the first image (only the ``non_visual`` and ``visual`` scopes depend on it)."""
    source: str | None = None
    """Where the numbers come from, in words (e.g. ``measured on 500 validation questions``)."""
    image_shape: Grid | None = None
    """What the vision tower needs to know of each image when it takes images at their own
    resolution: Qwen-VL's patch grid ``(t, h, w)``, LLaVA-NeXT's / OneVision's original
    ``(height, width)`` in pixels, InternVL's tile count ``(tiles,)``; ``None`` for
    fixed-resolution towers (the tokens come from the config)."""
    variants: tuple[tuple[float, "Workload"], ...] = ()
    """``(weight, workload)`` per image grid when samples differ (see the module doc); weights sum to 1."""

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        if self.image_shape is not None:
            shape = self.image_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) not in (1, 2, 3)
                    or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in shape)):
                raise ConfigError([Problem(None, "image_shape", "must be one to three positive integers (Qwen-VL's "
                                                                "patch grid t, h, w; LLaVA-NeXT's height, width; "
                                                                f"InternVL's tiles), but got {shape!r}")])
            object.__setattr__(self, "image_shape", tuple(shape))
        object.__setattr__(self, "variants", tuple(self._checked_variants()) if self.variants else ())

        def bad(key: str, rule: str) -> None:
            problems.append(Problem(None, key, rule))

        for key in ("prompt_tokens", "generated_tokens", "text_before_image"):
            if not _number(getattr(self, key)):
                bad(key, f"must be a number, but got {getattr(self, key)!r}")
        for key in ("images", "image_tokens"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                bad(key, f"must be an integer, but got {value!r}")
        if problems:
            raise ConfigError(problems)
        if self.prompt_tokens < 0:
            bad("prompt_tokens", f"`prompt_tokens >= 0` must hold, but got prompt_tokens={self.prompt_tokens}")
        if self.generated_tokens < 1:
            bad("generated_tokens", "`generated_tokens >= 1` must hold (generation produces at least one token), "
                                    f"but got generated_tokens={self.generated_tokens}")
        if self.images < 0:
            bad("images", f"`images >= 0` must hold, but got images={self.images}")
        if self.image_tokens is not None and self.image_tokens < 1:
            bad("image_tokens", f"`image_tokens >= 1` must hold, but got image_tokens={self.image_tokens}")
        if not 0 <= self.text_before_image <= self.prompt_tokens:
            bad("text_before_image", "`0 <= text_before_image <= prompt_tokens` must hold, but got "
                                     f"text_before_image={self.text_before_image}, prompt_tokens={self.prompt_tokens}")
        if self.images == 0 and self.prompt_tokens < 1:
            bad("prompt_tokens", "a text-only prompt needs `prompt_tokens >= 1`, but got "
                                 f"prompt_tokens={self.prompt_tokens}")
        if problems:
            raise ConfigError(problems)

    def _checked_variants(self) -> list[tuple[float, "Workload"]]:
        out = []
        for i, item in enumerate(self.variants):
            if isinstance(item, Mapping):
                item = dict(item)
                item = (item.pop("weight", None), Workload.from_dict(item))
            weight, variant = item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
            if not _number(weight) or weight <= 0 or not isinstance(variant, Workload):
                raise ConfigError([Problem(None, f"variants[{i}]", "must be a (weight > 0, workload) pair")])
            if variant.variants:
                raise ConfigError([Problem(None, f"variants[{i}]", "a variant cannot have variants of its own")])
            out.append((float(weight), variant))
        total = math.fsum(w for w, _ in out)
        if abs(total - 1) > 1e-6:
            raise ConfigError([Problem(None, "variants", f"the weights must sum to 1, but they sum to {total:g}")])
        return out

    # ---- derived --------------------------------------------------------------------
    def image_positions(self) -> int:
        """LLM positions taken by images (needs :attr:`image_tokens`; see :meth:`resolve`)."""
        if self.images and self.image_tokens is None:
            raise ValueError("image_tokens is not resolved; call Workload.resolve(geometry) first")
        return self.images * (self.image_tokens or 0)

    @property
    def prompt_length(self) -> float:
        """``S``: every prompt position (image tokens + text tokens)."""
        return self.image_positions() + self.prompt_tokens

    @property
    def decode_steps(self) -> float:
        """Forward passes after the prefill: ``generated_tokens - 1`` (the first token comes
        from the prefill's last position; the last token is never fed back)."""
        return self.generated_tokens - 1

    def resolve(self, vision: Any) -> "Workload":
        """This workload with :attr:`image_tokens` filled in from the model's vision tower
        (``vision``: a :class:`~searchskip.flops.vision.VisionCount`, ``None`` for a text-only
        model), variants included; :class:`ConfigError` when the two disagree, when a text-only
        model is given images, or when a tower that takes images at their own resolution
        gets no :attr:`image_shape`."""
        if self.variants:
            return replace(self, variants=tuple((w, v.resolve(vision)) for w, v in self.variants))
        if vision is None:
            if self.images:
                raise ConfigError(f"images: the model is text-only, so `images == 0` must hold, but got "
                                  f"images={self.images}")
            return self
        image_tokens = vision.image_tokens
        if image_tokens is None and self.images:
            if self.image_shape is None:
                raise ConfigError("image_shape: this model's vision tower takes each image at its own resolution, so "
                                  "the workload needs the image's patch grid (t, h, w) (searchskip flops: --image-size)")
            try:
                image_tokens = vision.tokens_per_image(self.image_shape)
            except ValueError as err:
                raise ConfigError([Problem(None, "image_shape", str(err))]) from None
        if self.image_tokens is not None and image_tokens is not None and self.image_tokens != image_tokens:
            source = "image grid" if vision.image_tokens is None else "config"
            raise ConfigError(f"image_tokens: the model's {source} gives {image_tokens} LLM positions per image, "
                              f"but the workload says image_tokens={self.image_tokens}")
        return self if self.image_tokens is not None else replace(self, image_tokens=image_tokens)

    def image_token_range(self) -> tuple[int, int] | None:
        """``(fewest, most)`` image tokens per image over the variants; ``None`` without variants."""
        counts = [v.image_tokens for _, v in self.variants if v.image_tokens is not None]
        return (min(counts), max(counts)) if counts else None

    def describe(self) -> str:
        def n(x: float) -> str:
            return f"{x:g}" if float(x).is_integer() else f"{x:.2f}"

        parts = []
        spread = self.image_token_range()
        if self.images and spread is not None:
            low, high = spread
            mean = math.fsum(w * (v.image_tokens or 0) for w, v in self.variants)
            parts.append(f"{self.images} image{'s' if self.images != 1 else ''} x {low}-{high} tokens "
                         f"(mean {n(mean)}, {len(self.variants)} image sizes)")
        elif self.images:
            per = "?" if self.image_tokens is None else str(self.image_tokens)
            parts.append(f"{self.images} image{'s' if self.images != 1 else ''} x {per} tokens")
        parts.append(f"{n(self.prompt_tokens)} prompt text tokens")
        parts.append(f"{n(self.generated_tokens)} generated")
        return ", ".join(parts)

    # ---- serialization ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``image_shape`` and ``variants`` only when set (so a workload of a
        fixed-resolution model reads as before)."""
        data = {"version": WORKLOAD_VERSION, **asdict(self)}
        del data["image_shape"], data["variants"]
        if self.image_shape is not None:
            data["image_shape"] = list(self.image_shape)
        if self.variants:
            data["variants"] = [{"weight": w, **variant.to_dict()} for w, variant in self.variants]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Workload":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a workload must be a mapping, but got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", WORKLOAD_VERSION)
        if version != WORKLOAD_VERSION:
            raise ConfigError(f"version: `version == {WORKLOAD_VERSION}` must hold, but got version={version!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError([Problem(None, k, f"is not a workload key (keys: {', '.join(sorted(known))})")
                               for k in unknown])
        if "prompt_tokens" not in data:
            raise ConfigError([Problem(None, "prompt_tokens", "is required")])
        return cls(**data)


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def measure_workload(loaded: Any, dataset: Any, max_new_tokens: int, *, limit: int | None = None) -> Workload:
    """The mean workload of ``dataset`` (schema rows: ``question``, ``answers``, ``image``) for
    the model of ``loaded`` (anything with ``.processor`` and ``.template``, e.g. a
    :class:`~searchskip.models.LoadedModel`).

    * prompt tokens: the prompt ``template.format(question=...)`` tokenized as the processor
      does it, with every ``<image>`` expanded; image tokens are counted apart (``images``
      and ``image_tokens``), the rest are ``prompt_tokens``;
    * generated tokens: the first reference answer tokenized (no special tokens) plus the
      end-of-sequence token, capped at ``max_new_tokens``;
    * ``text_before_image``: text tokens before the first image token;
    * for a processor that takes images at their own resolution (its image processor returns
      ``image_grid_thw``: Qwen-VL, ``image_sizes``: LLaVA-NeXT / OneVision, or ``num_patches``:
      InternVL's tiles), each row's image shape; rows of one shape make one
      variant (see the module doc), or the workload's :attr:`~Workload.image_shape` when all share one.

    The processor runs on the first row (with its image) to learn how many tokens an image
    expands to; the other rows only need the tokenizer, which is checked to give the same
    count on that first row (else the processor runs on every row).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, but got {max_new_tokens!r}")
    n_rows = len(dataset) if limit is None else min(limit, len(dataset))
    if n_rows < 1:
        raise ValueError("cannot measure a workload on an empty dataset")
    processor = loaded.processor
    tokenizer = getattr(processor, "tokenizer", processor)
    template = loaded.template
    image_id = image_token(processor)[1]
    images_per_prompt = template.count(image_placeholder(processor))

    def prompt(question: str) -> str:
        return template.format(question=question)

    first = dataset[0]
    expanded_per_image = 0
    grids: list[Grid | None] = [None] * n_rows
    if images_per_prompt:
        # images at their own resolution: each row's shape (a fixed-resolution processor reads one
        # image); first, so that an image the processor refuses is named (a DataError) before any is used
        grids = image_keys(loaded, dataset.select(range(n_rows)) if hasattr(dataset, "select") else dataset[:n_rows])
        full_out = encode(processor, [first["image"]] * images_per_prompt, [prompt(first["question"])])
        full = full_out["input_ids"][0].tolist()
        expanded_per_image = full.count(image_id) // images_per_prompt
        short = tokenizer(prompt(first["question"]))["input_ids"]
        fast = (short.count(image_id) == images_per_prompt
                and len(short) - images_per_prompt == len(full) - full.count(image_id))
    else:
        fast = True

    rows = dataset.select_columns(["question", "answers"]) if hasattr(dataset, "select_columns") else dataset
    eos = 1 if tokenizer.eos_token_id is not None else 0
    per_grid: dict[Grid | None, list[float]] = {}  # grid -> [rows, text, before, answer]
    for i in range(n_rows):
        row = rows[i]
        text = prompt(row["question"])
        if fast:
            ids = tokenizer(text)["input_ids"]
        else:
            ids = encode(processor, [dataset[i]["image"]] * images_per_prompt, [text])["input_ids"][0].tolist()
        answers = row["answers"] or [""]
        answer_ids = tokenizer(answers[0], add_special_tokens=False)["input_ids"]
        acc = per_grid.setdefault(grids[i], [0.0, 0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += len(ids) - ids.count(image_id)
        acc[2] += ids.index(image_id) if image_id in ids else 0
        acc[3] += min(len(answer_ids) + eos, max_new_tokens)

    def shape(acc: list[float], grid: Grid | None, source: str) -> Workload:
        count = acc[0]
        return Workload(prompt_tokens=acc[1] / count, generated_tokens=max(1.0, acc[3] / count),
                        images=images_per_prompt,
                        image_tokens=expanded_per_image if images_per_prompt and grid is None else None,
                        text_before_image=acc[2] / count, source=source, image_shape=grid)

    source = f"measured on {n_rows} question{'s' if n_rows != 1 else ''}"
    totals = [math.fsum(acc[k] for acc in per_grid.values()) for k in range(4)]
    if len(per_grid) == 1:
        return shape(totals, next(iter(per_grid)), source)
    variants = tuple((acc[0] / n_rows, shape(acc, grid, f"{int(acc[0])} of the {source}"))
                     for grid, acc in sorted(per_grid.items(), key=lambda item: shape_size(item[0])))
    return replace(shape(totals, None, f"{source}, {len(variants)} image sizes"), variants=variants)
