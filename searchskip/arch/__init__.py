"""Architecture adapters: where each model family keeps its parts, and how its sublayers decompose.

Use :func:`get_adapter`; never branch on a model's class elsewhere::

    from searchskip.arch import get_adapter
    adapter = get_adapter(model)            # ModelError if the family is unsupported
    layers = adapter.layers(model)
    delta = adapter.attn_delta(layers[0], h, **layer_kwargs)

Adding a family = one new module with an :class:`ArchAdapter` subclass + one ``register``
line below. A new *decoder* family (with ``text_model_types`` and, if needed,
``decoder_stack``) also works inside LLaVA with no further change; a new vision-language
wrapper is a :class:`WrapperAdapter` subclass (see ``arch/llava.py``, ``arch/qwen_vl.py``).
"""

from __future__ import annotations

from typing import Any

from searchskip.arch.base import AdapterRegistry, ArchAdapter
from searchskip.arch.gemma import GemmaAdapter
from searchskip.arch.gemma3_vl import Gemma3VLAdapter
from searchskip.arch.internvl import InternVLAdapter
from searchskip.arch.llama import LlamaAdapter
from searchskip.arch.llava import LlavaAdapter
from searchskip.arch.llava_next import LlavaNextAdapter
from searchskip.arch.llava_onevision import LlavaOnevisionAdapter
from searchskip.arch.opt import OPTAdapter
from searchskip.arch.phi3 import Phi3Adapter
from searchskip.arch.qwen_vl import Qwen2VLAdapter, Qwen3VLAdapter, Qwen25VLAdapter
from searchskip.arch.wrapper import WrapperAdapter

REGISTRY = AdapterRegistry()
"""Every supported family, in matching order."""


def register(adapter: ArchAdapter) -> ArchAdapter:
    """Add ``adapter`` to :data:`REGISTRY`; ``ValueError`` if its name is already taken."""
    return REGISTRY.register(adapter)


# ---- the supported families: one line each -------------------------------------------
register(LlavaAdapter())
register(LlavaNextAdapter())
register(LlavaOnevisionAdapter())
register(InternVLAdapter())
register(Gemma3VLAdapter())
register(Qwen25VLAdapter())
register(Qwen2VLAdapter())
register(Qwen3VLAdapter())
register(LlamaAdapter())
register(GemmaAdapter())
register(Phi3Adapter())
register(OPTAdapter())
# ----------------------------------------------------------------------------------------


def get_adapter(model: Any) -> ArchAdapter:
    """The adapter for ``model``. Raises :class:`searchskip.errors.ModelError` naming the
    model class and listing the supported families when there is none, or when the model is
    of a supported family but a variant that cannot be decomposed (OPT post-norm)."""
    return REGISTRY.get(model)


def supported_families() -> list[str]:
    """One line per registered family (what error messages list)."""
    return REGISTRY.supported()


__all__ = [
    "AdapterRegistry",
    "ArchAdapter",
    "Gemma3VLAdapter",
    "GemmaAdapter",
    "InternVLAdapter",
    "LlamaAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "OPTAdapter",
    "Phi3Adapter",
    "Qwen25VLAdapter",
    "Qwen2VLAdapter",
    "Qwen3VLAdapter",
    "REGISTRY",
    "get_adapter",
    "register",
    "supported_families",
    "WrapperAdapter",
]
