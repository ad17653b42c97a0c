"""Compression plans, version 1: what to skip, parallelize, drop or prune in the LLM inside an MLLM.

A plan says, per decoder layer of the language model, which computation to change and for
which tokens. Like torchao's configs, a plan is a frozen, hashable dataclass that serializes
to a plain versioned dict (and to YAML or JSON), and equal plans are equal objects with the
same stable :meth:`Plan.key`. The YAML form, for a model with 32 decoder layers::

    version: 1
    scope: all                    # default token scope of the layer ops below
    layers:                       # decoder layer index -> op (a layer not listed keeps its computation)
      3: skip_block
      5: skip_ffn
      7: {op: skip_attn, scope: generated}
      9: parallel_attn_ffn
      12: parallel_blocks         # layers 12 and 13 run on the same input
      14: {op: parallel_blocks, average: true}
    drop: {start: 20, end: 24}    # remove layers 20, 21, 22 and 23
    prune:
      method: wanda               # magnitude | wanda
      structure: unstructured     # unstructured | "2:4" | ffn_channels
      sparsity: 0.3               # one ratio for every layer, or {layer: ratio}
      targets: [attn, ffn]
      calibration: {samples: 128, seed: 0}
    visual_tokens: {after_layer: 2, keep: 0.5, rank: attention}   # attention | uniform
    early_exit: {layer: 27, scope: generated}

Layer indices are those of the original model, numbered from 0, whatever ``drop`` removes.

**Ops** (:data:`OPS`), for the tokens of the op's scope:

* ``keep``: run the layer as it is (the same as leaving the layer out).
* ``skip_block``: skip the whole decoder layer; the hidden state passes through unchanged.
* ``skip_attn`` / ``skip_ffn``: skip the self-attention / the feed-forward sub-layer only.
* ``parallel_attn_ffn``: attention and FFN of the layer both read the layer's input
  (``x + attn(x) + ffn(x)``) instead of running one after the other.
* ``parallel_blocks``: layers ``i`` and ``i + 1`` both read the input of layer ``i``, and
  their residual updates are added; with ``average: true`` their outputs are averaged
  instead (the paper's variant). Layer ``i + 1`` must then have no op of its own.

**Scopes** (:data:`SCOPES`), the token positions an op applies to (the others run the layer
normally): ``all``; ``generated``: tokens produced while decoding (the prompt's prefill is
untouched); ``prompt``: the prompt's positions only; ``non_visual``: every position except
the image tokens; ``visual``: the image tokens only (ShortV's frozen image tokens: they get no
attention output and/or FFN there, while text and generated tokens still attend to them).
``drop`` and ``prune`` change the weights, so they apply to every token.

**drop** ``{start, end}`` removes layers ``start .. end - 1`` (half-open, like ``range``).

**visual_tokens** ``{after_layer: k, keep: r, rank}``: from layer ``k`` on, only a fraction
``r`` of the image tokens stays in the sequence (``r = 0`` drops them all, as the seed paper's
``exit`` mode); ``rank: attention`` (default; needs ``k >= 1``) keeps those the last prompt
token attended to most at layer ``k - 1`` (FastV), ``uniform`` an evenly spaced subset. Later layers neither
compute nor cache the dropped positions (:mod:`searchskip.ops.tokens`).

**early_exit** ``{layer: e, scope: generated}``: generated tokens leave the decoder after
layer ``e`` (final norm, ``lm_head``); the layers after ``e`` run for the prompt only.

**prune**: ``magnitude`` (smallest weights) or ``wanda`` (weights times input activation
norms, which needs ``calibration`` samples) at ``sparsity`` (a fraction in ``[0, 1)``, or a
per-layer map; layers not in the map are not pruned) with ``structure`` ``unstructured``,
``"2:4"`` (2 of every 4 weights kept, so sparsity 0.5; quote it, YAML reads 2:4 as the
number 124) or ``ffn_channels`` (whole FFN intermediate channels, so ``targets: [ffn]``).

**Canonical form.** Plans are normalised when built, so that plans with the same behaviour
compare and hash equal however they were written:

* ``layers`` is a tuple of ``(index, LayerOp)`` sorted by index; ``keep`` entries are removed.
* ``3: skip_block`` and ``3: {op: skip_block}`` are the same op.
* Scopes are resolved per op (the op's own ``scope``, else the plan's ``scope``); the plan's
  ``scope`` becomes the most common resolved scope among the ops (ties go to the earlier
  scope in :data:`SCOPES`; ``all`` when there is no op), and an op's ``scope`` is stored
  only when it differs from that default. So ``scope: generated`` with ``3: skip_block`` is
  the same plan as ``3: {op: skip_block, scope: generated}``.
* A ``visual_tokens`` with ``keep: 1`` keeps every token and is removed; with ``keep: 0`` it
  keeps none, so there is nothing to rank and its ``rank`` is ``uniform``.
* A prune whose sparsity is 0 everywhere prunes nothing and is removed; zero entries of a
  per-layer map are removed; targets are kept in the order of :data:`PRUNE_TARGETS`;
  ``wanda`` always has a calibration (defaults filled in), ``magnitude`` never has one.

:meth:`Plan.to_dict` writes the canonical form (short ``3: skip_block`` where an op has no
scope or option), and ``Plan.from_dict(p.to_dict()) == p`` for every plan.

**Validation.** Everything that can be checked without a model is checked when a plan is
built (from a file, a dict or the constructor) and reported as one
:class:`~searchskip.errors.ConfigError` listing every problem with its dotted key
(``layers.7.scope``, ``prune.sparsity``): unknown ops, scopes and keys, wrong types, ranges,
``parallel_blocks`` pairs that overlap another op or straddle ``visual_tokens.after_layer`` /
``early_exit.layer``, ops on dropped layers, a ``rank: attention`` whose layer ``k - 1`` does not
attend over the prompt. What needs the model's layer count is checked by :meth:`Plan.validate`.
"""

from __future__ import annotations

from searchskip.plan.core import Plan
from searchskip.plan.file_form import PLAN_KEYS
from searchskip.plan.names import (
    EXIT_SCOPES, KEEP, OPS, PARALLEL_ATTN_FFN, PARALLEL_BLOCKS, PLAN_VERSION, PRUNE_METHODS, PRUNE_STRUCTURES,
    PRUNE_TARGETS, RANK_ATTENTION, RANK_UNIFORM, SCOPE_ALL, SCOPE_GENERATED, SCOPE_NON_VISUAL, SCOPE_PROMPT,
    SCOPE_VISUAL, SCOPES, SKIP_ATTN, SKIP_BLOCK, SKIP_FFN, VISUAL_RANKS, ExitScope, OpName, PruneMethod, PruneStructure, PruneTarget,
    ScopeName, VisualRank,
)
from searchskip.plan.parts import (
    CalibrationSpec, DropSpec, EarlyExitSpec, LayerOp, PruneSpec, VisualTokensSpec, effective_rank,
    kept_visual_tokens, skips_prompt_attention,
)

__all__ = [
    "KEEP", "SKIP_BLOCK", "SKIP_ATTN", "SKIP_FFN", "PARALLEL_ATTN_FFN", "PARALLEL_BLOCKS", "OPS",
    "SCOPE_ALL", "SCOPE_GENERATED", "SCOPE_PROMPT", "SCOPE_NON_VISUAL", "SCOPE_VISUAL", "SCOPES",
    "PRUNE_METHODS", "PRUNE_STRUCTURES", "PRUNE_TARGETS", "PLAN_VERSION", "PLAN_KEYS",
    "RANK_ATTENTION", "RANK_UNIFORM", "VISUAL_RANKS", "EXIT_SCOPES", "VisualRank", "ExitScope",
    "VisualTokensSpec", "EarlyExitSpec", "kept_visual_tokens", "skips_prompt_attention", "effective_rank",
    "OpName", "ScopeName", "PruneMethod", "PruneStructure", "PruneTarget",
    "LayerOp", "DropSpec", "CalibrationSpec", "PruneSpec", "Plan",
]
