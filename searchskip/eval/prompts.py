"""Prompt templates: one per model family, overridable per job.

A template is a string with the processor's image placeholder where the image goes
(``<image>`` for LLaVA, ``<|vision_start|><|image_pad|><|vision_end|>`` for Qwen-VL,
``<IMG_CONTEXT>`` for InternVL, ``<start_of_image>`` for Gemma 3) and
``{question}`` where the question goes; the processor expands the placeholder into the
image tokens.
"""

from __future__ import annotations

import string

from searchskip.errors import ModelError

LLAVA_15 = "USER: <image>\n{question} Answer the question using a single word or phrase. ASSISTANT:"
"""LLaVA-1.5's short-answer VQA prompt (the one its paper evaluates VQAv2 with)."""

QWEN_VL = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
           "<|vision_start|><|image_pad|><|vision_end|>{question}\nAnswer the question using a single word or phrase."
           "<|im_end|>\n<|im_start|>assistant\n")
"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL's chat format with the short-answer VQA instruction (lmms-eval's VQAv2 prompt)."""

ONEVISION = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             "<image>\n{question}\nAnswer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n")
"""LLaVA-OneVision's Qwen2 chat format (lmms-eval's ``qwen_1_5`` conversation) with the short-answer VQA instruction."""

INTERNVL = ("<|im_start|>user\n<IMG_CONTEXT>\n{question}\nAnswer the question using a single word or phrase."
            "<|im_end|>\n<|im_start|>assistant\n")
"""InternVL (-hf)'s chat format: its processor expands ``<IMG_CONTEXT>`` into ``<img>``, the image's
tokens (256 a tile) and ``</img>``."""

GEMMA3 = ("<start_of_turn>user\n<start_of_image>{question}\nAnswer the question using a single word or phrase."
          "<end_of_turn>\n<start_of_turn>model\n")
"""Gemma 3's chat format: its processor expands ``<start_of_image>`` into the image's 256 tokens,
framed by ``<start_of_image>`` and ``<end_of_image>`` and blank lines."""

LLAVA_15_VQA = "USER: <image>\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"
"""LLaVA-1.5's VQA prompt as LLaVA's own evaluation and lmms-eval's VQAv2 task give it to llava-hf
models: the instruction on its own line after the question."""

NAMED_TEMPLATES = {"llava-1.5-vqa": LLAVA_15_VQA, "llava-1.5": LLAVA_15, "qwen-vl-vqa": QWEN_VL,
                   "llava-onevision-vqa": ONEVISION, "internvl-vqa": INTERNVL, "gemma3-vqa": GEMMA3}
"""Names a job's ``model.prompt_template`` may give instead of a template."""

FAMILY_TEMPLATES = {"llava": LLAVA_15, "llava_next": LLAVA_15, "llava_onevision": ONEVISION, "internvl": INTERNVL,
                    "gemma3": GEMMA3, "qwen2_vl": QWEN_VL, "qwen2_5_vl": QWEN_VL, "qwen3_vl": QWEN_VL}
"""``config.model_type`` -> template."""


def resolve_template(model_type: str, override: str | None = None, stored: str | None = None) -> str:
    """The template for a model: the job's override, else the one stored with the model (an
    embedded model's, or the one an export was scored with), else its family's."""
    if override:
        return NAMED_TEMPLATES.get(override, override)
    if stored:
        return stored
    try:
        return FAMILY_TEMPLATES[model_type]
    except KeyError:
        raise ModelError(
            f"no prompt template is known for model_type '{model_type}' (known: {', '.join(sorted(FAMILY_TEMPLATES))}); "
            "set model.prompt_template in the job, with the image placeholder and {question} in it"
        ) from None


def template_problem(template: str) -> str | None:
    """The rule ``template`` breaks as a format string, or ``None``: it must hold ``{question}``
    and no other ``{...}`` field (literal braces are written ``{{`` and ``}}``); or be one of
    :data:`NAMED_TEMPLATES`."""
    if template in NAMED_TEMPLATES:
        return None
    if "{" not in template and "}" not in template and " " not in template.strip():
        return (f"must be a named template ({', '.join(NAMED_TEMPLATES)}) or a format string with `{{question}}` "
                "where the question goes")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:  # a lone '{' or '}'
        return f"must be a format string with `{{question}}` as its only field ({err}; write `{{{{` and `}}}}` for braces)"
    others = sorted({f"{{{f}}}" for f in fields if f != "question"})
    if others:
        return (f"may hold `{{question}}` as its only field, not {', '.join(others)} "
                "(write `{{` and `}}` for literal braces)")
    if "question" not in fields:
        return "must contain `{question}` (where the question is inserted)"
    return None


def placeholder_problem(template: str, placeholder: str) -> str | None:
    """The rule ``template`` breaks for a model whose processor expands ``placeholder`` into one
    image's tokens, or ``None``: a VQA prompt holds the placeholder exactly once (one image per
    question), outside the question."""
    prompt = template.format(question="")
    count = prompt.count(placeholder)
    if count != 1:
        return (f"must contain the model's image placeholder `{placeholder}` exactly once (where the image goes; "
                f"its processor expands it into the image's tokens), but it holds it {count} times")
    return None
