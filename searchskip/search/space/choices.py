"""The public, normalised form of a space's choices (:class:`IntRange`, :class:`FloatRange`,
:class:`LayerRange`, :class:`PruneChoices`, :class:`VisualTokensChoices`,
:class:`EarlyExitChoices`) and :class:`_Decision`, one decision as optuna sees it: a parameter
name and its values, suggested through a trial or given as an optuna distribution. The small
helpers here resolve negative layer indices and phrase the problems of layer choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

from searchskip.plan import EXIT_SCOPES, PRUNE_TARGETS, RANK_ATTENTION, CalibrationSpec
from searchskip.search.space.names import _DECIMALS

if TYPE_CHECKING:  # optuna is imported only where a trial is replayed (keeps `searchskip validate` fast)
    import optuna


@dataclass(frozen=True)
class IntRange:
    """Integers ``low, low + step, ...`` up to ``high`` (inclusive); negative layer bounds count from the end."""

    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    """Numbers ``low, low + step, ..., high``; ``high - low`` is a multiple of ``step``."""

    low: float
    high: float
    step: float

    def values(self) -> tuple[float, ...]:
        count = round((self.high - self.low) / self.step)
        return tuple(round(self.low + k * self.step, _DECIMALS) for k in range(count + 1))

    def snap(self, value: float) -> float:
        """The value of :meth:`values` nearest ``value`` (what optuna returns may be off by rounding)."""
        values = self.values()
        k = min(max(round((value - self.low) / self.step), 0), len(values) - 1)
        return values[k]


@dataclass(frozen=True)
class LayerRange:
    """Layers ``first .. last``, both inclusive (``from`` and ``to`` in the file); negative counts from the end."""

    first: int = 0
    last: int = -1


IntChoice = Union[tuple[int, ...], IntRange]
FloatChoice = Union[tuple[float, ...], FloatRange]


@dataclass(frozen=True)
class PruneChoices:
    """The prune decisions of a space; ``methods`` may include ``'none'`` (no pruning)."""

    methods: tuple[str, ...]
    structures: tuple[str, ...] = ("unstructured",)
    sparsity: FloatChoice | None = None
    targets: tuple[str, ...] = PRUNE_TARGETS
    calibration: CalibrationSpec | None = None


@dataclass(frozen=True)
class VisualTokensChoices:
    """The ``visual_tokens`` decisions of a space; ``keep`` may offer 1.0 (no token dropping)."""

    keep: FloatChoice
    after_layer: IntChoice
    """Layer indices as written (negative ones count from the end)."""
    ranks: tuple[str, ...] = (RANK_ATTENTION,)


@dataclass(frozen=True)
class EarlyExitChoices:
    """The ``early_exit`` decision of a space: layer indices as written (negative ones count from
    the end), possibly with ``'none'`` (no early exit), or a range."""

    layers: tuple[int | str, ...] | IntRange
    scope: str = EXIT_SCOPES[0]
    """Which tokens exit (fixed, not searched: ``generated`` is the only scope)."""


@dataclass(frozen=True)
class _Decision:
    """One decision: its parameter name and possible values (a parameter only with several values)."""

    name: str
    values: tuple[Any, ...]
    int_range: tuple[int, int, int] | None = None  # suggest_int(low, high, step)
    float_range: FloatRange | None = None  # suggest_float(low, high, step)

    @property
    def is_param(self) -> bool:
        return len(self.values) > 1

    def suggest(self, trial: "optuna.trial.BaseTrial") -> Any:
        if not self.is_param:
            return self.values[0]
        if self.int_range is not None:
            low, high, step = self.int_range
            return trial.suggest_int(self.name, low, high, step=step)
        if self.float_range is not None:
            r = self.float_range
            return r.snap(trial.suggest_float(self.name, r.low, r.high, step=r.step))
        return trial.suggest_categorical(self.name, list(self.values))

    def distribution(self) -> "optuna.distributions.BaseDistribution":
        """The optuna distribution :meth:`suggest` draws this parameter from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.int_range is not None:
            low, high, step = self.int_range
            return IntDistribution(low, high, step=step)
        if self.float_range is not None:
            r = self.float_range
            return FloatDistribution(r.low, r.high, step=r.step)
        return CategoricalDistribution(list(self.values))


def _choice_decision(name: str, choice: IntChoice | FloatChoice | tuple[str, ...],
                     resolve: Any = None) -> _Decision:
    if isinstance(choice, FloatRange):
        return _Decision(name, choice.values(), float_range=choice)
    if isinstance(choice, IntRange):
        low, high = (resolve(choice.low), resolve(choice.high)) if resolve else (choice.low, choice.high)
        values = tuple(range(low, high + 1, choice.step))
        return _Decision(name, values, int_range=(low, values[-1], choice.step) if values else None)
    values = tuple(resolve(v) for v in choice) if resolve else tuple(choice)
    return _Decision(name, values)


def _plural(n: int) -> str:
    return f"{n} decoder layer{'s' if n != 1 else ''}, 0..{n - 1}"


def _resolver(num_layers: int) -> Callable[[Any], Any]:
    """Resolve a layer index as written in a space (negative counts from the end); other values pass."""
    return lambda i: i + num_layers if isinstance(i, int) and i < 0 else i


def _choice_keys(name: str, choice: IntChoice | tuple[Any, ...]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of an integer choice of the public form: a range's ends, or each value."""
    if isinstance(choice, IntRange):
        return [(f"{name}.low", choice.low), (f"{name}.high", choice.high)]
    return [(f"{name}[{i}]" if len(choice) > 1 else name, v) for i, v in enumerate(choice)]


def _offer_problems(key: str, decision: _Decision, model: str) -> list[tuple[str, str]]:
    """A layer choice must offer a layer, each one once, after resolving negative indices."""
    if not decision.values:
        return [(key, f"must offer at least one layer once resolved ({model}), but `low <= high` does not "
                      "hold there")]
    if len(set(decision.values)) < len(decision.values):
        return [(key, f"must offer each layer only once after resolving ({model}), but got "
                      f"{list(decision.values)}")]
    return []
