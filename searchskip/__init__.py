"""searchskip: search which computations of a multimodal LLM to skip under a FLOP budget."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_compressed"]


def __getattr__(name: str) -> Any:  # lazy: `import searchskip` stays light (no torch)
    if name == "load_compressed":
        from searchskip.export.load import load_compressed

        return load_compressed
    raise AttributeError(f"module 'searchskip' has no attribute {name!r}")
