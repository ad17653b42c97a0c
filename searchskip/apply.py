"""``apply(model, plan)`` — the only entry that changes a model — and its exact undo.

::

    from searchskip.apply import apply, plan_context

    applied = apply(model, plan)              # in place; returns an AppliedPlan
    model.generate(**inputs)                  # runs the plan
    applied.restore()                         # original forwards, cache slots, weights

    with apply(model, plan):                  # the same, restored on exit
        ...

    with apply(model, plan), plan_context(model, prompt_length=n):
        model(prompt_and_answer_ids)          # a no-cache recompute must declare the prompt length

What ``apply`` does, in this order (everything is undone by :meth:`AppliedPlan.restore`):

1. checks the plan against the model (:meth:`Plan.validate`, a :class:`ConfigError` naming
   the layer count) and refuses a model that already carries a plan;
2. ``plan.prune``: calls :func:`searchskip.ops.prune.apply_pruning` with ``calibration`` on
   the dense model (weights change; its undo restores them exactly);
3. replaces the ``forward`` of the planned decoder layers' *instances* with the forwards
   the registered op handlers build (:mod:`searchskip.ops`); the layer modules stay in
   place, so ``output_hidden_states`` hooks still fire (one hidden state per layer); layers
   in ``plan.drop`` pass their input through (their physical removal is the export's job);
   ``plan.visual_tokens`` / ``plan.early_exit`` then wrap the forwards of the layers they
   govern (:mod:`searchskip.ops.tokens`);
4. renumbers the KV-cache slots (``attention.layer_idx``) of the attentions that still run,
   see :func:`assign_cache_slots`;
5. installs the :class:`~searchskip.ops.scope.PlanRuntime` hooks on the top-level model
   (token positions of each call, see :mod:`searchskip.ops.scope`) and wraps the instance's
   ``generate`` so that it declares its input length as the prompt length (token scopes
   then also hold for ``generate(use_cache=False)``, which recomputes the whole sequence).

No weight is copied for skip / parallel / drop plans: apply and restore are O(layers).

**Cache slots.** ``Cache.get_seq_length()`` reads slot 0, and causal-mask sizing reads the
first full-attention slot (sliding masks: the first sliding slot). Attentions that run get
consecutive slots among the slots of their own layer type (``config.layer_types``, as
transformers builds the cache; Qwen2 mixes ``full_attention`` and ``sliding_attention``),
and the first slot of each type goes to an attention whose K/V cover every position. When
no such attention exists for a type (e.g. every attention skipped for generated tokens),
that slot stops at the prompt length during decoding: no attention of that type runs in a
decode call, so no mask of that type is read; ``generate`` passes ``position_ids``
explicitly, and the plan's runtime counts positions itself, so generation is unaffected
(tested). A hand-written decode loop that relies on ``get_seq_length()`` (e.g. omits
``position_ids`` on OPT, whose learned positions are derived from it) would then see the
prompt length.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from searchskip.arch import get_adapter
from searchskip.arch.base import ArchAdapter
from searchskip.flops.geometry import sliding_windows
from searchskip.ops import ATTN_ALL, ATTN_NONE, DROP, REGISTRY, LayerSite
from searchskip.ops import prune
from searchskip.ops.registry import AttentionUse
from searchskip.ops.scope import Declaration, PlanRuntime
from searchskip.ops.tokens import TokenOps, check_attention_implementation, token_forwards
from searchskip.plan import KEEP, Plan

__all__ = ["AppliedPlan", "applied_plan", "apply", "assign_cache_slots", "plan_context", "restore"]

_ATTR = "_searchskip_applied"
_NO_FORWARD = object()


@dataclass(eq=False)
class AppliedPlan:
    """A plan applied to a model in place; :meth:`restore` takes it back exactly.

    Also a context manager (``with apply(model, plan): ...`` restores on exit). Restore before
    ``copy.deepcopy``-ing or saving the model: the installed forwards belong to this instance.
    """

    model: Any
    plan: Plan
    adapter: ArchAdapter
    runtime: PlanRuntime
    forwards: dict[int, Callable[..., Any]] = field(default_factory=dict)
    """Layer index -> the forward installed on that layer (layers not listed run as they are)."""
    cache_slots: dict[int, int] = field(default_factory=dict)
    """Layer index -> KV-cache slot of its attention, for every attention that runs."""
    attention_use: dict[int, AttentionUse] = field(default_factory=dict)
    """Layer index -> which positions its attention projects K/V for (``all``/``prompt``/``none``)."""
    prune_result: Any = None
    """What :func:`searchskip.ops.prune.apply_pruning` returned (``None`` without ``plan.prune``)."""
    _saved_forwards: dict[int, Any] = field(default_factory=dict, repr=False)
    _saved_slots: dict[int, Any] = field(default_factory=dict, repr=False)
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _saved_generate: Any = field(default=None, repr=False)
    _active: bool = field(default=True, repr=False)

    @property
    def active(self) -> bool:
        """Whether the plan is still applied (``False`` after :meth:`restore`)."""
        return self._active

    def restore(self) -> None:
        """Put back every original forward, cache slot index and weight, and remove the hooks;
        the model's logits are then bit-identical to those before :func:`apply`. Idempotent."""
        if not self._active:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self._saved_generate is not None:
            if self._saved_generate is _NO_FORWARD:
                self.model.__dict__.pop("generate", None)
            else:
                self.model.generate = self._saved_generate
            self._saved_generate = None
        layers = self.adapter.layers(self.model)
        for i, old in self._saved_forwards.items():
            if old is _NO_FORWARD:
                layers[i].__dict__.pop("forward", None)
            else:
                layers[i].forward = old
        for i, old in self._saved_slots.items():
            self.adapter.attention(layers[i]).layer_idx = old
        self._saved_forwards.clear()
        self._saved_slots.clear()
        if self.prune_result is not None:
            self.prune_result()
        self.runtime.stash.clear()
        self._active = False
        if getattr(self.model, _ATTR, None) is self:
            self.model.__dict__.pop(_ATTR, None)

    def __enter__(self) -> "AppliedPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def applied_plan(model: Any) -> AppliedPlan | None:
    """The :class:`AppliedPlan` currently applied to ``model``, or ``None``."""
    applied = getattr(model, _ATTR, None)
    return applied if isinstance(applied, AppliedPlan) and applied.active else None


def restore(model: Any) -> bool:
    """Restore ``model`` from the plan applied to it; ``True`` if there was one (idempotent)."""
    applied = applied_plan(model)
    if applied is None:
        return False
    applied.restore()
    return True


def apply(model: Any, plan: Plan, *, calibration: Sequence[Mapping[str, Any]] | None = None) -> AppliedPlan:
    """Apply ``plan`` to ``model`` in place and return the :class:`AppliedPlan`.

    ``calibration``: batches of model inputs for pruning methods that need them (``wanda``),
    passed to :func:`searchskip.ops.prune.apply_pruning`. Raises
    :class:`~searchskip.errors.ConfigError` when the plan does not fit the model (naming its
    layer count), :class:`~searchskip.errors.ModelError` for an unsupported model, and
    ``RuntimeError`` when the model already carries a plan (restore it first).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"apply() needs a searchskip.plan.Plan, got {type(plan).__name__}")
    existing = applied_plan(model)
    if existing is not None:
        raise RuntimeError(
            f"{type(model).__name__} already has a plan applied (plan key {existing.plan.key()}); restore it first "
            "with applied.restore() or searchskip.apply.restore(model), then apply the new plan")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    plan.validate(len(layers))
    handlers = {i: REGISTRY.get(op.op) for i, op in plan.layers}  # unknown op -> ConfigError, before any change
    dropped = plan.dropped_layers()

    tokens = TokenOps.of(plan)
    if tokens is not None:
        check_attention_implementation(adapter.text_config(model))
    runtime = PlanRuntime(adapter.image_token_id(model))
    applied = AppliedPlan(model=model, plan=plan, adapter=adapter, runtime=runtime)
    if plan.prune is not None:
        applied.prune_result = _prune(model, adapter, plan, calibration)
    try:
        uses: dict[int, AttentionUse] = {i: ATTN_ALL for i in range(len(layers))}
        forwards: dict[int, Callable[..., Any]] = {}
        sites = [(i, REGISTRY.get(DROP), plan.op_for(i)) for i in sorted(dropped)]
        sites += [(i, handlers[i], plan.op_for(i)) for i, op in plan.layers if op.op != KEEP]
        for i, handler, op in sites:
            for offset, use in handler.attention_use(op).items():
                uses[i + offset] = use
            built = handler.build(LayerSite(index=i, op=op, layers=layers, adapter=adapter, runtime=runtime,
                                            injected=adapter.injected_layers(model)))
            for j, forward in built.items():
                if j in forwards:
                    raise RuntimeError(f"layer {j} would get two forwards (ops at layer {i} and an earlier one)")
                forwards[j] = forward
        if tokens is not None:
            windows = sliding_windows(adapter.text_config(model), len(layers))
            forwards.update(token_forwards(tokens, layers, adapter, runtime, forwards, dropped, windows))
            uses = {i: tokens.attention_use(i, use) for i, use in uses.items()}
        slots = assign_cache_slots([uses[i] for i in range(len(layers))], _layer_types(adapter, model, len(layers)))
    except BaseException:
        applied.restore()
        raise

    for j, forward in forwards.items():
        applied._saved_forwards[j] = layers[j].__dict__.get("forward", _NO_FORWARD)
        layers[j].forward = forward
    for i, slot in slots.items():
        attention = adapter.attention(layers[i])
        applied._saved_slots[i] = attention.layer_idx
        attention.layer_idx = slot
    applied.forwards, applied.cache_slots, applied.attention_use = forwards, slots, uses
    applied._hooks = [
        model.register_forward_pre_hook(runtime.before_call, with_kwargs=True),
        model.register_forward_hook(runtime.after_call, with_kwargs=True, always_call=True),
    ]
    if callable(getattr(model, "generate", None)):
        applied._saved_generate = model.__dict__.get("generate", _NO_FORWARD)
        model.generate = _declaring_generate(model.generate, runtime)
    model.__dict__[_ATTR] = applied
    return applied


def _declaring_generate(generate: Callable[..., Any], runtime: PlanRuntime) -> Callable[..., Any]:
    """``model.generate`` declaring its input length as the prompt length, so that token scopes
    hold when ``generate`` recomputes the whole sequence without a cache (``use_cache=False``)."""

    @functools.wraps(generate)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        inputs = kwargs.get("input_ids", kwargs.get("inputs"))
        if inputs is None and args and torch.is_tensor(args[0]):
            inputs = args[0]
        if inputs is None and torch.is_tensor(kwargs.get("inputs_embeds")):
            inputs = kwargs["inputs_embeds"]
        if not torch.is_tensor(inputs) or inputs.dim() < 2:
            return generate(*args, **kwargs)
        with runtime.declare(Declaration(prompt_length=int(inputs.shape[1]))):
            return generate(*args, **kwargs)

    return wrapper


def _prune(model: Any, adapter: ArchAdapter, plan: Plan, calibration: Any) -> Any:
    return prune.apply_pruning(model, adapter, plan.prune, None if calibration is None else list(calibration))


def assign_cache_slots(uses: Sequence[AttentionUse], layer_types: Sequence[str]) -> dict[int, int]:
    """Cache slot of each attention that runs: ``{layer index: slot}``.

    ``uses[i]`` says for which positions layer ``i``'s attention projects K/V (``"none"``:
    it never runs, so it gets no slot); ``layer_types[i]`` is the cache layer type of slot
    ``i`` (and of layer ``i``'s attention). Within each type, the running attentions take
    that type's slots in order, the first of them being the first attention (in layer order)
    whose K/V cover every position (``"all"``), then the others in layer order. The dense
    model (every use ``"all"``) maps each layer to its own index.
    """
    if len(uses) != len(layer_types):
        raise ValueError(f"{len(uses)} attention uses but {len(layer_types)} layer types")
    slots: dict[int, int] = {}
    for kind in dict.fromkeys(layer_types):
        own = [j for j, t in enumerate(layer_types) if t == kind]
        running = [j for j in own if uses[j] != ATTN_NONE]
        complete = [j for j in running if uses[j] == ATTN_ALL]
        if complete and running[0] != complete[0]:
            running.remove(complete[0])
            running.insert(0, complete[0])
        slots.update(zip(running, own))
    return dict(sorted(slots.items()))


def _layer_types(adapter: ArchAdapter, model: Any, n: int) -> list[str]:
    """Cache layer type of each decoder layer, as transformers' ``DynamicCache(config=...)`` builds them."""
    config = adapter.text_config(model)
    types: Any = None
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        types, _ = get_layer_types_and_kwargs(config)
    except Exception:  # noqa: BLE001 - older/newer transformers: fall back to the config field
        types = getattr(config, "layer_types", None)
    types = list(types or [])[:n]
    return types + ["full_attention"] * (n - len(types))


@contextlib.contextmanager
def plan_context(model: Any, *, prompt_length: int | None = None,
                 image_mask: torch.Tensor | None = None) -> Iterator[None]:
    """Declare the prompt of generations that start inside the block.

    A forward that carries prompt *and* generated positions without a cache (a no-cache
    recompute of a generation) cannot know where the prompt ends: declare it,
    ``with plan_context(model, prompt_length=N): model(full_ids)``. ``image_mask`` (batch x
    positions, bool) declares the image positions when the first call has no ``input_ids``.
    Applies only to generations that start in the block (cached decode calls keep the
    values of their generation); a no-op for a model without an applied plan.
    """
    if prompt_length is not None and (isinstance(prompt_length, bool) or not isinstance(prompt_length, int)
                                      or prompt_length < 0):
        raise ValueError(f"prompt_length must be an integer >= 0, but got {prompt_length!r}")
    applied = applied_plan(model)
    if applied is None:
        yield
        return
    with applied.runtime.declare(Declaration(prompt_length, image_mask)):
        yield
