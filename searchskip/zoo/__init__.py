"""The embedded default model: a tiny LLaVA trained on easy-VQA, shipped with the package.

``embedded:NAME`` in a job's ``model.id`` loads ``searchskip/zoo/weights/NAME`` with plain
``from_pretrained`` and no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside the package: its folder and its prompt template."""

    name: str
    prompt_template: str

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.name


def _registry() -> dict[str, EmbeddedModel]:
    from searchskip.zoo.tiny_llava import PROMPT_TEMPLATE

    return {"tiny-llava-easyvqa": EmbeddedModel("tiny-llava-easyvqa", PROMPT_TEMPLATE)}


def embedded_names() -> list[str]:
    """Names accepted after ``embedded:`` in ``model.id``."""
    return sorted(_registry())


def embedded_model(name: str) -> EmbeddedModel:
    """The embedded model called ``name`` (KeyError if there is none)."""
    return _registry()[name]
