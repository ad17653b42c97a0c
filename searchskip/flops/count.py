"""Analytic FLOP count of one sample under a plan (see :mod:`searchskip.flops` for the rules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searchskip.flops.geometry import ArchGeometry, DecoderLayerGeometry, Linear, geometry_of
from searchskip.flops.report import ATTENTIONS, COUNTS, RANK_SCORES, Depth, FlopEntry, FlopReport, ParamCount
from searchskip.flops.workload import Workload
from searchskip.plan import (
    PARALLEL_ATTN_FFN,
    PARALLEL_BLOCKS,
    SKIP_ATTN,
    SKIP_BLOCK,
    SKIP_FFN,
    Plan,
    PruneSpec,
    kept_visual_tokens,
)

__all__ = [
    "PRE", "IMAGE", "POST", "GEN", "CLASSES", "PROMPT_CLASSES", "SCOPE_CLASSES",
    "LayerExec", "layer_execution", "kv_classes", "count_flops", "kept_ffn_channels",
]

# ---- position classes ------------------------------------------------------------------
PRE, IMAGE, POST, GEN = "text_before_image", "image", "text_after_image", "generated"
CLASSES = (PRE, IMAGE, POST, GEN)
"""Every position of a sample falls in one class, in this order (see :mod:`searchskip.flops.workload`)."""
PROMPT_CLASSES = frozenset((PRE, IMAGE, POST))
ALL = frozenset(CLASSES)
NONE: frozenset[str] = frozenset()

SCOPE_CLASSES: dict[str, frozenset[str]] = {
    "all": ALL,
    "generated": frozenset((GEN,)),
    "prompt": PROMPT_CLASSES,
    "non_visual": frozenset((PRE, POST, GEN)),
    "visual": frozenset((IMAGE,)),
}
"""Plan scope -> the position classes it covers."""


@dataclass(frozen=True)
class LayerExec:
    """What one decoder layer computes, per position class.

    * ``q``: classes whose attention runs: q and o projections and the attention of their
      queries (each over its causal prefix of keys);
    * ``kv``: classes whose k and v are projected (and cached): every position up to the
      last one whose query runs ("only where a computed query, of this call or a later one,
      needs them", as :mod:`searchskip.ops.scope` computes it). Which classes have
      positions depends on the workload, so :func:`count_flops` narrows this further with
      :func:`kv_classes`;
    * ``ffn``: classes that run the FFN;
    * ``parallel``: classes for which attention and FFN read the same input (depth 1);
    * ``pair``: classes for which this layer and the next run side by side (parallel_blocks);
    * ``image_keep``: the plan's ``visual_tokens.keep`` at layers ``after_layer ..`` (the
      image class then has :func:`~searchskip.plan.kept_visual_tokens` positions and every
      later position shifts left), ``None`` where every image token is in the sequence;
    * ``rank``: the layer computes ``visual_tokens``' ranking scores (``rank: attention``, at
      layer ``after_layer - 1``): the last prompt query against the keys of every prompt position;
    * ``exited``: classes that left the decoder before this layer (``early_exit``: the
      generated class after layer ``early_exit.layer``); they are in none of ``q``, ``kv``, ``ffn``.
    """

    index: int
    op: str
    scope: str
    q: frozenset[str]
    kv: frozenset[str]
    ffn: frozenset[str]
    parallel: frozenset[str] = NONE
    pair: frozenset[str] = NONE
    image_keep: float | None = None
    rank: bool = False
    exited: frozenset[str] = NONE

    @property
    def label(self) -> str:
        """The layer's op (with its scope when not ``all``), then what the plan's token keys do
        there: ``keep``, ``skip_ffn [prompt], 50% image tokens, generated exited``,
        ``keep, ranks image tokens``; ``dropped`` for a dropped layer."""
        if self.op == "dropped":
            return self.op
        notes = [self.op if self.op == "keep" or self.scope == "all" else f"{self.op} [{self.scope}]"]
        if self.rank:
            notes.append("ranks image tokens")
        if self.image_keep is not None:
            notes.append(f"{self.image_keep:.0%} image tokens")
        notes.extend(f"{c} exited" for c in CLASSES if c in self.exited)
        return ", ".join(notes)

    def depth(self, cls: str) -> int:
        """Sequential sublayers this layer puts on the path of a position of class ``cls``."""
        attn, ffn = cls in self.q, cls in self.ffn
        return max(attn, ffn) if cls in self.parallel else attn + ffn


def layer_execution(plan: Plan, num_layers: int) -> tuple[LayerExec, ...]:
    """What every decoder layer computes under ``plan`` (checked against ``num_layers``).

    The plan's token keys act on the classes of every layer op: after ``early_exit.layer``
    the generated class leaves ``q`` and ``ffn`` (what ``skip_block`` with scope
    ``generated`` does, on top of the layer's own op); from ``visual_tokens.after_layer`` on
    the layer carries ``image_keep``, and ``rank: attention`` marks layer ``after_layer - 1``.
    """
    plan.validate(num_layers)
    dropped = plan.dropped_layers()
    visual, early = plan.visual_tokens, plan.early_exit
    out = []
    for i in range(num_layers):
        if i in dropped:
            out.append(LayerExec(i, "dropped", "all", NONE, NONE, NONE))
            continue
        op = plan.op_for(i)
        scope = SCOPE_CLASSES[op.scope]
        exited = SCOPE_CLASSES[early.scope] if early is not None and early.exits_before(i) else NONE
        q = (ALL - scope if op.op in (SKIP_BLOCK, SKIP_ATTN) else ALL) - exited
        ffn = (ALL - scope if op.op in (SKIP_BLOCK, SKIP_FFN) else ALL) - exited
        kv = kv_classes(q)
        out.append(LayerExec(
            i, op.op, op.scope, frozenset(q), frozenset(kv), frozenset(ffn),
            parallel=scope if op.op == PARALLEL_ATTN_FFN else NONE,
            pair=scope if op.op == PARALLEL_BLOCKS else NONE,
            image_keep=visual.keep if visual is not None and visual.reduces(i) else None,
            rank=visual is not None and i == visual.rank_layer,
            exited=exited,
        ))
    return tuple(out)


# ---- pruning -----------------------------------------------------------------------------


def kept_ffn_channels(channels: int, sparsity: float) -> int:
    """FFN channels left by ``ffn_channels`` pruning: ``round(sparsity * channels)`` removed
    (Python rounding, ties to even), at least one kept. :mod:`searchskip.ops.prune` calls this
    to decide how many channels to remove, so the count and the pruning share one rule."""
    if sparsity <= 0:
        return channels
    return channels - min(round(sparsity * channels), channels - 1)


def _zeroed(prune: PruneSpec, sparsity: float, lin: Linear) -> int:
    """Weights of ``lin`` that unstructured / 2:4 pruning zeroes (as searchskip.ops.prune does)."""
    if sparsity <= 0 or prune.structure == "ffn_channels":
        return 0
    if prune.structure == "2:4":
        return lin.weights // 2
    if prune.method == "wanda":  # per output row
        return lin.out_features * round(sparsity * lin.in_features)
    return round(sparsity * lin.weights)  # magnitude: the whole matrix


def _pruned_layer(g: DecoderLayerGeometry, prune: PruneSpec | None,
                  i: int) -> tuple[dict[str, Linear], dict[str, float], int, int]:
    """``(linears by name after structured pruning, kept fraction by name, params removed,
    weights zeroed)`` of decoder layer ``i``."""
    linears = {lin.name: lin for lin in g.attn + g.mlp}
    kept = {name: 1.0 for name in linears}
    removed = zeroed = 0
    if prune is None:
        return linears, kept, removed, zeroed
    s = prune.sparsity_for(i)
    if s <= 0:
        return linears, kept, removed, zeroed
    if prune.structure == "ffn_channels":
        channels = g.ffn_channels
        c = kept_ffn_channels(channels, s)
        for name in g.mlp_in_keys:
            old = linears[name]
            new = Linear(name, old.in_features, c, old.bias)
            removed += old.params - new.params
            linears[name] = new
        old = linears[g.mlp_out_key]
        new = Linear(old.name, c, old.out_features, old.bias)
        removed += old.params - new.params
        linears[g.mlp_out_key] = new
        return linears, kept, removed, zeroed
    for role, group in (("attn", g.attn), ("ffn", g.mlp)):
        if role not in prune.targets:
            continue
        for lin in group:
            z = _zeroed(prune, s, lin)
            zeroed += z
            kept[lin.name] = 1.0 - z / lin.weights
    return linears, kept, removed, zeroed


# ---- causal key counts ---------------------------------------------------------------------


def causal_pairs(start: float, end: float, window: int | None) -> float:
    """Sum over query positions ``p`` in ``[start, end)`` of the keys ``p`` attends to under a
    causal mask, ``min(p + 1, window)``: ``F(end) - F(start)`` with ``F(x) = x(x+1)/2``
    (and, past a sliding window ``W``, ``F(x) = W(W+1)/2 + (x - W) W``)."""
    def f(x: float) -> float:
        if window is None or x <= window:
            return x * (x + 1) / 2
        return window * (window + 1) / 2 + (x - window) * window

    return f(end) - f(start) if end > start else 0.0


def image_block_pairs(tokens: float) -> float:
    """Pairs a bidirectional image (Gemma 3) adds to the causal count: each of its ``tokens`` image
    queries also sees the later tokens of its image, ``tokens (tokens - 1) / 2`` in all (a sliding
    window bounds only the keys behind a query, so it removes none of them)."""
    return tokens * (tokens - 1) / 2


def kv_classes(q: frozenset[str], sizes: dict[str, float] | None = None) -> frozenset[str]:
    """The classes whose K/V are projected when the queries of classes ``q`` run: every class
    up to the last one (in position order) whose queries run. With ``sizes``, a prompt class
    without positions does not count as running (a text-only model under ``non_visual`` has
    no image queries, so nothing is projected); the generated class always counts, since the
    prefill cannot know whether decode steps follow."""
    last = -1
    for k, c in enumerate(CLASSES):
        if c in q and (sizes is None or c == GEN or sizes[c] > 0):
            last = k
    return frozenset(CLASSES[: last + 1])


# ---- the count ---------------------------------------------------------------------------------


def count_flops(
    arch: Any,
    plan: Plan | None,
    workload: Workload,
    *,
    count: str = "dense",
    attention: str = "causal",
) -> FlopReport:
    """FLOPs of one sample of ``workload`` through the model of ``arch`` under ``plan``.

    ``arch``: anything :func:`~searchskip.flops.geometry.geometry_of` takes (a config, a
    config dict or path, an :class:`~searchskip.flops.geometry.ArchGeometry`). ``plan``:
    ``None`` is the unplanned model. ``count`` (``dense`` | ``sparse``) and ``attention``
    (``causal`` | ``kernel``) pick the convention of :attr:`FlopReport.total_flops`; the
    report holds all four figures whatever they are.
    """
    if count not in COUNTS:
        raise ValueError(f"count must be one of {', '.join(COUNTS)}, but got {count!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, but got {attention!r}")
    geometry: ArchGeometry = geometry_of(arch)
    plan = Plan() if plan is None else plan
    vision = geometry.vision
    workload = workload.resolve(vision)
    if workload.variants:  # samples differ (images at their own resolution): each counted exactly
        parts = [(w, count_flops(geometry, plan, v, count=count, attention=attention)) for w, v in workload.variants]
        return FlopReport.weighted(parts, workload)
    execs = layer_execution(plan, geometry.num_layers)

    n_img = workload.image_positions()
    before = workload.text_before_image if n_img else 0.0
    kept = kept_visual_tokens(n_img, plan.visual_tokens.keep) if plan.visual_tokens is not None else n_img
    prompt = workload.prompt_length
    decode = workload.decode_steps

    def positions(image: int) -> tuple[dict[str, float], dict[str, float]]:
        """``(sizes, starts)`` of the classes when ``image`` image positions are in the sequence."""
        sizes = {PRE: before, IMAGE: float(image), POST: workload.prompt_tokens - before, GEN: decode}
        starts = {PRE: 0.0, IMAGE: before, POST: before + image, GEN: workload.prompt_tokens + image}
        return sizes, starts

    layer_positions = [positions(n_img if ex.image_keep is None else kept) for ex in execs]

    entries: list[FlopEntry] = []

    def add(component: str, layer: int | None, part: str, dense: float, sparse: float | None = None,
            kernel: float | None = None) -> None:
        if dense or (kernel or 0):
            entries.append(FlopEntry(component, layer, part, float(dense),
                                     float(dense if sparse is None else sparse),
                                     float(dense if kernel is None else kernel)))

    # ---- vision tower and projector (once per image) ----
    if vision is not None and workload.images:
        for j, part, flops in vision.entries(workload.images, workload.image_shape):
            add("vision", j, part, flops)
        projected = workload.images * vision.projector_tokens(workload.image_shape)
        for lin in vision.projector:
            add("projector", None, lin.name, projected * lin.flops_per_token)

    # ---- decoder layers ----
    removed_params = zeroed_weights = 0
    for ex, g, (sizes, starts) in zip(execs, geometry.layers, layer_positions):
        i = ex.index
        if ex.op == "dropped":
            continue
        linears, kept_fraction, removed, zeroed = _pruned_layer(g, plan.prune, i)
        removed_params += removed
        zeroed_weights += zeroed
        per_pair = 2 * g.heads * g.head_dim  # one of: q.k scores, weighted sum of v
        if ex.rank and n_img:
            # visual_tokens' ranking: the last prompt query against the keys of all S prompt
            # positions, q (H, 1, hd) @ k^T (H, hd, S), as computed (no mask, no window)
            add("llm_prefill", i, RANK_SCORES, per_pair * prompt)
        for component, classes in (("llm_prefill", PROMPT_CLASSES), ("llm_decode", frozenset((GEN,)))):
            def n(which: frozenset[str]) -> float:
                return sum(sizes[c] for c in which & classes)

            n_q, n_kv, n_ffn = n(ex.q), n(kv_classes(ex.q, sizes)), n(ex.ffn)
            for name in ("q", "k", "v", "o"):
                lin = linears[name]
                tokens = n_kv if name in ("k", "v") else n_q
                dense = tokens * lin.flops_per_token
                add(component, i, name, dense, dense * kept_fraction[name])
            causal = sum(causal_pairs(starts[c], starts[c] + sizes[c], g.sliding_window) for c in ex.q & classes)
            if geometry.bidirectional_images and IMAGE in ex.q & classes and workload.images:
                causal += workload.images * image_block_pairs(sizes[IMAGE] / workload.images)
            if component == "llm_prefill":
                # one call: every computed query against every key projected in it (the whole
                # S x S square for a full prefill; the causal / window mask is applied, not skipped)
                kernel = n_q * n_kv
            else:
                kernel = causal  # one query per step against the cached keys (a sliding cache keeps W)
            for part in ("scores", "weighted_sum"):
                add(component, i, part, per_pair * causal, per_pair * causal, per_pair * kernel)
            for lin0 in g.mlp:
                lin = linears[lin0.name]
                dense = n_ffn * lin.flops_per_token
                add(component, i, lin.name, dense, dense * kept_fraction[lin.name])

    # ---- linears of the language model outside its layers, and lm_head ----
    for lin in geometry.extra_linears:
        add("llm_prefill", None, lin.name, prompt * lin.flops_per_token)
        add("llm_decode", None, lin.name, decode * lin.flops_per_token)
    add("lm_head", None, "lm_head", workload.generated_tokens * geometry.lm_head.flops_per_token)

    dropped_params = sum(geometry.layers[i].params for i in plan.dropped_layers())
    stored = geometry.params_total - dropped_params - removed_params
    params = ParamCount(total=geometry.params_total, stored=stored, nonzero=stored - zeroed_weights)
    return FlopReport(
        entries=tuple(entries), workload=workload, plan=plan, arch=geometry.name,
        layer_ops=tuple(ex.label for ex in execs), depth=_depth(execs, [sizes for sizes, _ in layer_positions]),
        params=params, count=count, attention=attention,
    )


def _depth(execs: tuple[LayerExec, ...], sizes: list[dict[str, float]]) -> Depth:
    """Sequential decoder sublayers on the longest path of the prefill (over the prompt's
    classes present at each layer, ``sizes[i]``: image tokens ``visual_tokens`` dropped are
    not on the path) and of one decode step (generated tokens that exited are not either)."""
    def phase(classes: list[list[str]]) -> int:
        total, i = 0, 0
        while i < len(execs):
            ex = execs[i]
            if ex.pair and i + 1 < len(execs):  # a pair never straddles a token boundary (Plan checks it)
                nxt = execs[i + 1]
                total += max((max(ex.depth(c), nxt.depth(c)) if c in ex.pair else ex.depth(c) + nxt.depth(c))
                             for c in classes[i])
                i += 2
            else:
                total += max(ex.depth(c) for c in classes[i])
                i += 1
        return total

    prompt = [[c for c in (PRE, IMAGE, POST) if s[c] > 0] or [POST] for s in sizes]
    return Depth(prefill=phase(prompt), decode=phase([[GEN]] * len(execs)))
