"""The token keys after the layer ops: rules 1 and 2 of :mod:`searchskip.search.space`. A
``parallel_blocks`` pair straddling the ``visual_tokens`` or ``early_exit`` boundary moves it
(:func:`_after_layer_past_pairs`, :func:`_exit_past_pairs`), and :class:`_TokenCount` counts the
distinct token outcomes over every sequence of layer ops at once, so that :meth:`Space.size
<searchskip.search.space.Space.size>` needs no enumeration of them.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Collection, Sequence

from searchskip.plan import PARALLEL_BLOCKS, LayerOp, Plan, skips_prompt_attention
from searchskip.search.space.choices import _Decision
from searchskip.search.space.names import _KEEP_ALL, NO_EXIT


def _after_layer_past_pairs(after_layer: int, pairs: Collection[int], num_layers: int) -> int | None:
    """Rule 1 for ``visual_tokens``: the layer tokens drop from, one later when a parallel_blocks pair
    starts at ``after_layer - 1`` (it would straddle the boundary); ``None`` when that is past the model."""
    moved = after_layer + 1 if after_layer - 1 in pairs else after_layer
    return moved if moved < num_layers else None


def _exit_past_pairs(layer: int, pairs: Collection[int], num_layers: int) -> int | None:
    """Rule 1 for ``early_exit``: the exit layer, one later when a parallel_blocks pair starts at it;
    ``None`` when that is the last layer (exiting after the last layer is no exit)."""
    moved = layer + 1 if layer in pairs else layer
    return moved if moved < num_layers - 1 else None


def _pair_starts(layers: Plan) -> frozenset[int]:
    return frozenset(i for i, op in layers.layers if op.op == PARALLEL_BLOCKS)


_Features = tuple[bool, bool]
"""What the token rules read of one layer: (a parallel_blocks pair starts there, it skips prompt attention)."""
_PLAIN: _Features = (False, False)


def _features(op: LayerOp) -> _Features:
    return op.op == PARALLEL_BLOCKS, skips_prompt_attention(op.op, op.scope)


@dataclass(frozen=True)
class _TokenCount:
    """Counts the distinct ``(visual_tokens, early_exit)`` outcomes of the token decisions on given
    layer ops, summed over many sequences of layer ops at once (:meth:`total`).

    Rules 1 and 2 make an outcome depend on two adjacent layers only: ``after_layer == t`` is an
    outcome when ``t`` is offered and no pair starts at ``t - 1``, or ``t - 1`` is offered and a pair
    starts at ``t - 2``; its ranks depend on layer ``t - 1`` (and on keep); ``after_layer == 0``
    depends on no layer. An exit after ``u`` is
    one when ``u`` is offered and no pair starts at ``u``, or ``u - 1`` is offered and a pair starts
    there. So the number of outcomes of each key is a constant plus a sum of per-layer terms, and
    :meth:`total` sums the product of both numbers over every sequence of layer ops by dynamic
    programming over the layers (the expansion of the product of two sums).
    """

    num_layers: int
    visual: tuple[_Decision, _Decision, _Decision] | None
    early: _Decision | None

    def _visual_base(self) -> int:
        """Outcomes that need no layer: no section (one outcome, none); keep 1.0 offered (none);
        ``after_layer`` 0 offered (no pair before it, and ``rank: uniform`` only) with each keep below 1."""
        if self.visual is None:
            return 1
        keep_d, after_d, _ = self.visual
        drops = sum(k != _KEEP_ALL for k in keep_d.values)
        return int(_KEEP_ALL in keep_d.values) + (drops if 0 in after_d.values else 0)

    def _exit_base(self) -> int:
        return 1 if self.early is None else int(NO_EXIT in self.early.values)

    def _visual_term(self, i: int, pair_before: bool, here: _Features) -> int:
        """Outcomes with ``after_layer == i + 1`` (and the 'no visual_tokens' outcome when only a pair
        at ``i`` pushing the offered ``after_layer == i + 1`` out of the model makes it)."""
        if self.visual is None:
            return 0
        keep_d, after_d, rank_d = self.visual
        pair, skips = here
        pairs = {layer for layer, starts in ((i - 1, pair_before), (i, pair)) if starts}
        resolved = {a: _after_layer_past_pairs(a, pairs, self.num_layers) for a in (i, i + 1) if a in after_d.values}
        if i + 1 in resolved.values():  # each keep below 1 with its ranks (one when rule 2 applies)
            count = sum(1 if skips or k == 0.0 else len(rank_d.values) for k in keep_d.values if k != _KEEP_ALL)
        else:
            count = 0
        if i + 1 in resolved and resolved[i + 1] is None and _KEEP_ALL not in keep_d.values:
            count += 1
        return count

    def _exit_term(self, i: int, pair_before: bool, here: _Features) -> int:
        """Outcomes with an exit after ``i`` (and the 'no early_exit' outcome when only a pair at ``i``
        pushing the offered exit ``i`` to the last layer makes it)."""
        if self.early is None:
            return 0
        pairs = {layer for layer, starts in ((i - 1, pair_before), (i, here[0])) if starts}
        resolved = {e: _exit_past_pairs(e, pairs, self.num_layers) for e in (i - 1, i) if e in self.early.values}
        count = int(i in resolved.values())
        if i in resolved and resolved[i] is None and not self._exit_base():
            count += 1
        return count

    def total(self, options: Sequence[Sequence[_Features]]) -> int:
        """The sum, over every sequence of layer ops, of (visual outcomes) x (exit outcomes), where
        layer ``i`` takes each op of ``options[i]`` (given by its features), or is the plain partner of
        a pair starting at ``i - 1``. ``[[f] for f in features]`` gives the count of one sequence."""
        # state: (a pair starts at the previous layer, visual term chosen, exit term chosen) -> sum of
        # the products of the terms chosen so far (the expansion of the product of two sums)
        states: dict[tuple[bool, bool, bool], int] = collections.defaultdict(int)
        for v, e in itertools.product((False, True), repeat=2):
            states[(False, v, e)] += (self._visual_base() if v else 1) * (self._exit_base() if e else 1)
        for i, choices in enumerate(options):
            after: dict[tuple[bool, bool, bool], int] = collections.defaultdict(int)
            terms = {(before, here): (self._visual_term(i, before, here), self._exit_term(i, before, here))
                     for before in (False, True) for here in ([_PLAIN] if before else choices)}
            for (pair_before, v, e), weight in states.items():
                for here in ([_PLAIN] if pair_before else choices):
                    vt, et = terms[(pair_before, here)]
                    for v2, vf in [(v, 1)] + ([(True, vt)] if not v and vt else []):
                        for e2, ef in [(e, 1)] + ([(True, et)] if not e and et else []):
                            after[(here[0], v2, e2)] += weight * vf * ef
            states = after
        return sum(weight for (_, v, e), weight in states.items() if v and e)
