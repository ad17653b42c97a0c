"""Weight pruning of the decoder's linear layers (the ``prune`` part of a plan), with exact undo.

:func:`apply_pruning` prunes, in place, the linears of every decoder layer that
``spec.targets`` names -- ``attn``: q, k, v, o; ``ffn``: gate, up, down (Llama-style) or
fc1, fc2 (OPT) -- at ``spec.sparsity_for(layer)``, and returns a :class:`PruneResult`;
``result.undo()`` (or ``result()``) puts the original weights / modules back, so the model's
logits are bit-identical to those before pruning.

**Scores** (higher = more important, the lowest are removed):

* ``magnitude``: ``|W_ij|``.
* ``wanda``: ``|W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm of input channel
  ``j`` of the linear over every *non-padding* token (``attention_mask != 0``) of every
  calibration batch, gathered by forward pre-hooks on the target linears while the model
  runs on the calibration batches (for LLaVA the batches hold ``pixel_values``, so the norms
  cover image and text tokens alike). By default the norms of all layers come from one pass
  of the model as given (before any of it is pruned); ``sequential=True`` instead prunes
  layer by layer and measures layer ``i``'s inputs with layers ``< i`` already pruned, as
  the reference Wanda code does (about ``num_layers / 2`` forward passes per batch).

**Comparison groups** (which weights compete for removal):

* ``unstructured`` + ``magnitude``: the whole matrix; ``round(sparsity * numel)`` weights
  with the smallest ``|W|`` are zeroed per target linear (magnitudes are comparable across
  a matrix, and this is the classic layer-wise magnitude baseline).
* ``unstructured`` + ``wanda``: each output row; ``round(sparsity * in_features)`` weights
  are zeroed in every row (the Wanda paper's per-output comparison group: the activation
  norm scales whole columns, so comparing within a row is what makes it different from
  magnitude; the paper shows per-output is clearly better for LLMs).
* ``"2:4"`` (either method): each group of 4 consecutive input weights of an output row
  keeps its 2 highest-scoring weights (NVIDIA's semi-structured pattern); the input
  dimension must be divisible by 4.
* ``ffn_channels`` (``targets: [ffn]`` only): whole FFN intermediate channels compete
  within the layer; ``round(sparsity * channels)`` of them are removed (at least 1 is kept).
  Channel ``c``'s score is, for ``magnitude``, ``||in-rows_c||_2 * ||W_down[:, c]||_2`` where
  ``in-rows_c`` is row ``c`` of every in-linear (gate and up concatenated, or fc1); for
  ``wanda``, ``||X_c||_2 * ||W_down[:, c]||_2`` with ``X`` the input of down / fc2 (the
  activations of the channel), i.e. the L2 norm of the Wanda scores of the column
  ``W_down[:, c]``. The MLP is then **physically shrunk**: gate/up (fc1) are replaced by new
  ``nn.Linear`` modules with only the kept output rows (and their bias entries), down (fc2)
  by one with only the kept input columns (its bias is unchanged), so dense FLOPs fall.

Rounding is Python's :func:`round` (ties to even). ``unstructured`` and ``"2:4"`` keep every
tensor shape (dense FLOPs unchanged); :attr:`PruneResult.zeroed` counts the weights each
layer's mask zeroed, for sparse FLOP accounting. Biases are never pruned.

The undo keeps only what changes: a copy of each weight that is masked, or the original
modules that ``ffn_channels`` swaps out (they are put back; the small new ones are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import torch
from torch import nn

from searchskip.errors import ConfigError, ModelError, Problem
from searchskip.flops.count import kept_ffn_channels

__all__ = [
    "PruneResult",
    "apply_pruning",
    "input_norms",
    "magnitude_scores",
    "wanda_scores",
    "unstructured_mask",
    "n_m_mask",
    "ffn_channel_scores",
    "shrink_ffn",
    "target_linears",
]


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class PruneResult:
    """What :func:`apply_pruning` did, and how to take it back (``result.undo()`` or ``result()``).

    Layer keys are the layer indices of the plan (``layer_ids``; by default the positions in
    ``adapter.layers(model)``). Only layers with a nonzero sparsity appear.
    """

    method: str
    structure: str
    zeroed: dict[int, int] = field(default_factory=dict)
    """Layer -> weights zeroed in place (``unstructured`` / ``"2:4"``; shapes are unchanged,
    so a sparse kernel would save ``2 * zeroed`` FLOPs per token). Empty for ``ffn_channels``."""
    zeroed_by_linear: dict[int, dict[str, int]] = field(default_factory=dict)
    """Layer -> linear role (``q``, ``up``, ``fc2``, ...) -> weights zeroed in it."""
    channels_removed: dict[int, int] = field(default_factory=dict)
    """Layer -> FFN channels removed (``ffn_channels``)."""
    kept_channels: dict[int, torch.Tensor] = field(default_factory=dict)
    """Layer -> sorted indices (into the original channels) of the FFN channels kept (``ffn_channels``)."""
    _restore: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _undone: bool = field(default=False, repr=False)

    @property
    def total_zeroed(self) -> int:
        return sum(self.zeroed.values())

    def undo(self) -> None:
        """Restore the original weights and modules exactly. A second call does nothing."""
        if self._undone:
            return
        with torch.no_grad():
            for restore in reversed(self._restore):
                restore()
        self._restore.clear()
        self._undone = True

    def __call__(self) -> None:
        self.undo()


# --------------------------------------------------------------------------------------
# Scores and masks (pure functions on tensors)
# --------------------------------------------------------------------------------------


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` in float32."""
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` in float32; ``norms`` has one entry per input channel."""
    if norms.shape != (weight.shape[1],):
        raise ValueError(f"wanda needs one activation norm per input channel ({weight.shape[1]}), "
                         f"but got norms of shape {tuple(norms.shape)}")
    return weight.detach().abs().float() * norms.to(device=weight.device, dtype=torch.float32)[None, :]


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Boolean mask (True = prune) of the ``round(sparsity * n)`` lowest scores, ``n`` being the
    whole matrix's size, or each row's length when ``per_row``. Exact counts, whatever the ties."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if per_row:
        k = round(sparsity * scores.shape[1])
        if k > 0:
            idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
            mask.scatter_(1, idx, True)
    else:
        k = round(sparsity * scores.numel())
        if k > 0:
            idx = torch.argsort(scores.reshape(-1), stable=True)[:k]
            mask.view(-1)[idx] = True
    return mask


def n_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask (True = prune) that keeps the ``n`` highest scores of every ``m`` consecutive
    input weights of each row (so ``m - n`` of every ``m`` are pruned)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"input dimension {cols} is not divisible by {m}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.argsort(groups, dim=-1, stable=True)[..., : m - n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


# --------------------------------------------------------------------------------------
# Activation norms
# --------------------------------------------------------------------------------------


class _NormCollector:
    """Forward pre-hooks accumulating, per input channel, the sum of squares of a linear's
    inputs over the tokens whose ``attention_mask`` is nonzero."""

    def __init__(self, linears: Mapping[Hashable, nn.Linear]):
        self.linears = dict(linears)
        self.sumsq: dict[Hashable, torch.Tensor] = {}
        self.tokens: dict[Hashable, int] = {key: 0 for key in self.linears}
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> "_NormCollector":
        for key, linear in self.linears.items():
            self._handles.append(linear.register_forward_pre_hook(self._hook(key)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, key: Hashable) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                raise ModelError(f"prune.calibration: linear {key!r} was called without a positional input tensor; "
                                 "cannot measure its activations")
            flat = x.detach().reshape(-1, x.shape[-1])
            if self.mask is not None:
                keep = self.mask.reshape(-1)
                if keep.numel() != flat.shape[0]:
                    raise ModelError(
                        f"prune.calibration: the attention_mask covers {keep.numel()} token positions but linear "
                        f"{key!r} saw {flat.shape[0]}; cannot tell its padding positions apart"
                    )
                flat = flat[keep.to(flat.device)]
            part = flat.float().pow(2).sum(0)
            if key in self.sumsq:
                self.sumsq[key] += part
            else:
                self.sumsq[key] = part
            self.tokens[key] += flat.shape[0]

        return hook

    def norms(self) -> dict[Hashable, torch.Tensor]:
        out = {}
        for key, linear in self.linears.items():
            if key not in self.sumsq:
                raise ModelError(f"prune.calibration: linear {key!r} never ran on the calibration batches")
            out[key] = self.sumsq[key].sqrt()
        return out


class _Stop(Exception):
    """Raised by a forward hook to end a calibration pass early."""


def _batch_mask(batch: Mapping[str, Any]) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ModelError("prune.calibration: attention_mask must be a 2-D (batch, sequence) tensor to tell "
                         "padding positions apart")
    return mask != 0


def input_norms(model: nn.Module, linears: Mapping[Hashable, nn.Linear], calibration: Iterable[Mapping[str, Any]],
                *, stop_after: nn.Module | None = None) -> dict[Hashable, torch.Tensor]:
    """``||X_j||_2`` of every input channel of each of ``linears`` (float32, on the linear's device),
    over the non-padding tokens of ``calibration`` (batches of keyword inputs for ``model``;
    positions where the batch's ``attention_mask`` is 0 are left out). ``stop_after`` (a module
    of the model) ends each pass once it has run."""
    collector = _NormCollector(linears)
    stop_handle = None
    if stop_after is not None:
        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _Stop

        stop_handle = stop_after.register_forward_hook(stop)
    try:
        with collector, torch.no_grad():
            for batch in calibration:
                collector.mask = _batch_mask(batch)
                extra = {"use_cache": False} if "use_cache" not in batch and _is_hf_model(model) else {}
                try:
                    model(**batch, **extra)  # a forward pass only; no KV cache is kept
                except _Stop:
                    pass
    finally:
        if stop_handle is not None:
            stop_handle.remove()
    return collector.norms()


def _is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` takes ``use_cache`` (a transformers model with a config)."""
    return getattr(getattr(model, "config", None), "use_cache", None) is not None


# --------------------------------------------------------------------------------------
# Structured FFN channels
# --------------------------------------------------------------------------------------


def ffn_channel_scores(adapter: Any, layer: nn.Module, down_input_norms: torch.Tensor | None = None) -> torch.Tensor:
    """One score per FFN channel of ``layer`` (float32): with ``down_input_norms`` None (magnitude),
    ``||in-rows_c||_2 * ||W_out[:, c]||_2``; else (wanda) ``down_input_norms[c] * ||W_out[:, c]||_2``."""
    linears = adapter.mlp_linears(layer)
    out_w = linears[adapter.mlp_out_key].weight.detach().float()
    col = out_w.norm(dim=0)
    if down_input_norms is not None:
        return down_input_norms.to(device=col.device, dtype=torch.float32) * col
    sq = sum(linears[k].weight.detach().float().pow(2).sum(1) for k in adapter.mlp_in_keys)
    return sq.sqrt() * col


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, sub in module._modules.items():
            if sub is child:
                return module, name
    raise ModelError(f"cannot find {type(child).__name__} inside {type(root).__name__} to replace it")


def linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new Linear holding ``weight`` (out x in) and ``bias``, with ``old``'s ``requires_grad`` and
    train/eval mode (built on the meta device, so no weight is allocated twice)."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=old.bias.requires_grad)
    new.train(old.training)
    return new


def _subset_linear(old: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear with only the ``keep`` output rows (``dim=0``) or input columns (``dim=1``)."""
    w = old.weight.detach()
    keep = keep.to(w.device)
    b = None if old.bias is None else old.bias.detach()
    return linear_like(old, w.index_select(dim, keep).clone(),
                       None if b is None else (b.index_select(0, keep) if dim == 0 else b).clone())


def swap_ffn_linears(adapter: Any, layer: nn.Module,
                     rebuild: Callable[[nn.Linear, int], nn.Linear]) -> Callable[[], None]:
    """Replace each FFN linear of ``layer`` that holds the FFN channels by ``rebuild(linear, dim)``
    (``dim`` 0: the channels are its output rows; 1: its input columns); return a function that
    puts the original modules back."""
    from searchskip.arch.fused import RowSlice

    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    fused: dict[int, list[RowSlice]] = {}
    for key, linear in adapter.mlp_linears(layer).items():
        if key in adapter.mlp_in_keys:
            dim = 0
        elif key == adapter.mlp_out_key:
            dim = 1
        else:
            continue
        if isinstance(linear, RowSlice):  # rebuilt below, once for all its slices
            fused.setdefault(id(linear.source), []).append(linear)
            continue
        parent, name = _parent_of(layer, linear)
        setattr(parent, name, rebuild(linear, dim))
        swaps.append((parent, name, linear))
    for slices in fused.values():  # Phi-3's gate_up_proj: each slice's rows rebuilt, stacked in their order
        source = slices[0].source
        if _rows_covered(slices) != source.out_features:
            raise ModelError(f"the FFN linears sliced from {source} do not cover its rows")
        parts = [rebuild(s, 0) for s in sorted(slices, key=lambda s: s.start)]
        bias = None if source.bias is None else torch.cat([p.bias for p in parts]).detach()
        parent, name = _parent_of(layer, source)
        setattr(parent, name, linear_like(source, torch.cat([p.weight for p in parts]).detach(), bias))
        swaps.append((parent, name, source))

    def restore() -> None:
        for parent, name, original in swaps:
            setattr(parent, name, original)

    return restore


def _rows_covered(slices: Sequence[Any]) -> int:
    """Rows the slices of one fused linear cover together."""
    return sum(s.out_features for s in slices)


def shrink_ffn(adapter: Any, layer: nn.Module, keep: torch.Tensor) -> Callable[[], None]:
    """Replace ``layer``'s FFN linears by smaller ones holding only the channels ``keep`` (sorted
    indices); return a function that puts the original modules back."""
    return swap_ffn_linears(adapter, layer, lambda linear, dim: _subset_linear(linear, keep, dim))


# --------------------------------------------------------------------------------------
# apply_pruning
# --------------------------------------------------------------------------------------


def target_linears(adapter: Any, layer: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """The linears of ``layer`` that ``targets`` (``attn`` / ``ffn``) name, by role."""
    out: dict[str, nn.Linear] = {}
    if "attn" in targets:
        out.update(adapter.attn_linears(layer))
    if "ffn" in targets:
        out.update(adapter.mlp_linears(layer))
    return out


def _check(spec: Any, layer_ids: Sequence[int], calibration: Any) -> None:
    problems: list[Problem] = []
    if spec.method not in ("magnitude", "wanda"):
        problems.append(Problem(None, "prune.method", f"must be 'magnitude' or 'wanda', but got {spec.method!r}"))
    if spec.structure not in ("unstructured", "2:4", "ffn_channels"):
        problems.append(Problem(None, "prune.structure",
                                f"must be 'unstructured', '2:4' or 'ffn_channels', but got {spec.structure!r}"))
    targets = tuple(spec.targets)
    if not targets or any(t not in ("attn", "ffn") for t in targets):
        problems.append(Problem(None, "prune.targets", f"must be a non-empty list of attn / ffn, but got {list(targets)}"))
    if spec.structure == "ffn_channels" and set(targets) != {"ffn"}:
        problems.append(Problem(None, "prune.targets", "structure 'ffn_channels' removes channels of the FFN only, "
                                                       f"so targets must be [ffn], but got {list(targets)}"))
    if spec.per_layer:
        known = set(layer_ids)
        for i, _ in spec.sparsity:
            if i not in known:
                problems.append(Problem(None, f"prune.sparsity.{i}",
                                        f"layer {i} is not a decoder layer of this model (layers: "
                                        f"{min(known)}..{max(known)})" if known else f"the model has no layer {i}"))
    for i in layer_ids:
        s = spec.sparsity_for(i)
        if not 0.0 <= s < 1.0:
            problems.append(Problem(None, "prune.sparsity", f"`0 <= sparsity < 1` must hold, but got {s!r} for layer {i}"))
        elif spec.structure == "2:4" and s not in (0.0, 0.5):
            problems.append(Problem(None, "prune.sparsity",
                                    f"structure '2:4' prunes exactly half the weights, so sparsity must be 0.5, "
                                    f"but got {s!r} for layer {i}"))
    if spec.method == "wanda" and not calibration:
        problems.append(Problem(None, "prune.calibration",
                                "method 'wanda' scores weights by their input activations, so it needs calibration "
                                "batches (see searchskip.ops.calibration.calibration_batches), but none were given"))
    if problems:
        raise ConfigError(problems)


def apply_pruning(model: nn.Module, adapter: Any, spec: Any, calibration: list[dict] | None = None, *,
                  layer_ids: Sequence[int] | None = None, sequential: bool = False) -> PruneResult:
    """Prune ``model``'s decoder linears in place as ``spec`` (a :class:`~searchskip.plan.PruneSpec`)
    says; return the :class:`PruneResult`, whose ``undo()`` restores the model exactly.

    ``calibration``: batches of model inputs (for wanda; ignored by magnitude). ``layer_ids``:
    the plan's index of each layer in ``adapter.layers(model)`` (default ``0, 1, ...``; pass
    it when layers were dropped before pruning). ``sequential``: wanda only, measure each
    layer's activations with the layers before it already pruned (see the module docstring).

    Raises :class:`~searchskip.errors.ConfigError` (keys ``prune.*``) when the spec does not
    fit the model: wanda without calibration, a 2:4 linear whose input dimension is not a
    multiple of 4, ``ffn_channels`` with attention targets, layer indices the model lacks.
    """
    layers = list(adapter.layers(model))
    ids = list(range(len(layers))) if layer_ids is None else [int(i) for i in layer_ids]
    if len(ids) != len(layers):
        raise ValueError(f"layer_ids has {len(ids)} entries but the model has {len(layers)} decoder layers")
    _check(spec, ids, calibration)
    wanda = spec.method == "wanda"
    channels = spec.structure == "ffn_channels"
    work = [(pos, i, spec.sparsity_for(i)) for pos, i in enumerate(ids) if spec.sparsity_for(i) > 0.0]

    # linears whose input norms wanda needs, per layer position
    def hooked(pos: int) -> dict[str, nn.Linear]:
        if channels:
            return {adapter.mlp_out_key: adapter.mlp_linears(layers[pos])[adapter.mlp_out_key]}
        return target_linears(adapter, layers[pos], spec.targets)

    if spec.structure == "2:4":
        bad = [Problem(None, "prune.structure",
                       f"structure '2:4' groups 4 consecutive input weights, but linear '{key}' of layer {i} has "
                       f"input dimension {lin.in_features}, not a multiple of 4")
               for pos, i, _ in work for key, lin in target_linears(adapter, layers[pos], spec.targets).items()
               if lin.in_features % 4]
        if bad:
            raise ConfigError(bad)

    result = PruneResult(method=spec.method, structure=spec.structure)
    norms: dict[tuple[int, str], torch.Tensor] = {}
    if wanda and not sequential and work:
        wanted = {(pos, key): lin for pos, _, _ in work for key, lin in hooked(pos).items()}
        norms = input_norms(model, wanted, calibration)

    try:
        with torch.no_grad():
            for pos, i, s in work:
                layer = layers[pos]
                if wanda and sequential:
                    wanted = {(pos, key): lin for key, lin in hooked(pos).items()}
                    norms = input_norms(model, wanted, calibration, stop_after=layer)
                if channels:
                    _prune_channels(adapter, layer, pos, i, s, norms if wanda else None, result)
                else:
                    _prune_weights(adapter, layer, pos, i, s, spec, norms if wanda else None, result)
    except BaseException:
        result.undo()
        raise
    return result


def _prune_weights(adapter: Any, layer: nn.Module, pos: int, i: int, s: float, spec: Any,
                   norms: Mapping[tuple[int, str], torch.Tensor] | None, result: PruneResult) -> None:
    zeroed: dict[str, int] = {}
    for key, linear in target_linears(adapter, layer, spec.targets).items():
        w = linear.weight
        scores = wanda_scores(w, norms[(pos, key)]) if norms is not None else magnitude_scores(w)
        if spec.structure == "2:4":
            mask = n_m_mask(scores, 2, 4)
        else:
            mask = unstructured_mask(scores, s, per_row=norms is not None)
        saved = w.detach().clone()

        def restore(w: torch.Tensor = w, saved: torch.Tensor = saved) -> None:
            w.data.copy_(saved)

        result._restore.append(restore)
        w.data.masked_fill_(mask, 0)
        zeroed[key] = int(mask.sum())
    result.zeroed[i] = sum(zeroed.values())
    result.zeroed_by_linear[i] = zeroed


def _prune_channels(adapter: Any, layer: nn.Module, pos: int, i: int, s: float,
                    norms: Mapping[tuple[int, str], torch.Tensor] | None, result: PruneResult) -> None:
    total = adapter.ffn_channels(layer)
    remove = total - kept_ffn_channels(total, s)  # the FLOP count's rule, so the two cannot drift
    if remove <= 0:
        return
    scores = ffn_channel_scores(adapter, layer, None if norms is None else norms[(pos, adapter.mlp_out_key)])
    drop = torch.argsort(scores, stable=True)[:remove]
    keep_mask = torch.ones(total, dtype=torch.bool, device=scores.device)
    keep_mask[drop] = False
    keep = keep_mask.nonzero().flatten()
    result._restore.append(shrink_ffn(adapter, layer, keep))
    result.channels_removed[i] = remove
    result.kept_channels[i] = keep.cpu()
