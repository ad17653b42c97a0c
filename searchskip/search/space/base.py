"""The base class :class:`Space` of every kind: reading a space (the kind looked up in
:data:`~searchskip.search.space.kinds.KINDS`), the checks against the model's layer count,
suggesting a plan through an optuna trial (the layer ops by the kind, then prune, visual_tokens
and early_exit, the same for every kind), and the inverse (:meth:`Space.params_for`), the grid,
the distributions and the size, with the caches they share.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from searchskip.config.typed import build
from searchskip.config.yaml_io import read_yaml
from searchskip.errors import ConfigError, Problem
from searchskip.plan import (
    RANK_UNIFORM,
    SCOPE_ALL,
    EarlyExitSpec,
    Plan,
    PruneSpec,
    VisualTokensSpec,
    skips_prompt_attention,
)
from searchskip.search.space.choices import (
    EarlyExitChoices,
    PruneChoices,
    VisualTokensChoices,
    _choice_decision,
    _choice_keys,
    _Decision,
    _offer_problems,
    _plural,
    _resolver,
)
from searchskip.search.space.file_form import _CHECKS, _with_hint
from searchskip.search.space.kinds import KINDS
from searchskip.search.space.names import (
    _KEEP_ALL,
    _PAPER_ONLY,
    _TWO_FOUR,
    _TWO_FOUR_SPARSITY,
    NO_EXIT,
    NO_PRUNE,
    PARAM_EXIT_LAYER,
    PARAM_PRUNE_METHOD,
    PARAM_PRUNE_SPARSITY,
    PARAM_PRUNE_STRUCTURE,
    PARAM_SCOPE,
    PARAM_VISUAL_AFTER_LAYER,
    PARAM_VISUAL_KEEP,
    PARAM_VISUAL_RANK,
    SPACE_KINDS,
)
from searchskip.search.space.token_rules import _after_layer_past_pairs, _exit_past_pairs, _pair_starts, _TokenCount

if TYPE_CHECKING:  # optuna is imported only where a trial is replayed (keeps `searchskip validate` fast)
    import optuna


@dataclass(frozen=True, kw_only=True)
class Space:
    """A search space (format version :data:`SPACE_VERSION`); see :mod:`searchskip.search.space`.

    Build one with :meth:`load` or :meth:`from_dict`, which check it and return a
    :class:`PerLayerSpace` or a :class:`PaperSpace`. ``file`` only labels problems.
    """

    KIND: ClassVar[str] = ""

    scopes: tuple[str, ...] = (SCOPE_ALL,)
    average: bool = False
    prune: PruneChoices | None = None
    visual_tokens: VisualTokensChoices | None = None
    early_exit: EarlyExitChoices | None = None
    file: str | None = field(default=None, compare=False)

    # ---- reading ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, file: str | None = None) -> "Space":
        """Build and check a space from parsed YAML; raise one :class:`ConfigError` listing every problem."""
        kind = data.get("kind", "per_layer") if isinstance(data, dict) else "per_layer"
        if kind not in SPACE_KINDS:  # reported by build; pick the form whose keys the file uses
            kind = "paper" if isinstance(data, dict) and any(k in data for k in _PAPER_ONLY) else "per_layer"
        entry = KINDS[kind]
        built, problems = build(entry.form, data, file, checks=_CHECKS)
        problems = [_with_hint(p, kind) for p in problems]
        if problems or built is None:
            raise ConfigError(problems, file)
        return entry.build(built, file)

    @classmethod
    def load(cls, path: str | Path) -> "Space":
        """Read and check a space file; problems name the file."""
        return cls.from_dict(read_yaml(path), str(path))

    # ---- what subclasses provide --------------------------------------------------------
    def _problems(self, num_layers: int) -> list[tuple[str, str]]:
        return []

    def _suggest_layers(self, trial: Any, num_layers: int) -> Plan:
        raise NotImplementedError

    def _layer_params(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def _unpruned_plans(self, num_layers: int) -> int:
        """How many distinct plans the layer decisions (ops and scope) and the token decisions give (no prune)."""
        raise NotImplementedError

    def _layer_decisions(self, num_layers: int) -> list[_Decision]:
        raise NotImplementedError

    def _grid_decisions(self, num_layers: int) -> list[_Decision]:
        """The decisions of the layers and the scope, in the order they are suggested."""
        return self._layer_decisions(num_layers)

    # ---- checks against the model ---------------------------------------------------------
    def check(self, num_layers: int) -> "Space":
        """Check the space against a model with ``num_layers`` decoder layers; return the space.

        Raises :class:`ConfigError` naming the file, the key and the layer count.
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, but got {num_layers!r}")
        problems = _cached_problems(self, num_layers)
        if problems:
            raise ConfigError([Problem(self.file, key, rule) for key, rule in problems], self.file)
        return self

    def _scope_decision(self) -> _Decision:
        return _Decision(PARAM_SCOPE, self.scopes)

    def _token_problems(self, num_layers: int) -> list[tuple[str, str]]:
        """``visual_tokens.after_layer`` and ``early_exit.layer`` within the model, once resolved."""
        n = num_layers
        resolve = _resolver(n)
        model = f"the model has {_plural(n)}; negative values count from the end"
        problems = []
        if self.visual_tokens is not None:
            for key, value in _choice_keys(PARAM_VISUAL_AFTER_LAYER, self.visual_tokens.after_layer):
                if not 0 <= resolve(value) < n:
                    problems.append((key, f"`0 <= after_layer < num_layers` must hold once resolved ({model}), "
                                          f"but got after_layer={value}"))
        if self.early_exit is not None:
            for key, value in _choice_keys(PARAM_EXIT_LAYER, self.early_exit.layers):
                if value != NO_EXIT and not 0 <= resolve(value) < n - 1:
                    problems.append((key, f"`0 <= layer < num_layers - 1` must hold once resolved (exiting after "
                                          f"the last layer is no exit; {model}), but got layer={value}"))
        if problems:
            return problems
        visual, early = self._visual_decisions(n), self._exit_decision(n)
        for decision in ([visual[1]] if visual else []) + ([early] if early else []):
            problems += _offer_problems(decision.name, decision, model)
        return problems

    def _visual_decisions(self, num_layers: int) -> tuple[_Decision, _Decision, _Decision] | None:
        """``(keep, after_layer, rank)``, or ``None`` without ``visual_tokens``."""
        v = self.visual_tokens
        if v is None:
            return None
        return (_choice_decision(PARAM_VISUAL_KEEP, v.keep),
                _choice_decision(PARAM_VISUAL_AFTER_LAYER, v.after_layer, _resolver(num_layers)),
                _Decision(PARAM_VISUAL_RANK, v.ranks))

    def _exit_decision(self, num_layers: int) -> _Decision | None:
        e = self.early_exit
        return None if e is None else _choice_decision(PARAM_EXIT_LAYER, e.layers, _resolver(num_layers))

    def _token_count(self, num_layers: int) -> _TokenCount:
        return _TokenCount(num_layers, self._visual_decisions(num_layers), self._exit_decision(num_layers))

    # ---- suggesting -----------------------------------------------------------------------
    def suggest(self, trial: "optuna.trial.BaseTrial", num_layers: int) -> Plan:
        """The plan of one trial, its decisions suggested through ``trial`` (define-by-run).

        The plan is checked against the model (:meth:`Plan.validate`).
        """
        self.check(num_layers)
        layers = self._suggest_layers(trial, num_layers)
        prune = self._suggest_prune(trial)
        visual = self._suggest_visual(trial, layers, num_layers)
        early = self._suggest_exit(trial, layers, num_layers)
        return Plan(layers=layers.layers, scope=layers.scope, prune=prune, visual_tokens=visual,
                    early_exit=early).validate(num_layers, file=self.file)

    def _prune_decisions(self) -> tuple[_Decision, _Decision, _Decision | None]:
        p = self.prune
        assert p is not None
        sparsity = _choice_decision(PARAM_PRUNE_SPARSITY, p.sparsity) if p.sparsity is not None else None
        return (_Decision(PARAM_PRUNE_METHOD, p.methods), _Decision(PARAM_PRUNE_STRUCTURE, p.structures), sparsity)

    def _suggest_prune(self, trial: Any) -> PruneSpec | None:
        if self.prune is None:
            return None
        method_d, structure_d, sparsity_d = self._prune_decisions()
        method = method_d.suggest(trial)
        if method == NO_PRUNE:
            return None
        structure = structure_d.suggest(trial)
        if structure == _TWO_FOUR:
            sparsity = _TWO_FOUR_SPARSITY
        else:
            assert sparsity_d is not None
            sparsity = sparsity_d.suggest(trial)
        return self._prune_spec(method, structure, sparsity)

    def _prune_spec(self, method: str, structure: str, sparsity: float) -> PruneSpec:
        p = self.prune
        assert p is not None
        return PruneSpec(method=method, structure=structure, sparsity=sparsity,
                         targets=("ffn",) if structure == "ffn_channels" else p.targets,
                         calibration=p.calibration if method == "wanda" else None)

    def _prune_options(self) -> dict[PruneSpec | None, dict[str, Any]]:
        """Every distinct canonical prune (``None``: no pruning) -> the first parameters giving it."""
        return _cached_prune_options(self)

    def _suggest_visual(self, trial: Any, layers: Plan, num_layers: int) -> VisualTokensSpec | None:
        """``visual_tokens`` on the suggested layer ops ``layers``, by rules 1 and 2 of
        :mod:`searchskip.search.space`."""
        decisions = self._visual_decisions(num_layers)
        if decisions is None:
            return None
        keep_d, after_d, rank_d = decisions
        keep = keep_d.suggest(trial)
        if keep == _KEEP_ALL:
            return None
        after = _after_layer_past_pairs(after_d.suggest(trial), _pair_starts(layers), num_layers)
        if after is None:
            return None
        before = layers.op_for(after - 1) if after >= 1 else None
        ranked = keep != 0.0 and before is not None and not skips_prompt_attention(before.op, before.scope)
        rank = rank_d.suggest(trial) if ranked else RANK_UNIFORM
        return VisualTokensSpec(after_layer=after, keep=keep, rank=rank)

    def _suggest_exit(self, trial: Any, layers: Plan, num_layers: int) -> EarlyExitSpec | None:
        """``early_exit`` on the suggested layer ops ``layers``, by rule 1 of :mod:`searchskip.search.space`."""
        decision = self._exit_decision(num_layers)
        if decision is None:
            return None
        layer = decision.suggest(trial)
        if layer == NO_EXIT:
            return None
        layer = _exit_past_pairs(layer, _pair_starts(layers), num_layers)
        return None if layer is None else EarlyExitSpec(layer=layer, scope=self.early_exit.scope)

    # ---- the inverse, the grid, the size ------------------------------------------------------
    def params_for(self, plan: Plan, num_layers: int) -> dict[str, Any] | None:
        """The parameters that make :meth:`suggest` return ``plan`` (for ``study.enqueue_trial``),
        or ``None`` when ``plan`` is outside the space. Where several do, the first found is returned."""
        self.check(num_layers)
        if plan.drop is not None:
            return None
        prune = self._prune_options().get(plan.prune) if self.prune is not None else ({} if plan.prune is None
                                                                                      else None)
        if prune is None:
            return None
        ops = Plan(layers=plan.layers, scope=plan.scope)
        layers = self._layer_params(ops, num_layers)
        if layers is None:
            return None
        visual = _first_params(self._visual_decisions(num_layers) or (), plan.visual_tokens,
                               lambda trial: self._suggest_visual(trial, ops, num_layers))
        early = _first_params([d for d in [self._exit_decision(num_layers)] if d is not None], plan.early_exit,
                              lambda trial: self._suggest_exit(trial, ops, num_layers))
        if visual is None or early is None:
            return None
        params = {**layers, **prune, **visual, **early}
        from optuna.trial import FixedTrial  # replay: the parameters must give exactly this plan

        try:
            replayed = self.suggest(FixedTrial(params), num_layers)
        except (ValueError, ConfigError):
            return None
        return params if replayed == plan else None

    def _param_decisions(self, num_layers: int) -> list[_Decision]:
        self.check(num_layers)
        decisions = list(self._grid_decisions(num_layers))
        if self.prune is not None:
            decisions += [d for d in self._prune_decisions() if d is not None]
        decisions += [*(self._visual_decisions(num_layers) or ()), self._exit_decision(num_layers)]
        return [d for d in decisions if d is not None and d.is_param]

    def grid(self, num_layers: int) -> dict[str, list[Any]]:
        """optuna ``GridSampler``'s ``search_space``: every parameter the space may suggest, with all its values."""
        return {d.name: list(d.values) for d in self._param_decisions(num_layers)}

    def distributions(self, num_layers: int) -> dict[str, "optuna.distributions.BaseDistribution"]:
        """Every parameter the space may suggest, in the order it is suggested, with the optuna
        distribution it is drawn from (what a sampler that proposes whole plans draws)."""
        return {d.name: d.distribution() for d in self._param_decisions(num_layers)}

    def size(self, num_layers: int) -> int:
        """How many distinct plans the space holds for a model with ``num_layers`` decoder layers."""
        self.check(num_layers)
        prunes = len(self._prune_options()) if self.prune is not None else 1
        return self._unpruned_plans(num_layers) * prunes


def _first_params(decisions: Sequence[_Decision], target: Any, run: Callable[[Any], Any]) -> dict[str, Any] | None:
    """The first parameters, over every combination of the decisions' values in order, for which
    ``run(trial)`` returns ``target``: only those ``run`` suggested. ``None`` when no combination does.
    It replays ``run`` (the rules of :mod:`searchskip.search.space`) rather than inverting it."""
    from optuna.trial import FixedTrial

    params = [d for d in decisions if d.is_param]
    for values in itertools.product(*(d.values for d in params)):
        trial = FixedTrial({d.name: v for d, v in zip(params, values)})
        if run(trial) == target:
            return dict(trial.params)
    return None


@functools.lru_cache(maxsize=256)
def _cached_problems(space: Space, num_layers: int) -> tuple[tuple[str, str], ...]:
    return tuple(space._problems(num_layers)) + tuple(space._token_problems(num_layers))


@functools.lru_cache(maxsize=64)
def _cached_prune_options(space: Space) -> dict[PruneSpec | None, dict[str, Any]]:
    method_d, structure_d, sparsity_d = space._prune_decisions()
    options: dict[PruneSpec | None, dict[str, Any]] = {}

    def add(spec: PruneSpec | None, params: dict[str, Any]) -> None:
        canonical = Plan(prune=spec).prune if spec is not None else None
        options.setdefault(canonical, params)

    def named(decision: _Decision | None, value: Any) -> dict[str, Any]:
        return {decision.name: value} if decision is not None and decision.is_param else {}

    for method in method_d.values:
        if method == NO_PRUNE:
            add(None, named(method_d, method))
            continue
        for structure in structure_d.values:
            if structure == _TWO_FOUR:
                add(space._prune_spec(method, structure, _TWO_FOUR_SPARSITY),
                    {**named(method_d, method), **named(structure_d, structure)})
                continue
            assert sparsity_d is not None
            for sparsity in sparsity_d.values:
                add(space._prune_spec(method, structure, sparsity),
                    {**named(method_d, method), **named(structure_d, structure), **named(sparsity_d, sparsity)})
    return options

