"""The result of a FLOP count: a breakdown, totals under each convention, depth, parameters; and budgets."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping

from searchskip.errors import ConfigError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from searchskip.flops.workload import Workload
    from searchskip.plan import Plan

__all__ = [
    "ATTENTIONS", "COUNTS", "COMPONENTS", "LLM_COMPONENTS", "DTYPE_BYTES", "RANK_SCORES", "Budget", "Depth", "FlopEntry", "FlopReport",
    "ParamCount",
]

COUNTS = ("dense", "sparse")
"""``dense``: every multiply-add a dense kernel does; ``sparse``: pruned (zeroed) weights
of unstructured / 2:4 pruning not counted (theoretical)."""
ATTENTIONS = ("causal", "kernel")
"""``causal``: query ``i`` attends ``i + 1`` keys (the causal mask's true cost; the default);
``kernel``: what the attention kernel computes (SDPA's prefill computes the full square)."""

COMPONENTS = ("vision", "projector", "llm_prefill", "llm_decode", "lm_head")
LLM_COMPONENTS = ("llm_prefill", "llm_decode", "lm_head")
"""The components that belong to the language model."""
COMPONENT_TITLES = {
    "vision": "vision tower",
    "projector": "projector",
    "llm_prefill": "LLM prefill",
    "llm_decode": "LLM decode",
    "lm_head": "lm_head",
}

ATTENTION_PARTS = ("scores", "weighted_sum")
ATTN_PROJECTIONS = ("q", "k", "v", "o")
RANK_SCORES = "rank_scores"
"""The part (of ``llm_prefill``, at layer ``visual_tokens.after_layer - 1``) that counts the
ranking matmul of ``visual_tokens`` with ``rank: attention``."""

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class FlopEntry:
    """FLOPs of one part of one component for one sample.

    ``layer``: the decoder layer (``llm_*``), the vision encoder layer (``vision``) or ``None``.
    ``part``: a linear's name (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``fc1``,
    ``q_proj``, ``linear_1``, ``lm_head``...), ``scores`` (q.k) / ``weighted_sum`` (attention
    times v), ``rank_scores`` (``visual_tokens``' ranking with ``rank: attention``: the last
    prompt query against every prompt key, at layer ``after_layer - 1``), or ``patch_embed``.
    """

    component: str
    layer: int | None
    part: str
    dense: float
    """Dense FLOPs, attention counted causal-exact."""
    sparse: float
    """Theoretical FLOPs: a pruned linear's dense FLOPs times its kept (nonzero) fraction."""
    kernel: float
    """Dense FLOPs as the kernels compute them (differs from ``dense`` for prefill attention only)."""

    def value(self, count: str = "dense", attention: str = "causal") -> float:
        base = self.sparse if count == "sparse" else self.dense
        return base + (self.kernel - self.dense if attention == "kernel" else 0.0)


@dataclass(frozen=True)
class Depth:
    """Sequential decoder sublayers (attention, FFN) on the longest path: of the prefill and
    of one decode step. Parallel ops lower it; skips lower it; FLOPs are a separate matter."""

    prefill: int
    decode: int

    def to_dict(self) -> dict[str, int]:
        return {"prefill": self.prefill, "decode": self.decode}


@dataclass(frozen=True)
class ParamCount:
    """Parameters of the model as a plan leaves it (from the config: nothing is loaded).

    ``stored``: what the compressed model holds (dropped layers and removed FFN channels
    gone; skipped sublayers keep their weights, since other scopes may still use them);
    ``nonzero``: ``stored`` less the weights unstructured / 2:4 pruning zeroed.
    """

    total: int
    """The unplanned model."""
    stored: int
    nonzero: int

    def weight_bytes(self, dtype: str = "float16", *, nonzero: bool = False) -> int:
        """Memory of the (dense) weights in ``dtype``; ``nonzero`` counts only the nonzero ones."""
        return (self.nonzero if nonzero else self.stored) * DTYPE_BYTES[dtype]

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "stored": self.stored, "nonzero": self.nonzero}


@dataclass(frozen=True)
class FlopReport:
    """What :func:`~searchskip.flops.count_flops` returns (one sample of :attr:`workload`)."""

    entries: tuple[FlopEntry, ...]
    workload: "Workload"
    plan: "Plan"
    arch: str
    layer_ops: tuple[str, ...]
    """Per decoder layer: ``keep``, ``dropped`` or the op (with its scope when not ``all``)."""
    depth: Depth
    params: ParamCount
    count: str = "dense"
    """The convention of :attr:`total_flops` (and so of a budget checked against it)."""
    attention: str = "causal"
    variants: tuple[tuple[float, "FlopReport"], ...] = ()
    """``(weight, report)`` per variant of a workload whose samples differ (its
    :attr:`~searchskip.flops.Workload.variants`); this report is their weighted mean."""

    @classmethod
    def weighted(cls, parts: "list[tuple[float, FlopReport]]", workload: "Workload") -> "FlopReport":
        """The weighted mean of the reports of a workload's variants (same plan and model):
        entries summed part by part, the deepest variant's depth."""
        first = parts[0][1]
        merged: dict[tuple, list[float]] = {}
        for weight, report in parts:
            for e in report.entries:
                acc = merged.setdefault((e.component, e.layer, e.part), [0.0, 0.0, 0.0])
                acc[0] += weight * e.dense
                acc[1] += weight * e.sparse
                acc[2] += weight * e.kernel
        entries = tuple(FlopEntry(c, layer, part, *values) for (c, layer, part), values in merged.items())
        depth = Depth(prefill=max(r.depth.prefill for _, r in parts), decode=max(r.depth.decode for _, r in parts))
        return cls(entries=entries, workload=workload, plan=first.plan, arch=first.arch, layer_ops=first.layer_ops,
                   depth=depth, params=first.params, count=first.count, attention=first.attention,
                   variants=tuple(parts))

    # ---- totals ---------------------------------------------------------------------------
    def _conv(self, count: str | None, attention: str | None) -> tuple[str, str]:
        count = count or self.count
        attention = attention or self.attention
        if count not in COUNTS:
            raise ValueError(f"count must be one of {', '.join(COUNTS)}, but got {count!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, but got {attention!r}")
        return count, attention

    def total(self, count: str | None = None, attention: str | None = None) -> float:
        """FLOPs per sample under ``count`` / ``attention`` (default: the report's convention)."""
        c, a = self._conv(count, attention)
        return math.fsum(e.value(c, a) for e in self.entries)

    @property
    def total_flops(self) -> float:
        return self.total()

    @property
    def causal_correction(self) -> float:
        """``total(attention="kernel") - total(attention="causal")`` (dense): what a FLOP
        counter that takes the kernel's shapes (torch's ``FlopCounterMode``) adds."""
        return self.total("dense", "kernel") - self.total("dense", "causal")

    def ratio(self, baseline: "FlopReport") -> float:
        """This total over ``baseline``'s under this report's convention (the unplanned model
        on the same workload, for a budget ratio)."""
        denominator = baseline.total(self.count, self.attention)
        return self.total() / denominator if denominator else float("nan")

    def fixed_total(self, count: str | None = None, attention: str | None = None) -> float:
        """:meth:`total` of what no plan changes: every entry outside the decoder layers (vision
        tower, projector, lm_head, the language model's linears around its layers). No plan can
        cost less than this on the same workload."""
        c, a = self._conv(count, attention)
        return math.fsum(e.value(c, a) for e in self.entries
                         if e.component not in ("llm_prefill", "llm_decode") or e.layer is None)

    def llm_total(self, count: str | None = None, attention: str | None = None) -> float:
        """:meth:`total` of the language model alone (:data:`LLM_COMPONENTS`)."""
        parts = self.by_component(count, attention)
        return math.fsum(parts[c] for c in LLM_COMPONENTS)

    def llm_ratio(self, baseline: "FlopReport") -> float:
        """:meth:`ratio` of the language model alone (:data:`LLM_COMPONENTS`); NaN without LLM FLOPs."""
        denominator = baseline.llm_total(self.count, self.attention)
        return self.llm_total() / denominator if denominator else float("nan")

    def by_component(self, count: str | None = None, attention: str | None = None) -> dict[str, float]:
        c, a = self._conv(count, attention)
        out = {name: 0.0 for name in COMPONENTS}
        for e in self.entries:
            out[e.component] += e.value(c, a)
        return out

    def by_layer(self, count: str | None = None, attention: str | None = None) -> list[dict[str, Any]]:
        """One row per decoder layer (prefill and decode together): ``q, k, v, o, scores,
        weighted_sum, mlp, total`` and ``op`` (the layer's label, with what the plan's token keys
        do there). ``scores`` includes the ``rank_scores`` of ``visual_tokens`` (q.k scores too)."""
        c, a = self._conv(count, attention)
        rows: list[dict[str, Any]] = []
        for i, op in enumerate(self.layer_ops):
            row: dict[str, Any] = {"layer": i, "op": op}
            row.update({k: 0.0 for k in ATTN_PROJECTIONS + ATTENTION_PARTS + ("mlp", "total")})
            rows.append(row)
        for e in self.entries:
            if e.component not in ("llm_prefill", "llm_decode") or e.layer is None:
                continue
            row = rows[e.layer]
            if e.part == RANK_SCORES:
                key = "scores"
            else:
                key = e.part if e.part in ATTN_PROJECTIONS + ATTENTION_PARTS else "mlp"
            v = e.value(c, a)
            row[key] += v
            row["total"] += v
        return rows

    def by_phase_layer(self, count: str | None = None, attention: str | None = None) -> dict[str, list[float]]:
        """``{llm_prefill: [per layer], llm_decode: [per layer]}``."""
        c, a = self._conv(count, attention)
        out = {k: [0.0] * len(self.layer_ops) for k in ("llm_prefill", "llm_decode")}
        for e in self.entries:
            if e.component in out and e.layer is not None:
                out[e.component][e.layer] += e.value(c, a)
        return out

    def by_part(self, component: str | None = None, count: str | None = None,
                attention: str | None = None) -> dict[str, float]:
        """FLOPs summed by part name (over layers), optionally within one component."""
        c, a = self._conv(count, attention)
        out: dict[str, float] = defaultdict(float)
        for e in self.entries:
            if component is None or e.component == component:
                out[e.part] += e.value(c, a)
        return dict(out)

    # ---- serialization ------------------------------------------------------------------------
    def to_dict(self, baseline: "FlopReport | None" = None, *, entries: bool = True) -> dict[str, Any]:
        """A JSON-ready dict: ``total_flops`` (this report's convention), ``convention``,
        ``totals`` (all four), ``ratio`` (to ``baseline``; ``None`` without one), ``depth``,
        ``params``, ``workload``, ``plan`` and ``breakdown`` (components, per-layer rows, and
        with ``entries`` every row of the count)."""
        totals = {f"{c}_{a}": self.total(c, a) for c in COUNTS for a in ATTENTIONS}
        components = {name: {f"{c}_{a}": v for c in COUNTS for a in ATTENTIONS
                             for v in [self.by_component(c, a)[name]]} for name in COMPONENTS}
        breakdown: dict[str, Any] = {
            "components": components,
            "layers": self.by_layer(),
        }
        if entries:
            breakdown["entries"] = [
                {"component": e.component, "layer": e.layer, "part": e.part, "dense": e.dense,
                 "sparse": e.sparse, "kernel": e.kernel} for e in self.entries
            ]
        data: dict[str, Any] = {
            "total_flops": self.total_flops,
            "convention": {"count": self.count, "attention": self.attention},
            "totals": totals,
            "ratio": self.ratio(baseline) if baseline is not None else None,
            "depth": self.depth.to_dict(),
            "params": self.params.to_dict(),
            "workload": self.workload.to_dict(),
            "plan": self.plan.to_dict(),
            "arch": self.arch,
            "breakdown": breakdown,
        }
        if baseline is not None:
            data["unplanned"] = {"total_flops": baseline.total(self.count, self.attention),
                                 "depth": baseline.depth.to_dict()}
        if self.variants:
            bases = [b for _, b in baseline.variants] if baseline is not None and baseline.variants else None
            data["variants"] = [
                {"weight": w, "image_tokens": r.workload.image_tokens, "image_shape": list(r.workload.image_shape or ()),
                 "total_flops": r.total_flops, "ratio": r.ratio(bases[i]) if bases else None}
                for i, (w, r) in enumerate(self.variants)
            ]
        return data


# --------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A FLOP budget per sample: exactly one of ``ratio`` (of the unplanned model's FLOPs on
    the same workload) or ``gflops`` (absolute, 1e9 FLOPs per sample), under the convention
    ``count`` / ``attention`` (default: dense FLOPs, causal-exact attention)."""

    ratio: float | None = None
    gflops: float | None = None
    count: Literal["dense", "sparse"] = "dense"
    attention: Literal["causal", "kernel"] = "causal"

    def __post_init__(self) -> None:
        problems = []
        if (self.ratio is None) == (self.gflops is None):
            problems.append(Problem(None, "", "a budget is either `ratio` or `gflops`, exactly one of them, but got "
                                              f"ratio={self.ratio!r}, gflops={self.gflops!r}"))
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0 < self.ratio):
            problems.append(Problem(None, "ratio", f"`ratio > 0` must hold, but got ratio={self.ratio!r}"))
        if self.gflops is not None and not (isinstance(self.gflops, (int, float)) and 0 < self.gflops):
            problems.append(Problem(None, "gflops", f"`gflops > 0` must hold, but got gflops={self.gflops!r}"))
        if self.count not in COUNTS:
            problems.append(Problem(None, "count", f"must be one of {', '.join(COUNTS)}, but got {self.count!r}"))
        if self.attention not in ATTENTIONS:
            problems.append(Problem(None, "attention",
                                    f"must be one of {', '.join(ATTENTIONS)}, but got {self.attention!r}"))
        if problems:
            raise ConfigError(problems)

    def limit(self, baseline: FlopReport | None = None) -> float:
        """The budget in FLOPs per sample (a ratio needs the unplanned ``baseline``)."""
        if self.gflops is not None:
            return float(self.gflops) * 1e9
        if baseline is None:
            raise ValueError("a ratio budget needs the unplanned model's report (baseline)")
        return float(self.ratio) * baseline.total(self.count, self.attention)

    def cost(self, report: FlopReport) -> float:
        return report.total(self.count, self.attention)

    def usage(self, report: FlopReport, baseline: FlopReport | None = None) -> float:
        """The largest share of the budget ``report`` uses: its cost over the limit, for the mean
        and, for a workload whose samples differ, for every variant (a ratio against the
        unplanned model's same variant). At most 1 (within a relative 1e-9) fits."""
        shares = [self.cost(report) / self.limit(baseline)]
        if report.variants:
            bases = [b for _, b in baseline.variants] if baseline is not None else [None] * len(report.variants)
            if len(bases) != len(report.variants):
                raise ValueError("the baseline was counted on another workload (its variants differ)")
            shares += [self.cost(r) / self.limit(b) for (_, r), b in zip(report.variants, bases)]
        return max(shares)

    def binding_cost(self, report: FlopReport, baseline: FlopReport | None = None) -> float:
        """:meth:`usage` in FLOPs of the mean's limit: the cost itself for a workload of one sample
        shape, more where some variant is tighter than the mean (what a search fits to the limit)."""
        return self.usage(report, baseline) * self.limit(baseline)

    def allows(self, report: FlopReport, baseline: FlopReport | None = None) -> bool:
        """Whether ``report`` fits the budget (within a relative 1e-9, so ``ratio: 1`` admits
        the unplanned model). A report of a workload whose samples differ fits when its mean
        and every variant fit (:meth:`usage`)."""
        return self.usage(report, baseline) <= 1 + 1e-9

    def describe(self) -> str:
        what = (f"{self.ratio:g} x the unplanned model" if self.ratio is not None
                else f"{self.gflops:g} GFLOPs per sample")
        return f"{what} ({self.count} FLOPs, {self.attention} attention)"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"count": self.count, "attention": self.attention}
        data["ratio" if self.ratio is not None else "gflops"] = self.ratio if self.ratio is not None else self.gflops
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Budget":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a budget must be a mapping, but got {type(data).__name__}")
        unknown = sorted(set(data) - {"ratio", "gflops", "count", "attention"})
        if unknown:
            raise ConfigError([Problem(None, k, "is not a budget key (keys: attention, count, gflops, ratio)")
                               for k in unknown])
        return cls(**dict(data))
