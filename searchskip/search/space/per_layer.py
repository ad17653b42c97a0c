"""``kind: per_layer`` spaces (:class:`PerLayerSpace`): a free choice of op for every searchable
decoder layer (each op under the plan-wide ``scope`` decision, or with a token scope of its own,
``skip_block@visual``), ``parallel_blocks`` partners as conditional parameters, and the builder that
makes one from its file form (:data:`PER_LAYER_KIND`, registered in :mod:`searchskip.search.space`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from searchskip.plan import KEEP, PARALLEL_BLOCKS, LayerOp, Plan
from searchskip.search.space.base import Space
from searchskip.search.space.choices import LayerRange, _Decision, _plural, _resolver
from searchskip.search.space.file_form import _PerLayerFile, _shared_choices, _strings
from searchskip.search.space.kinds import SpaceKindEntry
from searchskip.search.space.names import SCOPE_SEP, layer_param, split_op_choice
from searchskip.search.space.token_rules import _PLAIN, _features


@dataclass(frozen=True, kw_only=True)
class PerLayerSpace(Space):
    """``kind: per_layer``: an op among ``ops`` for every layer of ``layers``. An op written alone takes
    the plan-wide ``scope`` decision (one scope for all such ops of a plan); ``op@scope`` carries its
    own, so one plan may mix scopes (``skip_ffn@visual`` on one layer, ``skip_block`` on another)."""

    KIND: ClassVar[str] = "per_layer"

    layers: LayerRange | tuple[int, ...] = LayerRange()
    ops: tuple[str, ...] = ()

    def searchable_layers(self, num_layers: int) -> tuple[int, ...]:
        """The searchable layer indices, increasing, with negative ones resolved."""
        self.check(num_layers)
        return self._resolved(num_layers)

    def _resolved(self, num_layers: int) -> tuple[int, ...]:
        at = _resolver(num_layers)
        if isinstance(self.layers, LayerRange):
            return tuple(range(at(self.layers.first), at(self.layers.last) + 1))
        return tuple(sorted({at(i) for i in self.layers}))

    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        problems = []
        model = f"the model has {_plural(num_layers)}; negative values count from the end"

        def in_range(key: str, name: str, value: int) -> bool:
            if not -num_layers <= value < num_layers:
                problems.append((key, f"`-num_layers <= {name} < num_layers` must hold ({model}), "
                                      f"but got {name}={value}"))
                return False
            return True

        if isinstance(self.layers, LayerRange):
            first, last = self.layers.first, self.layers.last
            if in_range("layers.from", "from", first) & in_range("layers.to", "to", last):
                a, b = first % num_layers, last % num_layers
                if a > b:
                    problems.append(("layers", f"`from <= to` must hold once resolved ({model}), but got "
                                               f"from={first} (layer {a}), to={last} (layer {b})"))
        else:
            seen: dict[int, int] = {}
            for index, value in enumerate(self.layers):
                if in_range(f"layers[{index}]", "layer", value):
                    resolved = value % num_layers
                    if resolved in seen:
                        problems.append((f"layers[{index}]", f"must name each layer once ({model}), but layer "
                                                             f"{resolved} is also listed as {seen[resolved]}"))
                    seen.setdefault(resolved, value)
        if problems:
            return problems
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if not decision.values:
                problems.append(("ops", f"layer {layer} has no op to choose from: 'parallel_blocks' needs its "
                                        f"partner layer {layer + 1} among the searchable layers ({model}); "
                                        "add 'keep' to ops"))
        return problems

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        layers = self._resolved(num_layers)
        searchable = set(layers)
        out = []
        for layer in layers:
            values = tuple(op for op in self.ops if split_op_choice(op)[0] != PARALLEL_BLOCKS or layer + 1 in searchable)
            out.append(_Decision(layer_param(layer), values))
        return out

    def _grid_decisions(self, num_layers: int) -> list[_Decision]:
        return [*self._layer_decisions(num_layers), self._scope_decision()]

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        chosen: dict[int, LayerOp] = {}
        partner = None
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if layer == partner:  # the partner of a parallel_blocks pair keeps; no parameter this trial
                continue
            op, own_scope = split_op_choice(decision.suggest(trial))
            if op != KEEP:
                chosen[layer] = LayerOp(op, own_scope, average=self.average and op == PARALLEL_BLOCKS)
            partner = layer + 1 if op == PARALLEL_BLOCKS else None
        scope = self._scope_decision().suggest(trial)
        return Plan(layers=chosen, scope=scope)

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        """Each layer's op as ``op@scope`` where the space offers that, else as ``op`` (then its scope is
        the plan-wide decision, one for all such ops); ``None`` when the plan is outside the space."""
        ops = {i: plan.op_for(i) for i, _ in plan.layers}
        shared: set[str] = set()  # scopes of the ops written without their own
        params: dict[str, Any] = {}
        partner = None
        for layer, decision in zip(self._resolved(num_layers), self._layer_decisions(num_layers)):
            if layer == partner:
                partner = None
                continue
            op = ops.pop(layer, None)
            if op is None:
                value = KEEP
            elif f"{op.op}{SCOPE_SEP}{op.scope}" in decision.values:
                value = f"{op.op}{SCOPE_SEP}{op.scope}"
            else:
                value = op.op
                shared.add(op.scope)
            if value not in decision.values:
                return None
            if op is not None and op.average != (self.average and op.op == PARALLEL_BLOCKS):
                return None
            if decision.is_param:
                params[decision.name] = value
            partner = layer + 1 if op is not None and op.op == PARALLEL_BLOCKS else None
        if ops or len(shared) > 1:  # an op on a layer outside the space, or two scopes for the shared one
            return None
        scope_d = self._scope_decision()
        scope = shared.pop() if shared else scope_d.values[0]
        if scope not in scope_d.values:
            return None
        if scope_d.is_param:
            params[scope_d.name] = scope
        return params

    def _unpruned_plans(self, num_layers: int) -> int:
        """Sequences of ops (a pair covers two layers), each with its token outcomes, for every value of
        the plan-wide scope; a sequence whose every op carries its own scope (or keeps) gives the same
        plan under every value, so it is counted once."""
        count = self._token_count(num_layers)
        decisions = dict(zip(self._resolved(num_layers), self._layer_decisions(num_layers)))

        def options(scope: str, shared_ops: bool) -> list[list[Any]]:
            out = []
            for i in range(num_layers):
                if i not in decisions:
                    out.append([_PLAIN])
                    continue
                features = []
                for value in decisions[i].values:
                    op, own = split_op_choice(value)
                    if own is not None or op == KEEP or shared_ops:
                        features.append(_features(LayerOp(op, own or scope)))
                out.append(features)
            return out

        fixed = count.total(options(self.scopes[0], shared_ops=False))
        return fixed + sum(count.total(options(scope, shared_ops=True)) - fixed for scope in self.scopes)


def _per_layer_from_file(built: _PerLayerFile, file: str | None) -> PerLayerSpace:
    layers: LayerRange | tuple[int, ...]
    if isinstance(built.layers, list):
        layers = tuple(built.layers)
    else:
        layers = LayerRange(built.layers.get("from", 1), built.layers.get("to", -2))
    return PerLayerSpace(layers=layers, ops=_strings(built.ops), **_shared_choices(built, file))


PER_LAYER_KIND = SpaceKindEntry(PerLayerSpace.KIND, _PerLayerFile, _per_layer_from_file)
"""``kind: per_layer`` for :data:`~searchskip.search.space.kinds.KINDS`."""
