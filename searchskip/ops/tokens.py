"""Token reduction: ``visual_tokens`` (image tokens leave the sequence after layer k) and
``early_exit`` (generated tokens leave the decoder after layer e).

For a LLaVA-1.5 VQA sample the prefill over ~576 image tokens is almost all of the LLM's
FLOPs; these plan keys cut it where layer skips cannot. Both are plan-level keys
(:class:`~searchskip.plan.VisualTokensSpec`, :class:`~searchskip.plan.EarlyExitSpec`) and
compose with every layer op, ``drop`` and ``prune``.

**How a layer runs on fewer tokens.** The decoder's own loop still passes full-length hidden
states from layer to layer (so ``output_hidden_states``, the final norm and every caller see
the shapes they expect). A governed layer's forward gathers the positions it computes (a
*view*: the same number per row, in order), runs the layer's forward (its op's, or the
original) on them with the layer arguments narrowed to them, and scatters the result back;
the other positions pass through unchanged. Nothing is computed or cached for them.

* ``visual_tokens`` ``{after_layer: k, keep: r, rank}``: layers ``k ..`` see the prompt's
  text, ``kept_visual_tokens(n, r)`` of its ``n`` image tokens, and the generated tokens. A
  dropped image position leaves the decoder with its hidden state after layer ``k - 1``.
  ``rank: attention`` (FastV) keeps the image tokens with the most attention (softmax
  probabilities, mean over heads) from the last prompt token at layer ``k - 1``: the layer's
  own q/k projections are read with forward hooks (no extra projection), rotary embeddings
  applied, and one extra matmul scores that query against the prompt's keys (``2 * h * d *
  S`` FLOPs, counted by :mod:`searchskip.flops`). ``uniform`` keeps image tokens ``floor((i +
  1/2) n / K)`` of each row, ``i < K``. The choice is made once, in the call that holds the
  prompt, and kept for the generation (stored with the KV cache's generation state).
* ``early_exit`` ``{layer: e, scope: generated}``: layers after ``e`` do not run for generated
  positions; such a token goes from layer ``e`` straight to the final norm and ``lm_head``.
  Later generated tokens therefore see no K/V of generated positions at those layers (they
  are skipped for them too): the layers run for the prompt only, which is exactly
  ``skip_block`` with scope ``generated`` on every layer after ``e``, combined with the
  layer's own op for the prompt. (LayerSkip instead computes the exited positions' K/V
  from the exit state; that costs K/V projections at every later layer and is not done.)

**Attention masks and the KV cache.** A reduced layer's queries and keys are not contiguous
positions, so its 4D mask is built from absolute positions: a key is visible when it is not
after the query, inside the layer's sliding window (in absolute positions, as the layer
would see it unreduced), and not padding (the top-level call's 2D ``attention_mask``).
The keys are those its cache slot holds (kept prompt positions, then generated ones) plus
the call's own. Reduced slots are shorter than the others, so they never take cache slot
0 (whose length ``get_seq_length()`` and transformers' masks read; see
:func:`searchskip.apply.assign_cache_slots`): their use is ``subset``. Masks are boolean,
or additive floats when the layer received a float mask (eager attention); a query row
with no visible key (a padding query) is let see every key, as transformers does, so no
NaN reaches real positions. Attention implementations other than ``sdpa`` and ``eager``
(e.g. flash-attention with 2D masks) are refused when the plan is applied.

Generation with a KV cache gives the tokens of a no-cache recompute (the recompute ranks at
the same query against the same keys), and a left-padded batch answers as its rows do alone.
A generation must pass its whole prompt in its first call (no chunked prefill), and every
row of a batch must hold the same number of image tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from searchskip.arch.cache_api import call_cache
from searchskip.errors import ModelError
from searchskip.ops.registry import ATTN_ALL, ATTN_SUBSET, AttentionUse
from searchskip.ops.scope import (
    CallPositions,
    PlanRuntime,
    ViewPositions,
    _rotate,
    attention_scaling,
    softcap,
    repeat_kv,
    to_heads,
)
from searchskip.ops.skip import layer_kwargs_binder, skipped_attention_use
from searchskip.plan import RANK_ATTENTION, SCOPE_GENERATED, EarlyExitSpec, Plan, VisualTokensSpec, kept_visual_tokens

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from searchskip.arch.base import ArchAdapter

__all__ = ["TokenOps", "token_forwards"]

Forward = Callable[..., Any]
_SCORES = "visual_tokens.scores"
_KEPT = "visual_tokens.kept"
_MASK_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class TokenOps:
    """The token-reducing part of a plan, as :func:`searchskip.apply.apply` installs it."""

    visual: VisualTokensSpec | None = None
    early: EarlyExitSpec | None = None

    @classmethod
    def of(cls, plan: Plan) -> "TokenOps | None":
        """The token ops of ``plan``; ``None`` when it has none."""
        if plan.visual_tokens is None and plan.early_exit is None:
            return None
        return cls(plan.visual_tokens, plan.early_exit)

    def reduced(self, layer: int) -> bool:
        """Whether ``layer`` runs on the kept image tokens only."""
        return self.visual is not None and self.visual.reduces(layer)

    def exited(self, layer: int) -> bool:
        """Whether generated tokens have left the decoder before ``layer``."""
        return self.early is not None and self.early.exits_before(layer)

    @property
    def rank_layer(self) -> int | None:
        """The layer whose attention ranks the image tokens (``None`` unless ``rank: attention``)."""
        return self.visual.rank_layer if self.visual is not None else None

    def attention_use(self, layer: int, use: AttentionUse) -> AttentionUse:
        """``use`` (which positions ``layer``'s attention projects K/V for) under these ops."""
        if use == ATTN_ALL and self.exited(layer):  # exactly skip_block for the generated tokens
            return skipped_attention_use(SCOPE_GENERATED)
        if use == ATTN_ALL and self.reduced(layer):
            return ATTN_SUBSET
        return use


def check_attention_implementation(config: Any) -> None:
    """Token ops pass 4D masks to the attention: refuse implementations that take other masks."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in _MASK_IMPLEMENTATIONS:
        raise ModelError(f"visual_tokens / early_exit need attention that takes 4D masks ({', '.join(_MASK_IMPLEMENTATIONS)}), "
                         f"but the model uses attn_implementation={impl!r}; load it with attn_implementation='sdpa'")


def token_forwards(ops: TokenOps, layers: "nn.ModuleList", adapter: "ArchAdapter", runtime: PlanRuntime,
                   forwards: dict[int, Forward], skip: set[int], windows: list[int | None]) -> dict[int, Forward]:
    """``{layer: forward}`` for every layer the token ops govern, wrapping the forward the
    layer would otherwise run (``forwards[layer]``, else its class's ``forward``); layers in
    ``skip`` (dropped: they pass their input through) are left alone. ``windows``: each
    layer's sliding window (``None``: none)."""
    out: dict[int, Forward] = {}
    for j, layer in enumerate(layers):
        reduced, exited, ranks = ops.reduced(j), ops.exited(j), j == ops.rank_layer
        if j in skip or not (reduced or exited or ranks):
            continue
        base = forwards.get(j) or functools.partial(type(layer).forward, layer)
        out[j] = _TokenLayer(layer, base, ops, adapter, runtime, windows[j], reduced, exited, ranks).forward
    return out


class _TokenLayer:
    """One governed decoder layer: runs ``base`` on its view of the call and ranks image tokens."""

    def __init__(self, layer: Any, base: Forward, ops: TokenOps, adapter: "ArchAdapter", runtime: PlanRuntime,
                 window: int | None, reduced: bool, exited: bool, ranks: bool):
        self.layer, self.base, self.ops = layer, base, ops
        self.adapter, self.runtime, self.window = adapter, runtime, window
        self.reduced, self.exited, self.ranks = reduced, exited, ranks
        self.bind = layer_kwargs_binder(layer)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs = self.bind(args, kwargs)
        call = self.runtime.positions(hidden_states)
        capture = _Capture(self.adapter, self.layer) if self.ranks and _ranks_now(call) else None
        try:
            out = self._run(call, hidden_states, kwargs)
        finally:
            if capture is not None:
                capture.close()
        if capture is not None:
            self.runtime.stash[_SCORES] = capture.scores(call, kwargs, self.window)
        return out

    def _run(self, call: CallPositions, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
        if not (self.reduced or self.exited):
            return self.base(h, **kwargs)
        view = _view(self.runtime, call, self.ops, self.reduced, self.exited, h)
        if view.size == 0:
            return h
        narrowed = view.layer_kwargs(kwargs, self._mask(call, view, kwargs)) if view.own_mask else kwargs
        self.runtime.view = view.positions
        try:
            out = self.base(view.take(h), **narrowed)
        finally:
            self.runtime.view = None
        return view.put(h, out)

    def _mask(self, call: CallPositions, view: "_View", kwargs: dict) -> torch.Tensor:
        cache = call_cache(kwargs)
        stored = _stored(cache, self.adapter.attention(self.layer).layer_idx) if cache is not None else 0
        like = kwargs.get("attention_mask")
        key = ("tokens.mask", self.reduced, self.exited, stored, self.window,
               like.dtype if torch.is_tensor(like) else None)
        if key not in call._memo:  # the same for every reduced layer of a call with the same slot length
            history = view.history[:, view.history.shape[1] - stored:] if stored else view.history[:, :0]
            keys = torch.cat([history, view.absolute], dim=1)
            blocks = _image_blocks(call) if self.adapter.bidirectional_images else None
            call._memo[key] = _visibility_mask(view.absolute, keys, call.padding, self.window, like, blocks)
        return call._memo[key]


def _ranks_now(call: CallPositions) -> bool:
    """Whether this call holds the prompt, the prompt holds image tokens, and the generation has
    not chosen its tokens yet."""
    if _KEPT in call._generation_memo or call.past != 0 or call.length < call.prompt_length:
        return False
    return call.image_end > 0


# --------------------------------------------------------------------------------------
# Views: the positions a governed layer computes in one call
# --------------------------------------------------------------------------------------


@dataclass
class _View:
    positions: ViewPositions
    """The view's positions (``absolute``: batch x size, on the hidden states' device)."""
    history: torch.Tensor
    """batch x n: absolute positions of the keys a full slot of this layer kind holds before the call."""
    whole: bool
    """Whether the view is every position of the call (take / put are then identities)."""
    own_mask: bool = True
    """Whether the layer gets a mask built for the view (else the one it received)."""
    _narrowed: dict = field(default_factory=dict, repr=False)
    """Layer arguments narrowed to the view, by the id of the full tensor (held, so the id stays
    its own): every layer of the call gets the same rotary embeddings and position ids."""

    @property
    def absolute(self) -> torch.Tensor:
        return self.positions.absolute

    @property
    def size(self) -> int:
        return self.positions.length

    @functools.cached_property
    def local(self) -> torch.Tensor:
        """batch x size: the call's local positions, sorted per row."""
        return self.absolute - self.positions.past

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch or 1 x call positions x ...) at the view's positions."""
        if self.whole:
            return x
        index = self.local
        if x.shape[0] != index.shape[0]:
            x = x.expand(index.shape[0], *x.shape[1:])
        if x.dim() == 2:
            return x.gather(1, index)
        return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def _take_once(self, x: torch.Tensor) -> torch.Tensor:
        if id(x) not in self._narrowed:
            self._narrowed[id(x)] = (x, self.take(x))
        return self._narrowed[id(x)][1]

    def put(self, h: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if self.whole:
            return new
        index = self.local.unsqueeze(-1).expand(-1, -1, h.shape[-1])
        return h.scatter(1, index, new.to(h.dtype))

    def layer_kwargs(self, kwargs: dict, mask: torch.Tensor) -> dict:
        """The layer's keyword arguments narrowed to the view's positions (rotary embeddings and
        ``position_ids`` gathered once per call: every layer gets the same tensors)."""
        out = dict(kwargs, attention_mask=mask)
        rope = kwargs.get("position_embeddings")
        if rope is not None:
            out["position_embeddings"] = tuple(self._take_once(t) for t in rope)
        if torch.is_tensor(kwargs.get("position_ids")):
            out["position_ids"] = self._take_once(kwargs["position_ids"])
        if torch.is_tensor(kwargs.get("cache_position")):
            start = int(mask.shape[-1]) - self.size
            out["cache_position"] = torch.arange(start, start + self.size, device=kwargs["cache_position"].device)
        return out


def _view(runtime: PlanRuntime, call: CallPositions, ops: TokenOps, reduced: bool, exited: bool,
          h: torch.Tensor) -> _View:
    """The view of ``call`` for layers of this kind (memoised per call), its positions on ``h``'s device."""
    key = ("tokens.view", reduced, exited)
    if key in call._memo:
        return call._memo[key]
    n, past, end = call.prompt_length, call.past, call.past + call.length
    holds_prompt = past == 0 and end >= n
    if reduced and past < n and not holds_prompt:
        raise RuntimeError("visual_tokens needs the whole prompt in the generation's first forward call, but "
                           f"positions {past}..{end - 1} arrived together (the prompt is {n} long)")
    own_mask, batch = True, h.shape[0]
    if reduced:
        kept = _kept(runtime, call, ops, batch) if holds_prompt else call._generation_memo[_KEPT]
        prompt = kept if holds_prompt else kept[:, :0]
        history = torch.cat([kept, torch.arange(n, past).expand(kept.shape[0], -1)], dim=1) if past else kept[:, :0]
    else:
        prompt = torch.arange(past, max(past, min(n, end))).expand(batch, -1)
        history = torch.arange(past).expand(batch, -1)
        own_mask = end > n  # a prompt-only call runs whole, with the layer's own mask
    generated = torch.arange(max(n, past), max(n, past) if exited else end).expand(prompt.shape[0], -1)
    absolute = torch.cat([prompt, generated], dim=1).to(h.device)
    if absolute.shape[1] == 0:  # nothing runs here (a decode step after the exit): no history to move
        history = history[:, :0]
    positions = ViewPositions(past, absolute.shape[1], n, call.image, call.image_unknown, call.padding,
                              _generation_memo=call._generation_memo, absolute=absolute,
                              view_prompt=prompt.shape[1], exited=exited)
    view = _View(positions, history.to(h.device), whole=absolute.shape[1] == call.length, own_mask=own_mask)
    call._memo[key] = view
    return view


def _kept(runtime: PlanRuntime, call: CallPositions, ops: TokenOps, batch: int) -> torch.Tensor:
    """batch x K' sorted absolute prompt positions the reduced layers keep (chosen once per
    generation, on the CPU: they index the view's positions)."""
    memo = call._generation_memo
    if _KEPT in memo:
        return memo[_KEPT]
    n = call.prompt_length
    if call.image_unknown:
        call.image_local()  # raises the explanation
    if call.image_end == 0:  # no image token in the prompt: nothing to drop
        memo[_KEPT] = torch.arange(n).expand(batch, -1)
        return memo[_KEPT]
    image = call.image[:, :n].cpu()
    counts = image.sum(1)
    if not bool((counts == counts[0]).all()):
        raise RuntimeError("visual_tokens needs the same number of image tokens in every row of a batch, but the rows "
                           f"hold {', '.join(str(int(c)) for c in counts)}")
    batch, total = image.shape[0], int(counts[0])
    visual = ops.visual
    k = kept_visual_tokens(total, visual.keep)
    positions = image.nonzero()[:, 1].view(batch, total)  # image positions of each row, in order
    if visual.rank == RANK_ATTENTION:
        scores = runtime.stash.get(_SCORES)
        if scores is None:
            raise RuntimeError(f"visual_tokens rank 'attention': layer {visual.rank_layer} did not score the image "
                               "tokens in the call that holds the prompt")
        order = torch.sort(scores.cpu().float().gather(1, positions), dim=1, descending=True, stable=True).indices
        chosen = positions.gather(1, order[:, :k])
    else:
        pick = ((torch.arange(k, dtype=torch.float64) + 0.5) * total / max(k, 1)).floor().long()
        chosen = positions[:, pick]
    keep = (~image).scatter(1, chosen, True)  # text positions and the chosen image positions
    memo[_KEPT] = keep.nonzero()[:, 1].view(batch, -1)
    return memo[_KEPT]


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def _stored(cache: Any, slot: int) -> int:
    """Keys cache slot ``slot`` holds now (0 before its first update)."""
    layers = getattr(cache, "layers", None)
    if layers is None or slot >= len(layers):
        return 0
    keys = getattr(layers[slot], "keys", None)
    return int(keys.shape[-2]) if torch.is_tensor(keys) and keys.dim() == 4 else 0


def _image_blocks(call: CallPositions) -> torch.Tensor | None:
    """batch x P: for each absolute prompt position, the index of the image (run of consecutive
    image tokens) it belongs to, ``-1`` for text; ``None`` without images. Memoised per generation."""
    memo = call._generation_memo
    if "image_blocks" not in memo:
        image = call.image
        if image is None:
            memo["image_blocks"] = None
        else:
            starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
            memo["image_blocks"] = torch.where(image, starts.long().cumsum(1) - 1, -1)
    return memo["image_blocks"]


def _block_of(blocks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The image block of each absolute position (``-1`` past the prompt: generated tokens are text)."""
    width = int(positions.max()) + 1 if positions.numel() else 0
    if blocks.shape[1] < width:
        blocks = torch.nn.functional.pad(blocks, (0, width - blocks.shape[1]), value=-1)
    return blocks.expand(positions.shape[0], -1).gather(1, positions)


def _visibility_mask(queries: torch.Tensor, keys: torch.Tensor, padding: torch.Tensor | None, window: int | None,
                     like: Any = None, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """batch x 1 x queries x keys mask from absolute positions: causal, sliding window, padding;
    boolean, or additive in ``like``'s dtype when ``like`` is a float mask; on ``like``'s device
    (else the queries'). With ``blocks`` (:func:`_image_blocks`; Gemma 3) an image token also
    sees the later tokens of its own image, as the model's masks let it."""
    device = like.device if torch.is_tensor(like) else queries.device
    q, k = queries.to(device).unsqueeze(-1), keys.to(device).unsqueeze(-2)
    visible = k <= q
    if blocks is not None:
        blocks = blocks.to(device)
        bq, bk = _block_of(blocks, queries.to(device)).unsqueeze(-1), _block_of(blocks, keys.to(device)).unsqueeze(-2)
        visible |= (bq == bk) & (bq >= 0)
    if window is not None:
        visible &= (q - k) < window
    if padding is not None:
        visible &= padding.to(device).gather(1, keys.to(device)).bool().unsqueeze(1)
    visible |= ~visible.any(-1, keepdim=True)  # a padding query sees every key (no NaN)
    visible = visible.unsqueeze(1)
    if torch.is_tensor(like) and like.is_floating_point():
        return torch.zeros(visible.shape, dtype=like.dtype, device=device).masked_fill(~visible, torch.finfo(like.dtype).min)
    return visible


# --------------------------------------------------------------------------------------
# Ranking image tokens by attention (FastV)
# --------------------------------------------------------------------------------------


class _Capture:
    """Forward hooks that keep the last outputs of a layer's q and k projections."""

    def __init__(self, adapter: "ArchAdapter", layer: Any):
        self.adapter, self.layer = adapter, layer
        linears = adapter.attn_linears(layer)
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [linears[name].register_forward_hook(functools.partial(self._keep, name)) for name in ("q", "k")]

    def _keep(self, name: str, module: Any, args: Any, output: torch.Tensor) -> None:
        self.outputs[name] = output

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def scores(self, call: CallPositions, kwargs: dict, window: int | None) -> torch.Tensor:
        """batch x prompt: the attention probabilities (mean over heads) of the last prompt
        token's query over the prompt's keys."""
        n = call.prompt_length
        q_out, k_out = self.outputs.get("q"), self.outputs.get("k")
        if q_out is None or k_out is None or q_out.shape[1] < n or k_out.shape[1] < n:
            raise RuntimeError("visual_tokens rank 'attention' needs the ranking layer's attention over the whole prompt, "
                               "but its q/k projections did not run for every prompt position")
        heads, kv_heads, head_dim = self.adapter.attn_geometry(self.layer)
        q = self.adapter.query_norm(self.layer, to_heads(q_out[:, n - 1: n], heads, head_dim))
        k = self.adapter.key_norm(self.layer, to_heads(k_out[:, :n], kv_heads, head_dim))
        rope = kwargs.get("position_embeddings")
        if rope is not None:
            cos, sin = rope
            q = _rotate(q, cos[:, n - 1: n], sin[:, n - 1: n])
            k = _rotate(k, cos[:, :n], sin[:, :n])
        scaling = attention_scaling(self.adapter.attention(self.layer), head_dim)
        logits = torch.matmul(q, repeat_kv(k, heads).transpose(-1, -2)).float() * scaling  # batch x heads x 1 x n
        cap = self.adapter.attn_softcap(self.layer)
        if cap is not None:
            logits = softcap(logits, cap)
        batch = q.shape[0]
        keys = torch.arange(n, device=q.device).expand(batch, n)
        visible = _visibility_mask(keys[:, n - 1:], keys, call.padding, window)  # batch x 1 x 1 x n
        return logits.masked_fill(~visible, float("-inf")).softmax(-1).mean(1).squeeze(1)
