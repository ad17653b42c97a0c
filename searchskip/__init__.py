"""searchskip: search which computations of a multimodal LLM to skip under a FLOP budget."""

__version__ = "0.1.0"
