"""Prompt templates: one per model family, overridable per job.

A template is a string with ``<image>`` where the image goes and ``{question}``
where the question goes; the processor expands ``<image>`` into the image tokens.
"""

from __future__ import annotations

from searchskip.errors import ModelError

LLAVA_15 = "USER: <image>\n{question} Answer the question using a single word or phrase. ASSISTANT:"
"""LLaVA-1.5's short-answer VQA prompt (the one its paper evaluates VQAv2 with)."""

FAMILY_TEMPLATES = {"llava": LLAVA_15}
"""``config.model_type`` -> template."""


def resolve_template(model_type: str, override: str | None = None, stored: str | None = None) -> str:
    """The template for a model: the job's override, else the one stored with the model (an
    embedded model's, or the one an export was scored with), else its family's."""
    if override:
        return override
    if stored:
        return stored
    try:
        return FAMILY_TEMPLATES[model_type]
    except KeyError:
        raise ModelError(
            f"no prompt template is known for model_type '{model_type}' (known: {', '.join(sorted(FAMILY_TEMPLATES))}); "
            "set model.prompt_template in the job, with <image> and {question} in it"
        ) from None
