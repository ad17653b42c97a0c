"""The op registry: op name -> handler that builds the replacement forwards of decoder layers.

Like peft's method registry, every op is added by one visible ``register(...)`` line (in
``searchskip/ops/__init__.py``) and a second handler under a taken name is refused. A
handler is a frozen :class:`OpHandler`; it never holds model state: :meth:`OpHandler.build`
returns the new forwards, and :func:`searchskip.apply.apply` installs (and later removes) them.

A new op = a handler in a module of its family (``skip.py``, ``parallel.py``, ...) + one
``register`` line. The conformance suite (``tests/test_ops_conformance.py``) is parametrised
from :data:`REGISTRY`, so a registered op is tested on every family with no further change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from searchskip.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from searchskip.arch.base import ArchAdapter
    from searchskip.ops.scope import PlanRuntime
    from searchskip.plan import LayerOp

__all__ = [
    "ATTN_ALL",
    "ATTN_NONE",
    "ATTN_PROMPT",
    "ATTN_SUBSET",
    "AttentionUse",
    "LayerSite",
    "OpHandler",
    "OpRegistry",
    "REGISTRY",
    "register",
]

AttentionUse = Literal["all", "subset", "prompt", "none"]
ATTN_ALL: AttentionUse = "all"
"""The attention projects K/V for every position: its cache slot grows with every token."""
ATTN_PROMPT: AttentionUse = "prompt"
"""K/V are projected for (a prefix of) the prompt positions only: the slot stops within the prompt."""
ATTN_SUBSET: AttentionUse = "subset"
"""K/V for every position the layer computes, but token ops dropped some prompt positions there
(:mod:`searchskip.ops.tokens`): the slot is shorter than the sequence, so it never takes slot 0."""
ATTN_NONE: AttentionUse = "none"
"""The attention never runs: it needs no cache slot."""

Forward = Callable[..., Any]


@dataclass(frozen=True)
class LayerSite:
    """Where an op is applied: decoder layer ``index`` of a model, with what the handler may use."""

    index: int
    op: "LayerOp"
    """The layer's op, scope filled in (``Plan.op_for``)."""
    layers: "nn.ModuleList"
    adapter: "ArchAdapter"
    runtime: "PlanRuntime"
    """Token positions of the current forward call (see :mod:`searchskip.ops.scope`)."""
    injected: frozenset[int] = frozenset()
    """Layers after which the model adds features by index (:meth:`ArchAdapter.injected_layers`)."""

    @property
    def layer(self) -> "nn.Module":
        return self.layers[self.index]


@dataclass(frozen=True)
class OpHandler:
    """How one op changes a model.

    ``build(site)`` returns ``{layer index: new forward}`` for every layer the op governs (an
    op may govern more than its own layer: ``parallel_blocks`` also replaces layer ``i + 1``);
    a new forward has the decoder layer's signature ``(hidden_states, **layer_kwargs) ->
    hidden_states``. An empty dict leaves the layer as it is.

    ``attention_use(op)`` says, per governed layer (``{offset from site.index: use}``), for
    which positions the layer's attention projects K/V (:data:`ATTN_ALL`, :data:`ATTN_PROMPT`,
    :data:`ATTN_NONE`); apply assigns cache slots from it. Offsets left out mean ``ATTN_ALL``.
    """

    name: str
    build: Callable[[LayerSite], dict[int, Forward]]
    attention_use: Callable[["LayerOp"], dict[int, AttentionUse]]
    scoped: bool = True
    """Whether the op's ``scope`` changes what it does (False for ``keep`` and ``drop``)."""


class OpRegistry:
    """Ordered op name -> :class:`OpHandler`; refuses a second handler under a taken name."""

    def __init__(self) -> None:
        self._handlers: dict[str, OpHandler] = {}

    def register(self, handler: OpHandler) -> OpHandler:
        """Add ``handler``; ``ValueError`` if its name is empty or already registered."""
        if not isinstance(handler, OpHandler):
            raise TypeError(f"expected an OpHandler, got {type(handler).__name__}")
        if not handler.name:
            raise ValueError("an OpHandler needs a name")
        if handler.name in self._handlers:
            raise ValueError(f"an op named '{handler.name}' is already registered; refusing to replace it")
        self._handlers[handler.name] = handler
        return handler

    def get(self, name: str) -> OpHandler:
        """The handler of op ``name``; :class:`ConfigError` listing the registered ops if unknown."""
        try:
            return self._handlers[name]
        except KeyError:
            raise ConfigError(f"op must be one of {', '.join(map(repr, self._handlers))}, but got {name!r}") from None

    def names(self) -> list[str]:
        return list(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[OpHandler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)


REGISTRY = OpRegistry()
"""Every op :func:`searchskip.apply.apply` knows (filled by ``searchskip/ops/__init__.py``)."""


def register(handler: OpHandler) -> OpHandler:
    """Add ``handler`` to :data:`REGISTRY`; ``ValueError`` if its name is taken."""
    return REGISTRY.register(handler)
