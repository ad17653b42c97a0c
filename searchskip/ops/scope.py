"""Token scopes: which positions an op applies to, and sublayers computed for some positions only.

**Positions, not forward calls.** A scope is a set of *absolute* token positions of one
generation (prompt + generated tokens), whatever forward calls they arrive in. With
``N`` = the prompt length (padded input length of the generation's first call):

* ``generated``: positions ``p >= N`` (tokens produced while decoding);
* ``prompt``: positions ``p < N`` (image + question);
* ``non_visual``: positions that are not image tokens (every position of a text-only model);
* ``visual``: the image-token positions of the prompt (none in a text-only model);
* ``all``: every position.

A *skip* with a scope skips the sublayer for the positions **in** the scope and computes it
for the others (``{op: skip_attn, scope: generated}``: attention for the prompt, none for the
answer — the seed paper's default). A *parallel* op with a scope is parallel for the positions
in the scope and sequential (the original layer) for the others.

**What is computed** at one layer, for one sample, over the positions of a forward call
(``q/attn/o`` = query projection, attention scores x values, output projection for those
query positions; ``K/V`` = key and value projections; ``E`` = one past the last image
position of the prompt, 0 for a text-only model or a prompt without images):

==================== ============ ====================== ============================ ===================
op                   scope        q / attn / o for        K/V projected for            FFN for
==================== ============ ====================== ============================ ===================
keep                 any          all                    all                          all
skip_block           all          none                   none                         none
skip_block           generated    ``p < N``              ``p < N``                    ``p < N``
skip_block           prompt       ``p >= N``             all (see note)               ``p >= N``
skip_block           non_visual   image positions        ``p < E`` (see note)         image positions
skip_block           visual       non-image positions    all (see note)               non-image positions
skip_attn            (scope)      as skip_block          as skip_block                all
skip_ffn             (scope)      all                    all                          as skip_block
parallel_attn_ffn    any          all                    all                          all
parallel_blocks      any          all (both layers)      all (both layers)            all (both layers)
drop                 --           none                   none                         none
==================== ============ ====================== ============================ ===================

Each computed query is scored against every key it may see: the keys in the layer's cache
slot plus those projected in the call, under the causal / sliding-window / padding mask the
layer received (sliced to those rows and keys); ``FlopCounterMode`` counts the full
``queries x keys`` rectangle. K/V follow the rule "only where a computed query (of this call
or a later one) needs them": with ``generated`` no later query exists at this layer, so its
cache slot stays prompt-length and decode calls run no attention there; with ``prompt`` the
generated queries attend to every earlier position; with ``non_visual`` the image queries
see keys up to the last image position (so a text-only model computes nothing there); with
``visual`` the image positions get no query, attention output or FFN, but their K/V are
still projected, from the hidden state the image tokens carry into the layer, because the
text and generated queries that follow attend to them (ShortV's "frozen" image tokens; a
text-only model, or a prompt without images, runs the layer unchanged).
*Note*: K/V of a call are computed only if a query of that call runs at the layer or the
call has a KV cache to keep them (e.g. a no-cache forward of the prompt alone under
``prompt`` scope computes nothing at that layer's attention). Under ``visual`` a layer whose
generated tokens exit before it (``early_exit``) has no later query, so K/V stop at the last
text query of the prompt. Norms, rotary embeddings,
activations and residual adds follow the positions of the matmuls they feed.

``parallel_attn_ffn`` computes ``x + attn(n1(x)) + ffn(n2(x))`` (each sublayer with its own
norm); ``parallel_blocks`` (layers ``i``, ``i+1``) computes ``x + (L_i(x) - x) + (L_{i+1}(x) - x)``,
with ``average`` ``x + ((L_i(x) - x) + (L_{i+1}(x) - x)) / 2`` = the mean of the two outputs.
Both save depth, not FLOPs.

**Batches.** ``generated`` / ``prompt`` are the same positions in every row. Image positions
may differ between rows (left padding): under ``non_visual`` / ``visual`` the computed
positions are the union over rows of each row's image / non-image positions (``E`` too is
taken over rows), and a row's results at a position outside its own set are discarded. The
table is exact per sample; a batch computes the union.

**Runtime context.** :func:`searchskip.apply.apply` installs :class:`PlanRuntime` hooks on the
top-level model: at the first call of a generation (no cache, or a cache this runtime has
not tagged; a non-empty untagged cache counts as prompt) it records ``N`` (that call's input
length, unless declared) and the image-token mask (``input_ids == image_token_id``), and
tags the cache object so that later calls with it keep them; each call's positions are
``past + arange(length)``, ``past`` counted by the runtime (not read from the cache, whose
slot 0 may stop at the prompt). A no-cache forward of prompt + generated tokens must declare
``N``: ``with plan_context(model, prompt_length=N): model(full_ids)``; the planned model's
``generate`` declares its input length itself (so ``use_cache=False`` generation works too).
Token-scoped ops need this context: a decoder submodule called directly raises unless a
``plan_context`` is active. ``non_visual`` and ``visual`` read the image positions' values
(``.any()``), so they cannot run on the meta device; the other scopes only need shapes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch.nn import functional as F

from searchskip.arch.cache_api import call_cache, output_cache
from searchskip.plan import SCOPE_ALL, SCOPE_GENERATED, SCOPE_NON_VISUAL, SCOPE_PROMPT, SCOPE_VISUAL

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from searchskip.arch.base import ArchAdapter

__all__ = [
    "CallPositions",
    "Declaration",
    "ViewPositions",
    "PlanRuntime",
    "Selection",
    "attention_update",
    "mlp_update",
]

_STATE_ATTR = "_searchskip_positions"


# --------------------------------------------------------------------------------------
# Selections of positions within one forward call
# --------------------------------------------------------------------------------------


class Selection:
    """Local positions (``0 .. length-1`` of the current call) where a sublayer runs.

    Either a contiguous range ``[start, stop)`` or an index tensor; ``rows`` (batch x n, bool)
    marks, when not every row belongs at every selected position, which rows' results count.
    """

    __slots__ = ("length", "start", "stop", "index", "rows", "_last")

    def __init__(self, length: int, start: int = 0, stop: int = 0, index: torch.Tensor | None = None,
                 rows: torch.Tensor | None = None, last: int | None = None):
        self.length, self.start, self.stop, self.index, self.rows = length, start, stop, index, rows
        self._last = last  # one past the last index, when the builder knows it (saves a device sync)

    @classmethod
    def span(cls, length: int, start: int, stop: int) -> "Selection":
        start = min(max(start, 0), length)
        return cls(length, start, max(start, min(stop, length)))

    @property
    def size(self) -> int:
        return int(self.index.numel()) if self.index is not None else self.stop - self.start

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    @property
    def is_full(self) -> bool:
        return self.index is None and self.rows is None and self.start == 0 and self.stop == self.length

    @property
    def last(self) -> int:
        """One past the last selected position."""
        if self.index is None:
            return self.stop
        if self._last is None:
            self._last = int(self.index.max()) + 1 if self.index.numel() else 0
        return self._last

    def take(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``x`` restricted to the selected positions along ``dim`` (a view for ranges)."""
        if self.index is not None:
            return x.index_select(dim, self.index.to(x.device))
        return x.narrow(dim, self.start, self.stop - self.start)

    def positions(self, device: torch.device) -> torch.Tensor:
        if self.index is not None:
            return self.index.to(device)
        return torch.arange(self.start, self.stop, device=device)

    def add(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``h`` with ``delta`` added at the selected positions (rows outside ``rows`` unchanged)."""
        old = self.take(h)
        new = old + delta
        if self.rows is not None:
            new = torch.where(self.rows.to(h.device).unsqueeze(-1), new, old)
        if self.index is None:
            return torch.cat([h[:, : self.start], new, h[:, self.stop:]], dim=1)
        out = h.clone()
        out.index_copy_(1, self.index.to(h.device), new)
        return out


def _selection(runs: torch.Tensor) -> Selection:
    """The :class:`Selection` of the positions where ``runs`` (batch x length bool) holds in
    some row: a range when they are contiguous, else an index; ``rows`` marks which rows' results
    count at each selected position when the rows differ."""
    n = runs.shape[1]
    cols = runs.any(0).nonzero().flatten()
    if cols.numel() == 0:
        return Selection.span(n, 0, 0)
    rows = runs[:, cols]
    rows = None if bool(rows.all()) else rows
    first, last = int(cols[0]), int(cols[-1]) + 1
    if last - first == cols.numel():
        return Selection(n, first, last, None, rows)
    return Selection(n, index=cols, rows=rows, last=last)


# --------------------------------------------------------------------------------------
# Positions of one forward call
# --------------------------------------------------------------------------------------


@dataclass
class CallPositions:
    """The token positions of one forward call: ``past .. past + length - 1`` of a generation
    whose prompt is ``prompt_length`` long. ``image`` is the image-token mask over absolute
    positions (batch x P; positions past P are not images), ``None`` when there are no images;
    ``image_unknown`` when the model has images but the mask could not be read."""

    past: int
    length: int
    prompt_length: int
    image: torch.Tensor | None = None
    image_unknown: bool = False
    padding: torch.Tensor | None = None
    """The call's 2D ``attention_mask`` as given (batch x absolute positions ``0 .. past + length
    - 1``, nonzero = a real token), ``None`` when the call had none (no padding)."""
    _memo: dict = field(default_factory=dict, repr=False)
    _generation_memo: dict = field(default_factory=dict, repr=False)
    """Values that hold for the whole generation (shared by its calls' ``CallPositions``)."""

    @property
    def prompt_stop(self) -> int:
        """Local index where generated positions start (``length`` if none in this call)."""
        return min(max(self.prompt_length - self.past, 0), self.length)

    def image_local(self) -> torch.Tensor | None:
        """Image positions of this call (batch x length bool), ``None`` when there are none."""
        if self.image_unknown:
            raise RuntimeError(
                "scopes 'non_visual' and 'visual' need the image-token positions, but the generation's first call had no "
                "input_ids (inputs_embeds only); pass input_ids, or declare them with "
                "plan_context(model, prompt_length=..., image_mask=...)")
        if self.image is None:
            return None
        if "image" not in self._memo:
            stop = min(self.past + self.length, self.prompt_length, self.image.shape[1])
            local = torch.zeros(self.image.shape[0], self.length, dtype=torch.bool, device=self.image.device)
            if stop > self.past:
                local[:, : stop - self.past] = self.image[:, self.past: stop]
            self._memo["image"] = local if bool(local.any()) else None
        return self._memo["image"]

    def runs(self, scope: str) -> Selection:
        """Where a sublayer skipped for ``scope`` still runs (the positions outside the scope)."""
        key = ("runs", scope)
        if key not in self._memo:
            self._memo[key] = self._runs(scope)
        return self._memo[key]

    def _runs(self, scope: str) -> Selection:
        n = self.length
        if scope == SCOPE_ALL:
            return Selection.span(n, 0, 0)
        if scope == SCOPE_GENERATED:
            return Selection.span(n, 0, self.prompt_stop)
        if scope == SCOPE_PROMPT:
            return Selection.span(n, self.prompt_stop, n)
        if scope in (SCOPE_NON_VISUAL, SCOPE_VISUAL):
            image = self.image_local()
            if image is None:  # no image position in this call: nothing / everything runs
                return Selection.span(n, 0, 0 if scope == SCOPE_NON_VISUAL else n)
            return _selection(image if scope == SCOPE_NON_VISUAL else ~image)
        raise ValueError(f"unknown scope {scope!r}")

    def in_scope(self, scope: str, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Positions of the call in ``scope`` as a (batch or 1) x length x 1 bool mask on ``device``
        (default: CPU); ``None`` = all. Built once per call and device."""
        if scope == SCOPE_ALL:
            return None
        device = torch.device(device if device is not None else "cpu")
        key = ("in", scope, device)
        if key not in self._memo:
            if scope == SCOPE_GENERATED:
                mask = (torch.arange(self.length, device=device) >= self.prompt_stop).unsqueeze(0)
            elif scope == SCOPE_PROMPT:
                mask = (torch.arange(self.length, device=device) < self.prompt_stop).unsqueeze(0)
            elif scope in (SCOPE_NON_VISUAL, SCOPE_VISUAL):
                image = self.image_local()
                if image is None:
                    mask = torch.full((1, self.length), scope == SCOPE_NON_VISUAL, dtype=torch.bool, device=device)
                else:
                    mask = (~image if scope == SCOPE_NON_VISUAL else image).to(device)
            else:
                raise ValueError(f"unknown scope {scope!r}")
            self._memo[key] = mask.unsqueeze(-1)
        return self._memo[key]

    @property
    def image_end(self) -> int:
        """One past the last image position of the generation (union over rows; 0 without images);
        computed once per generation."""
        memo = self._generation_memo
        if "image_end" not in memo:
            end = 0
            if self.image is not None:
                cols = self.image[:, : self.prompt_length].any(0).nonzero()
                end = int(cols.max()) + 1 if cols.numel() else 0
            memo["image_end"] = end
        return memo["image_end"]

    def kv_stop(self, scope: str) -> int:
        """One past the last local position whose K/V an attention skipped for ``scope`` projects:
        up to the last position whose query still runs there in this generation."""
        if scope == SCOPE_ALL:
            return 0
        if scope == SCOPE_GENERATED:
            return self.prompt_stop
        if scope in (SCOPE_PROMPT, SCOPE_VISUAL):  # generated queries (of later calls) see every position
            return self.length
        if scope == SCOPE_NON_VISUAL:
            if self.image_unknown:
                self.image_local()  # raises the explanation
            return min(max(self.image_end - self.past, 0), self.length)
        raise ValueError(f"unknown scope {scope!r}")


@dataclass
class ViewPositions(CallPositions):
    """The positions of a call as the layers of a token-reducing op see them
    (:mod:`searchskip.ops.tokens`): a subset of the call's positions, the same number in every
    row, in order. ``absolute`` (batch x length) holds their absolute positions; the first
    ``view_prompt`` of every row are prompt positions. Scopes are answered over these local
    positions, exactly as :class:`CallPositions` answers them over a whole call."""

    absolute: torch.Tensor | None = None
    """Required (a default only because the fields before it have one)."""
    view_prompt: int = 0
    exited: bool = False
    """Generated tokens never reach this layer (``early_exit``): no later query runs here, so an
    attention skipped for the prompt projects no K/V for it."""

    @property
    def prompt_stop(self) -> int:
        return self.view_prompt

    def image_local(self) -> torch.Tensor | None:
        if self.image_unknown:
            return super().image_local()  # raises the explanation
        if self.image is None or self.view_prompt == 0:  # image tokens are prompt positions
            return None
        if "image" not in self._memo:
            image = self.image[:, : self.prompt_length]
            index = self.absolute.clamp(max=image.shape[1] - 1).to(image.device)
            local = image.gather(1, index) & (self.absolute.to(image.device) < image.shape[1])
            self._memo["image"] = local if bool(local.any()) else None
        return self._memo["image"]

    def kv_stop(self, scope: str) -> int:
        if scope == SCOPE_PROMPT and self.exited:
            return 0
        if scope == SCOPE_NON_VISUAL or (scope == SCOPE_VISUAL and self.exited):
            return self.runs(scope).last  # one past the view's last query of this layer: no later one comes
        return super().kv_stop(scope)


# --------------------------------------------------------------------------------------
# The runtime: records the positions of each forward call of the top-level model
# --------------------------------------------------------------------------------------


@dataclass
class _Generation:
    prompt_length: int
    image: torch.Tensor | None
    image_unknown: bool
    seen: int
    memo: dict = field(default_factory=dict)
    """What :class:`CallPositions` computes once per generation (``image_end``)."""


@dataclass(frozen=True, eq=False)
class Declaration:
    """What ``plan_context`` declares for generations that start inside it."""

    prompt_length: int | None = None
    image_mask: torch.Tensor | None = None


class PlanRuntime:
    """Per-model state of an applied plan: the positions of the current forward call.

    :meth:`before_call` / :meth:`after_call` are the forward pre-hook / hook (``with_kwargs``)
    of the top-level model. The generation state lives on the KV cache object (attribute
    ``_searchskip_positions``), so interleaved generations with different caches stay apart.
    """

    def __init__(self, image_token_id: int | None):
        self.image_token_id = image_token_id
        self.current: CallPositions | None = None
        self.declarations: list[Declaration] = []
        self.stash: dict[Any, Any] = {}
        """Values handed from one layer to a later one within a call (``parallel_blocks``,
        the attention scores ``visual_tokens`` ranks image tokens by)."""
        self.view: ViewPositions | None = None
        """The positions the layer now running sees, while a token-reducing op runs it on a
        subset of the call's positions (:mod:`searchskip.ops.tokens`)."""
        self._pending: _Generation | None = None

    @contextlib.contextmanager
    def declare(self, declaration: Declaration) -> Iterator[None]:
        self.declarations.append(declaration)
        try:
            yield
        finally:
            self.declarations.remove(declaration)

    # ---- hooks ------------------------------------------------------------------------
    def before_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and torch.is_tensor(args[0]):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        if ids is None and embeds is None:
            self.current = None
            return
        length = (ids if ids is not None else embeds).shape[1]
        cache = call_cache(kwargs)
        state = getattr(cache, _STATE_ATTR, None) if cache is not None else None
        if not isinstance(state, _Generation):
            past = _cache_length(cache)
            declared = self.declarations[-1] if self.declarations else Declaration()
            prompt_length = declared.prompt_length if declared.prompt_length is not None else past + length
            image, unknown = self._image_mask(ids, past, declared)
            state = _Generation(prompt_length, image, unknown, seen=past)
        self.current = CallPositions(state.seen, length, state.prompt_length, state.image, state.image_unknown,
                                     padding=_padding(kwargs.get("attention_mask")), _generation_memo=state.memo)
        state.seen += length
        if cache is not None:
            _tag(cache, state)
        self._pending = state

    def after_call(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        cache = output_cache(output)
        if cache is not None and self._pending is not None:
            _tag(cache, self._pending)  # a cache the model created inside this call
        self.current = None
        self._pending = None
        self.stash.clear()

    def _image_mask(self, ids: torch.Tensor | None, past: int, declared: Declaration):
        if declared.image_mask is not None:
            return declared.image_mask.bool(), False
        if self.image_token_id is None:
            return None, False
        if ids is None:
            return None, True
        mask = ids == self.image_token_id
        if past:
            mask = torch.cat([mask.new_zeros(mask.shape[0], past), mask], dim=1)
        return mask, False

    # ---- what layers ask ----------------------------------------------------------------
    def positions(self, hidden_states: torch.Tensor) -> CallPositions:
        """The positions of the current call (checked against ``hidden_states``' length)."""
        length = hidden_states.shape[1]
        if self.view is not None:
            if self.view.length != length:
                raise RuntimeError(f"a decoder layer got {length} positions, but the token-reduced view of the call "
                                   f"has {self.view.length}")
            return self.view
        current = self.current
        if current is None:
            if not self.declarations:
                raise RuntimeError(
                    "a token-scoped op ran outside a call of the planned top-level model, so the token positions "
                    "are unknown; call the model itself, or wrap the call in plan_context(model, prompt_length=N)")
            d = self.declarations[-1]  # a direct call of a submodule: a fresh, no-cache sequence
            image = d.image_mask.bool() if d.image_mask is not None else None
            unknown = image is None and self.image_token_id is not None
            current = CallPositions(0, length, d.prompt_length if d.prompt_length is not None else length,
                                    image, unknown)
        if current.length != length:
            raise RuntimeError(f"the decoder layers got {length} positions, but the model call had "
                               f"{current.length} input positions")
        return current


def _padding(mask: Any) -> torch.Tensor | None:
    """A 2D ``attention_mask`` as it is (``None`` when there is none); read only by token ops."""
    return mask if torch.is_tensor(mask) and mask.dim() == 2 else None


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except Exception:  # noqa: BLE001 - an exotic cache without a length: treat as empty
        return 0


def _tag(cache: Any, state: _Generation) -> None:
    try:
        setattr(cache, _STATE_ATTR, state)
    except (AttributeError, TypeError):
        pass


# --------------------------------------------------------------------------------------
# Sublayers computed for selected positions
# --------------------------------------------------------------------------------------


def mlp_update(adapter: "ArchAdapter", layer: "nn.Module", h: torch.Tensor, sel: Selection) -> torch.Tensor:
    """``h`` after the layer's FFN, computed for the positions of ``sel`` only (gather -> FFN -> scatter)."""
    if sel.is_empty:
        return h
    if sel.is_full:
        return h + adapter.mlp_delta(layer, h)
    return sel.add(h, adapter.mlp_delta(layer, sel.take(h)))


def to_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """A projection's output (batch x positions x heads*head_dim) as batch x heads x positions x head_dim."""
    return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """K or V with grouped-query heads repeated to ``heads`` query heads."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def attention_scaling(attention: Any, head_dim: int) -> float:
    """The factor q.k is scaled by: the attention module's ``scaling``, else ``head_dim ** -0.5``."""
    return getattr(attention, "scaling", head_dim ** -0.5)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (batch x heads x positions x head_dim) with rotary embeddings applied; where they cover
    only the first ``cos.shape[-1]`` dims of a head (Phi-3's ``partial_rotary_factor``) the rest pass."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if cos.shape[-1] < x.shape[-1]:
        dim = cos.shape[-1]
        return torch.cat([_rotate(x[..., :dim], cos.squeeze(1), sin.squeeze(1)), x[..., dim:]], dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)


def attention_update(adapter: "ArchAdapter", layer: "nn.Module", h: torch.Tensor, queries: Selection,
                     kv_stop: int, layer_kwargs: dict) -> torch.Tensor:
    """``h`` after the layer's self-attention, computed for the query positions ``queries`` only.

    K/V are projected for local positions ``[0, kv_stop)`` (which contain every query) and,
    with a cache in ``layer_kwargs``, appended to the attention's cache slot
    (``attention.layer_idx``); when the queries are the whole call and ``kv_stop`` is its
    length, the layer's own attention runs instead (bit-identical). Family differences come
    from the adapter: linears, geometry, ``scaling`` of the attention module, and rotary
    embeddings when the layer received ``position_embeddings`` (Llama-like; OPT has none).
    The 4D mask the layer received is sliced to the query rows and the keys (right-aligned:
    the mask's last column is the call's last position); without one a causal mask is built
    (transformers omits the mask only when neither padding nor a sliding window restricts).
    Attention dropout is not applied (inference; the families here default to 0).
    """
    length = h.shape[1]
    cache = call_cache(layer_kwargs)
    if queries.is_full and kv_stop == length:
        return h + adapter.attn_delta(layer, h, **layer_kwargs)
    if queries.is_empty and (cache is None or kv_stop == 0):
        return h
    if queries.last > kv_stop:
        raise RuntimeError(f"query positions reach {queries.last}, past the projected keys ({kv_stop})")

    attn = adapter.attention(layer)
    lin = adapter.attn_linears(layer)
    heads, kv_heads, head_dim = adapter.attn_geometry(layer)
    batch = h.shape[0]
    x = adapter.attn_norm(layer)(h[:, :kv_stop])
    k = adapter.key_norm(layer, to_heads(lin["k"](x), kv_heads, head_dim))
    v = to_heads(lin["v"](x), kv_heads, head_dim)
    rope = layer_kwargs.get("position_embeddings")
    if rope is not None:
        cos, sin = rope
        k = _rotate(k, cos[:, :kv_stop], sin[:, :kv_stop])
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx)
    if queries.is_empty:
        return h

    xq = queries.take(x)
    n = xq.shape[1]
    q = adapter.query_norm(layer, to_heads(lin["q"](xq), heads, head_dim))
    if rope is not None:
        q = _rotate(q, queries.take(cos), queries.take(sin))
    mask = _slice_mask(layer_kwargs.get("attention_mask"), queries, kv_stop, length, k.shape[2], h.device)
    k, v = repeat_kv(k, heads), repeat_kv(v, heads)
    scale = attention_scaling(attn, head_dim)
    cap = adapter.attn_softcap(layer)
    if cap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale)
    else:  # capped scores: SDPA cannot, so as the model's eager attention does
        scores = softcap(torch.matmul(q, k.transpose(-1, -2)) * scale, cap)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        out = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(q.dtype), v)
    out = out.transpose(1, 2).reshape(batch, n, heads * head_dim)
    return queries.add(h, adapter.attn_output_norm(layer, lin["o"](out)))


def softcap(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """Attention scores capped as Gemma 2 caps them: ``cap * tanh(scores / cap)``."""
    return torch.tanh(scores / cap) * cap


def _slice_mask(mask: Any, queries: Selection, kv_stop: int, length: int, n_keys: int,
                device: torch.device) -> torch.Tensor:
    """The rows of ``queries`` and the columns of the ``n_keys`` keys ending at local ``kv_stop``."""
    if mask is None:
        key_pos = torch.arange(kv_stop - n_keys, kv_stop, device=device)
        return (key_pos.unsqueeze(0) <= queries.positions(device).unsqueeze(1))[None, None]
    if not torch.is_tensor(mask) or mask.dim() != 4:
        raise RuntimeError(f"token-scoped attention needs a 4D attention mask tensor, got {type(mask).__name__}")
    stop = mask.shape[-1] - (length - kv_stop)
    start = stop - n_keys
    if start < 0:
        raise RuntimeError(f"the layer's attention mask covers {mask.shape[-1]} key positions, fewer than the "
                           f"{n_keys} keys its cache slot holds; cache slots are out of step")
    return queries.take(mask, dim=2)[..., start:stop]
