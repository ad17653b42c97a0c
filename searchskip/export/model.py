"""Compress a model by a plan for good: :func:`compress` and :func:`save_compressed`.

What a plan becomes in the exported model:

========================================  =====================================================
plan part                                 in the export
========================================  =====================================================
``drop``, ``skip_block`` with scope all   the layers are **removed**; the others are renumbered
                                          (``num_hidden_layers``, ``layer_types``, each
                                          attention's ``layer_idx``); layers the model
                                          injects features after by index (Qwen3-VL's
                                          DeepStack) stay, skipped at runtime
``prune`` unstructured / ``"2:4"``        the zeros are baked into the weights (dense tensors)
``prune`` ``ffn_channels``                the channels are **removed**; transformers' configs
                                          have one FFN size for all layers, so layers keeping
                                          fewer channels than the widest one are padded back
                                          with zero channels (exact; they cost FLOPs on dense
                                          kernels; ``ffn_widths`` in the export record lets
                                          searchskip's vLLM plugin build each layer at its own
                                          width). A uniform sparsity on every layer therefore
                                          shrinks ``intermediate_size`` for real.
``skip_attn`` / ``skip_ffn`` for all        kept as a **runtime plan** (below), and also written
tokens                                    into the weights: the sublayer's output projection is
                                          zeroed, so a plain model computes the same
                                          (:mod:`searchskip.export.bake`)
scoped ops, parallel ops,                 kept as a **runtime plan**, renumbered to the
``visual_tokens``, ``early_exit``         compressed layers, stored in ``searchskip_export.json``
                                          and applied by :func:`searchskip.load_compressed`; the
                                          weights are kept from plain loaders
                                          (:mod:`searchskip.export.held`)
========================================  =====================================================

A plan whose runtime ops are all written into the weights gives a model that plain
``transformers`` loads with ``from_pretrained`` and no searchskip import, and that answers as the
planned model (``plain_transformers: true`` in ``searchskip_export.json``; searchskip's loader
still skips the zeroed sublayers' compute). Any other plan's folder is refused by plain
``from_pretrained`` rather than loaded as a different model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchskip.errors import ModelError
from searchskip.plan import Plan

__all__ = ["EXPORT_FILE", "MODEL_DIR", "FORMAT", "CompressedModel", "compress", "runtime_plan", "removed_layers", "save_compressed",
           "read_export_info", "apply_runtime_plan"]

EXPORT_FILE = "searchskip_export.json"
MODEL_DIR = "model"
"""The model folder inside an export (and inside a fine-tune's output folder)."""
FORMAT = 1
FFN_SIZE_KEYS = ("intermediate_size", "ffn_dim")
"""Config attributes that hold the FFN width (Llama/Mistral/Qwen2; OPT)."""


def _skipped_whole(plan: Plan, num_layers: int) -> set[int]:
    """Layers ``plan`` runs for no position: ``drop`` and ``skip_block`` for all tokens."""
    gone = set(plan.dropped_layers())
    gone |= {i for i in range(num_layers) if plan.op_for(i).op == "skip_block" and plan.op_for(i).scope == "all"}
    return gone


def removed_layers(plan: Plan, num_layers: int, pinned: frozenset[int] = frozenset()) -> list[int]:
    """Layers the export removes: ``drop`` and ``skip_block`` for all tokens, except the
    ``pinned`` ones (:meth:`~searchskip.arch.base.ArchAdapter.injected_layers`), which stay and
    are skipped at runtime."""
    return sorted(_skipped_whole(plan, num_layers) - set(pinned))


def runtime_plan(plan: Plan, num_layers: int,
                 pinned: frozenset[int] = frozenset()) -> tuple[Plan | None, list[int]]:
    """``(plan of the ops left as runtime hooks, renumbered; or None, kept original layer indices)``;
    a ``pinned`` layer the plan skips whole stays, as ``skip_block`` at runtime."""
    gone = set(removed_layers(plan, num_layers, pinned))
    kept = [i for i in range(num_layers) if i not in gone]
    new_index = {old: new for new, old in enumerate(kept)}
    data = plan.to_dict()
    layers = {new_index[i]: entry for i, entry in (data.get("layers") or {}).items() if i in new_index}
    for i in sorted(_skipped_whole(plan, num_layers) & set(pinned)):
        layers[new_index[i]] = "skip_block"
    rest = {"version": data["version"], "scope": data.get("scope", "all"), "layers": layers}
    visual, early = plan.visual_tokens, plan.early_exit
    if visual is not None and any(i >= visual.after_layer for i in kept):
        rest["visual_tokens"] = dict(data["visual_tokens"], after_layer=sum(i < visual.after_layer for i in kept))
    if early is not None and any(i > early.layer for i in kept):
        before = sum(i <= early.layer for i in kept)
        if before == 0:
            raise ModelError(f"early_exit.layer={early.layer}: every layer up to it is removed by the export, so "
                             "generated tokens would skip every remaining layer; keep a layer at or before the exit")
        rest["early_exit"] = dict(data["early_exit"], layer=before - 1)
    residual = Plan.from_dict(rest)
    return (None if residual.is_empty else residual), kept


@dataclass
class CompressedModel:
    """What :func:`compress` did."""

    kept_layers: list[int]
    """Original index of each remaining decoder layer, in order."""
    runtime_plan: Plan | None
    ffn_size: int | None
    """The FFN width written to the config when ``ffn_channels`` pruning changed it."""
    ffn_widths: list[int] | None = None
    """Each remaining layer's FFN channels before padding, when ``ffn_channels`` pruning left them
    uneven (the padded channels are zero; searchskip's vLLM plugin does not build them)."""


def compress(loaded: Any, plan: Plan, *, calibration: Any = None) -> CompressedModel:
    """Turn ``loaded.model`` into the compressed model of ``plan``, in place (see the module doc).

    ``loaded.model`` must carry no applied plan; afterwards it is a plain transformers model of
    the same class with fewer layers (the runtime plan is *not* applied: :func:`save_compressed`
    stores it, :func:`searchskip.load_compressed` applies it)."""
    from searchskip.apply import applied_plan
    from searchskip.arch import get_adapter

    model = loaded.model
    if applied_plan(model) is not None:
        raise RuntimeError("compress() needs a model without an applied plan; restore it first")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    n = len(layers)
    plan.validate(n)
    residual, kept = runtime_plan(plan, n, adapter.injected_layers(model))
    if plan.prune is not None:
        from searchskip.ops.prune import apply_pruning

        apply_pruning(model, adapter, plan.prune, None if calibration is None else list(calibration))
    ffn_size, widths = _even_ffn_widths(adapter, model, [layers[i] for i in kept]) if plan.prune is not None else (None, None)
    _keep_layers(adapter, model, kept)
    return CompressedModel(kept_layers=kept, runtime_plan=residual, ffn_size=ffn_size, ffn_widths=widths)


def _keep_layers(adapter: Any, model: Any, kept: list[int]) -> None:
    import torch.nn as nn

    stack = adapter.language_model(model)
    layers = stack.layers
    if len(kept) == len(layers):
        return
    stack.layers = nn.ModuleList([layers[i] for i in kept])
    config = adapter.text_config(model)
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), (list, tuple)):
        config.layer_types = [config.layer_types[i] for i in kept]
    for new, layer in enumerate(stack.layers):
        attention = adapter.attention(layer)
        if hasattr(attention, "layer_idx"):
            attention.layer_idx = new
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new


def _even_ffn_widths(adapter: Any, model: Any, layers: list[Any]) -> tuple[int | None, list[int] | None]:
    """After ``ffn_channels`` pruning: pad every layer's FFN to the widest one with zero channels
    (appended after its own) and write that width to the config. ``(the new config width or None
    if unchanged, each layer's width before padding or None if they are all equal)``."""
    config = adapter.text_config(model)
    key = next((k for k in FFN_SIZE_KEYS if hasattr(config, k)), None)
    widths = [adapter.ffn_channels(layer) for layer in layers]
    if key is None or all(w == getattr(config, key) for w in widths):
        return None, None
    target = max(widths)
    for layer, width in zip(layers, widths):
        if width < target:
            _pad_ffn(adapter, layer, target)
    uneven = widths if len(set(widths)) > 1 else None
    if target == getattr(config, key):
        return None, uneven
    setattr(config, key, target)
    return target, uneven


def _pad_ffn(adapter: Any, layer: Any, size: int) -> None:
    """Grow ``layer``'s FFN to ``size`` channels with zero channels (their output is exactly 0:
    the out-projection's columns for them are zero)."""
    import torch

    from searchskip.ops.prune import linear_like, swap_ffn_linears

    def padded(old: Any, dim: int) -> Any:
        w = old.weight.detach()
        shape = list(w.shape)
        shape[dim] = size - w.shape[dim]
        b = None if old.bias is None else old.bias.detach()
        if b is not None:
            b = torch.cat([b, b.new_zeros(size - b.shape[0])]) if dim == 0 else b.clone()
        return linear_like(old, torch.cat([w, w.new_zeros(shape)], dim=dim), b)

    swap_ffn_linears(adapter, layer, padded)


def save_compressed(loaded: Any, folder: str | Path, *, runtime_plan: Plan | None, prompt_template: str,
                    source_model: str, extra: dict | None = None) -> Path:
    """Write ``loaded`` (model + processor, safetensors) into ``folder`` with ``searchskip_export.json``
    (``format``, ``runtime_plan``, ``plain_transformers``, ``baked_skips``, ``weights``,
    ``prompt_template``, ``source_model`` and ``extra``). ``loaded.model`` must carry no applied
    plan.

    The runtime plan's sublayer skips for every token are written into the saved weights
    (:func:`searchskip.export.bake.bake_skips`: their output projections zeroed; ``loaded.model``
    keeps its values), so that plain loaders run the planned model where the plan allows it
    (``plain_transformers``); where it does not, the weights are kept from plain loaders
    (:mod:`searchskip.export.held`)."""
    from searchskip.apply import applied_plan

    if applied_plan(loaded.model) is not None:
        raise RuntimeError("save_compressed() needs a model without an applied plan; restore it first")
    from searchskip.arch import get_adapter
    from searchskip.export.bake import bake_skips, bakeable
    from searchskip.export.held import HELD_WEIGHTS, hold_weights
    from searchskip.export.layout import release_names

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(loaded.model)
    plain = bakeable(runtime_plan, adapter.num_layers(loaded.model))
    with bake_skips(adapter, loaded.model, runtime_plan) as baked:
        loaded.model.save_pretrained(folder, safe_serialization=True)
    release_names(loaded.model, folder)  # vision-tower tensors named as the released checkpoints name them
    loaded.processor.save_pretrained(folder)
    if not plain:
        hold_weights(folder)
    info = {"format": FORMAT, "runtime_plan": json.loads(runtime_plan.to_json()) if runtime_plan is not None else None,
            "plain_transformers": plain, "baked_skips": baked,
            "weights": "model.safetensors" if plain else HELD_WEIGHTS, "prompt_template": prompt_template,
            "source_model": source_model, **(extra or {})}
    (folder / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def read_export_info(folder: str | Path) -> dict | None:
    """The ``searchskip_export.json`` of a model folder, or ``None`` for any other model."""
    path = Path(folder) / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable export record: {err}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelError(f"{path}: format must be {FORMAT}, but got {info.get('format') if isinstance(info, dict) else info!r}")
    return info


def apply_runtime_plan(loaded: Any) -> None:
    """Apply the runtime plan that ``loaded.source``'s ``searchskip_export.json`` stores (an export's
    or a fine-tune's ``model/`` folder) to ``loaded.model``; nothing for any other model.
    :class:`~searchskip.errors.ModelError` when the plan does not fit the model."""
    from searchskip.apply import apply

    folder = Path(loaded.source)
    info = read_export_info(folder) if folder.is_dir() else None
    if info is None or info.get("runtime_plan") is None:
        return
    file = str(folder / EXPORT_FILE)
    plan = Plan.from_json(json.dumps(info["runtime_plan"]), file=file)
    try:
        apply(loaded.model, plan)
    except Exception as err:
        raise ModelError(f"{file}: runtime_plan does not fit the model in {folder}: {err}") from None
