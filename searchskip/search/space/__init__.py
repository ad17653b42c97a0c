"""Search spaces, version 1: which decisions about a plan the search makes.

A space file says which :class:`~searchskip.plan.Plan` s a search may try. A search suggests
one plan per trial with optuna's define-by-run API (:meth:`Space.suggest`); every decision
is an optuna parameter with a stable name, so a study can be resumed and known plans can be
enqueued (:meth:`Space.params_for`). Two kinds of space exist, chosen by ``kind``.

**kind: per_layer** (the default): a free choice of op for every searchable decoder layer::

    version: 1
    kind: per_layer                        # optional, per_layer is the default
    layers: {from: 0, to: -1}              # searchable layers, both ends inclusive (the default:
                                           # every layer; the search learns which ones are vital);
                                           # negative counts from the end (-1 is the last layer);
                                           # or a list such as [2, 4, -3]
    ops: [keep, skip_block, skip_attn, skip_ffn, parallel_attn_ffn, skip_ffn@visual]
                                           # choices of every searchable layer; op@scope: the op
                                           # with its own token scope
    scope: [all, generated]                # the scope of every op written without one: a list
                                           # is searched, a string is fixed (default: all)
    average: false                         # parallel_blocks averages the two blocks (only with
                                           # parallel_blocks among the ops)
    prune:                                 # optional; see below
    visual_tokens:                         # optional; see below
    early_exit:                            # optional; see below

Layers outside ``layers`` always keep their computation. With ``parallel_blocks`` among the
ops, layers are decided in increasing order: when layer ``i`` takes ``parallel_blocks``,
layer ``i + 1`` is its partner and keeps (its parameter is not suggested in that trial, a
conditional parameter); ``parallel_blocks`` is offered at layer ``i`` only when ``i + 1`` is
searchable too, so the partner always lies inside ``layers``.

**Scopes per op.** An op written alone (``skip_block``) takes the plan-wide ``scope`` decision,
one scope for all such ops of a plan; ``op@scope`` (``skip_block@visual``: the image tokens
frozen, ``skip_ffn@visual``: they get attention only) is that op with its own scope, whatever
``scope`` says, so one plan can mix scopes (image tokens frozen in some layers, whole layers
skipped in others: ``spaces/joint.yaml``). ``keep`` takes no scope, and an ``op@scope`` may not
repeat what ``op`` under a ``scope`` value already offers. The parameter stays ``layer_XX.op``;
its values are the entries as written.

**kind: paper**: the seed paper's interval plans, :meth:`Plan.from_pattern
<searchskip.plan.Plan.from_pattern>` (op ``mode`` on every layer ``i`` with
``start_layer < i < end_layer`` and ``i % skip_interval == 0``)::

    version: 1
    kind: paper
    mode: [skip_block, skip_attn, skip_ffn, parallel_attn_ffn, parallel_blocks]
    skip_interval: {low: 2, high: 4}       # an integer, a list of integers or {low, high, step}
    start_layer: {low: 0, high: -4, step: 4}   # likewise (default 0); exclusive bound
    end_layer: null                        # likewise; exclusive bound; null (default): num_layers
    scope: [all, generated]
    average: true                          # parallel_blocks averages the two blocks (the paper's variant)
    prune:                                 # optional; see below
    visual_tokens:                         # optional; see below
    early_exit:                            # optional; see below

``start_layer`` and ``end_layer`` may be negative, counted from the end (``-4`` is
``num_layers - 4``), so that one space fits models of any depth. A range ``{low, high,
step}`` of integers offers ``low, low + step, ...`` up to ``high`` (``step`` defaults to 1).

**prune** (both kinds; pruning applies to every layer, whatever ``layers`` says)::

    prune:
      method: [none, magnitude, wanda]     # none: no pruning in that trial
      structure: [unstructured, "2:4", ffn_channels]   # quote "2:4" (YAML reads 2:4 as 124)
      sparsity: {low: 0.1, high: 0.7, step: 0.1}       # a number, a list of numbers or {low, high, step}
      targets: [attn, ffn]                 # fixed, not searched; ffn_channels always prunes [ffn]
      calibration: {samples: 128, seed: 0} # fixed, for wanda (optional)

``structure: "2:4"`` keeps 2 of every 4 weights, so its sparsity is 0.5 and ``sparsity`` is
suggested only for the other structures (another conditional parameter). ``sparsity`` is
required unless every structure is ``"2:4"`` (then it must be left out). Sparsity ranges
need a ``step``: every space is finite, so that equal plans are met again and their scores
reused, and so that :meth:`Space.size` and :meth:`Space.grid` exist.

**visual_tokens** and **early_exit** (both kinds; optional), the plan keys of the same names::

    visual_tokens:
      keep: [1.0, 0.5, 0.25, 0.0]          # a number, a list of numbers or {low, high, step}, in [0, 1];
                                           # 1.0: no token dropping in that trial
      after_layer: {low: 1, high: -2}      # an integer, a list or {low, high, step}; negative counts from
                                           # the end; resolved, 0 <= after_layer < num_layers
      rank: [attention, uniform]           # a string or a list (default: attention)
    early_exit:
      layer: [none, -3, -2]                # none: no early exit in that trial; integers (negative count
                                           # from the end; resolved, 0 <= layer < num_layers - 1) or a range
      scope: generated                     # optional, fixed: generated is the only scope of early_exit

``keep`` must offer a value below 1 and ``layer`` a layer besides ``none`` (else the section
never changes a plan). ``after_layer`` and ``rank`` are not suggested after ``keep: 1.0``
(conditional parameters, like ``prune.sparsity`` after ``method: none``).

**Token keys after layer ops.** Every suggested plan is valid, and a parameter's choices are the
same in every trial, so conflicts between the token keys and the layer ops are resolved by
fixed rules, as functions of the parameters. The layer ops (and ``scope``, then ``prune``) are
suggested first, then ``visual_tokens.keep``, ``visual_tokens.after_layer``,
``visual_tokens.rank`` and ``early_exit.layer``, in that order:

1. *Pairs straddling a boundary move it.* A ``parallel_blocks`` pair at layers ``p, p + 1``
   must see the same tokens in both layers. When the suggested ``after_layer`` is ``p + 1``,
   the plan drops tokens from ``p + 2`` instead; when the suggested exit layer is ``p``,
   generated tokens exit after ``p + 1`` instead. When the moved boundary leaves the model
   (``after_layer`` reaching ``num_layers``, or the exit layer ``num_layers - 1``, where
   exiting is no exit) the plan has no ``visual_tokens`` / no ``early_exit`` in that trial.
   Only a suggested ``after_layer == num_layers - 1`` or exit layer ``num_layers - 2`` can
   move out of the model.
2. *rank needs attention over the prompt, and tokens to rank.* ``rank: attention`` ranks image
   tokens by the attention of layer ``after_layer - 1`` (the moved ``after_layer``). When there
   is no such layer (``after_layer`` 0), when that layer skips its attention for prompt positions
   (``skip_block`` or ``skip_attn`` with a scope other than ``generated``), or when ``keep`` is 0
   (every image token goes, so nothing is ranked, and plans store ``rank: uniform`` then),
   ``visual_tokens.rank`` is not suggested in that trial and the plan uses ``rank: uniform``,
   whatever ``rank`` offers.

So different parameters may give the same plan; :meth:`Space.size` counts distinct plans, and
:meth:`Space.params_for` returns the first parameters (in the order of the values) giving one.

**Choices.** A list is searched; a single value is fixed. A decision with a single possible
value (a string, a one-item list, a range with ``low == high``) is not an optuna parameter.

**Parameter names** (stable: they depend only on the space and the layer count):
``layer_03.op`` (layer index, at least two digits), ``scope``, ``paper.mode``,
``paper.skip_interval``, ``paper.start_layer``, ``paper.end_layer``, ``prune.method``,
``prune.structure``, ``prune.sparsity``, ``visual_tokens.keep``, ``visual_tokens.after_layer``,
``visual_tokens.rank``, ``early_exit.layer``. Layer values (``paper.start_layer``,
``visual_tokens.after_layer``, ``early_exit.layer``...) are resolved layer indices, never negative.
Integer ranges use ``trial.suggest_int``, number ranges (sparsity, keep)
``trial.suggest_float(..., step=...)``, everything else ``trial.suggest_categorical``.

**Conditional parameters and samplers.** ``layer_XX.op`` of a ``parallel_blocks`` partner,
``prune.structure`` and ``prune.sparsity`` after ``method: none``, ``prune.sparsity``
after ``"2:4"``, ``visual_tokens.after_layer`` and ``visual_tokens.rank`` after ``keep: 1.0``,
``visual_tokens.rank`` where rule 2 above applies (or where rule 1 left the token dropping out)
are not suggested; TPE and the random sampler handle that. optuna's
``GridSampler`` cannot discover parameters by itself: it needs the grid form,
``GridSampler(space.grid(num_layers))``, which lists every parameter the space may suggest
with all its values. Grid points that differ only in a parameter the trial did not use give
the same plan, so a full grid visits every one of the :meth:`Space.size` distinct plans,
some more than once.

**Checks.** :meth:`Space.load` / :meth:`Space.from_dict` check the structure and raise one
:class:`~searchskip.errors.ConfigError` listing every problem with its dotted key
(``prune.sparsity.high``, ``ops[2]``, ``visual_tokens.keep[1]``). What depends on the model's
layer count (negative indices, ``from <= to``, ``start_layer < end_layer``,
``visual_tokens.after_layer`` and ``early_exit.layer`` within the model) is checked by :meth:`Space.check`,
which :meth:`Space.suggest` and the other methods taking ``num_layers`` call first.
"""

from __future__ import annotations

from searchskip.search.space.base import Space
from searchskip.search.space.choices import (
    EarlyExitChoices, FloatRange, IntRange, LayerRange, PruneChoices, VisualTokensChoices,
)
from searchskip.search.space.file_form import SPACE_KEYS
from searchskip.search.space.kinds import register
from searchskip.search.space.names import (
    NO_EXIT, NO_PRUNE, PARAM_END_LAYER, PARAM_EXIT_LAYER, PARAM_MODE, PARAM_PRUNE_METHOD, PARAM_PRUNE_SPARSITY,
    PARAM_PRUNE_STRUCTURE, PARAM_SCOPE, PARAM_SKIP_INTERVAL, PARAM_START_LAYER, PARAM_VISUAL_AFTER_LAYER,
    PARAM_VISUAL_KEEP, PARAM_VISUAL_RANK, PRUNE_CHOICES, SPACE_KINDS, SPACE_VERSION, layer_param,
)
from searchskip.search.space.paper import PAPER_KIND, PaperSpace
from searchskip.search.space.per_layer import PER_LAYER_KIND, PerLayerSpace

# ---- the kinds: one line each (Space.from_dict builds the kind a file names) -------------
register(PER_LAYER_KIND)
register(PAPER_KIND)
# ----------------------------------------------------------------------------------------

__all__ = [
    "SPACE_VERSION", "SPACE_KINDS", "SPACE_KEYS", "NO_PRUNE", "PRUNE_CHOICES",
    "PARAM_SCOPE", "PARAM_MODE", "PARAM_SKIP_INTERVAL", "PARAM_START_LAYER", "PARAM_END_LAYER",
    "PARAM_PRUNE_METHOD", "PARAM_PRUNE_STRUCTURE", "PARAM_PRUNE_SPARSITY", "layer_param",
    "NO_EXIT", "PARAM_VISUAL_KEEP", "PARAM_VISUAL_AFTER_LAYER", "PARAM_VISUAL_RANK", "PARAM_EXIT_LAYER",
    "IntRange", "FloatRange", "LayerRange", "PruneChoices", "VisualTokensChoices", "EarlyExitChoices",
    "Space", "PerLayerSpace", "PaperSpace",
]
