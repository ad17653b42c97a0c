"""Ops that change what a decoder layer computes, one family per module, and their registry.

Each op is registered by one visible line below; :data:`REGISTRY` refuses a second handler
under a taken name. :func:`searchskip.apply.apply` is the only code that installs them.
What each op computes, per token scope, is tabled in :mod:`searchskip.ops.scope`.

Pruning (``plan.prune``) changes weights rather than forwards; it lives in
:mod:`searchskip.ops.prune` and is called by ``apply`` directly.
"""

from __future__ import annotations

from searchskip.ops import flop_formulas  # noqa: F401  (registers the CPU SDPA FLOP formula)
from searchskip.ops.parallel import PARALLEL_ATTN_FFN_HANDLER, PARALLEL_BLOCKS_HANDLER
from searchskip.ops.registry import (
    ATTN_ALL,
    ATTN_NONE,
    ATTN_PROMPT,
    REGISTRY,
    LayerSite,
    OpHandler,
    OpRegistry,
    register,
)
from searchskip.ops.skip import (
    DROP,
    DROP_HANDLER,
    KEEP_HANDLER,
    SKIP_ATTN_HANDLER,
    SKIP_BLOCK_HANDLER,
    SKIP_FFN_HANDLER,
)

# ---- the ops: one line each ----------------------------------------------------------
register(KEEP_HANDLER)
register(SKIP_BLOCK_HANDLER)
register(SKIP_ATTN_HANDLER)
register(SKIP_FFN_HANDLER)
register(PARALLEL_ATTN_FFN_HANDLER)
register(PARALLEL_BLOCKS_HANDLER)
register(DROP_HANDLER)
# ----------------------------------------------------------------------------------------

__all__ = [
    "ATTN_ALL",
    "ATTN_NONE",
    "ATTN_PROMPT",
    "DROP",
    "REGISTRY",
    "LayerSite",
    "OpHandler",
    "OpRegistry",
    "register",
]
