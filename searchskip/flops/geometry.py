"""The shapes FLOP counting needs, read from a model's *config* alone (no weights).

:func:`geometry_of` builds the model from its config on PyTorch's ``meta`` device (no
memory is allocated; LLaVA-1.5-7B takes about half a second) and reads every shape through
the architecture adapters of :mod:`searchskip.arch` -- the same code that skipping and
pruning use -- so the count sees exactly the linears the implementation runs: q/k/v/o with
their GQA widths, gate/up/down or fc1/fc2, OPT's project_in/out, the vision tower
(:mod:`searchskip.flops.vision`), the projector's linears and ``lm_head``. Geometries are cached per config.

:func:`resolve_config` finds the config of a job's model: the embedded model's folder, a
local folder, the Hugging Face cache, the hub, and -- only when the hub cannot be reached --
the configs shipped in ``searchskip/arch/configs/`` (:data:`KNOWN_CONFIGS`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from searchskip.errors import ModelError, OfflineError, first_line
from searchskip.flops.linear import Linear
from searchskip.flops.vision import GridVisionGeometry, VisionCount, VisionGeometry, VisionLayerGeometry, vision_geometry

__all__ = [
    "KNOWN_CONFIGS",
    "ArchGeometry",
    "DecoderLayerGeometry",
    "GridVisionGeometry",
    "Linear",
    "VisionCount",
    "VisionGeometry",
    "VisionLayerGeometry",
    "geometry_of",
    "known_config",
    "resolve_config",
    "sliding_windows",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "arch" / "configs"

KNOWN_CONFIGS: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "llava-1.5-7b-hf.json",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b-instruct.json",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llava-v1.6-vicuna-7b-hf.json",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava-onevision-qwen2-7b-ov-hf.json",
    "OpenGVLab/InternVL3-8B-hf": "internvl3-8b-hf.json",
    "google/gemma-3-4b-it": "gemma-3-4b-it.json",
}
"""Hub id -> config file in ``searchskip/arch/configs/``, transcribed from the public hub
config; used only when the hub cannot be reached and the model is not cached."""


@dataclass(frozen=True)
class DecoderLayerGeometry:
    """One decoder layer of the language model."""

    attn: tuple[Linear, ...]
    """q, k, v, o (named so), in that order."""
    mlp: tuple[Linear, ...]
    """The FFN's linears in execution order (gate, up, down / fc1, fc2)."""
    mlp_in_keys: tuple[str, ...]
    """Names in :attr:`mlp` whose outputs are the FFN channels."""
    mlp_out_key: str
    """Name in :attr:`mlp` whose inputs are the FFN channels."""
    heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int | None
    """Keys a query sees at most (``None``: the whole causal prefix)."""
    params: int
    """Every parameter of the layer (linears, biases, norms)."""

    @property
    def ffn_channels(self) -> int:
        return self.linear(self.mlp_out_key).in_features

    def linear(self, name: str) -> Linear:
        for lin in self.attn + self.mlp:
            if lin.name == name:
                return lin
        raise KeyError(name)


@dataclass(frozen=True)
class ArchGeometry:
    """Everything :func:`searchskip.flops.count_flops` needs about a model."""

    name: str
    """What the config is (``_name_or_path`` or model_type), for reports."""
    family: str
    """The adapter name (``llava-llama``, ``llama``, ``opt``...)."""
    layers: tuple[DecoderLayerGeometry, ...]
    lm_head: Linear
    extra_linears: tuple[Linear, ...]
    """Linears of the language model outside its layers that run at every position
    (OPT's ``project_in`` / ``project_out`` when the embedding width differs)."""
    vision: VisionCount | None
    """The vision tower and projector (:mod:`searchskip.flops.vision`); ``None`` for a text-only model."""
    params_total: int
    bidirectional_images: bool = False
    """Whether image tokens attend to every token of their own image (Gemma 3): the causal count
    then adds each image's later-token pairs."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_multimodal(self) -> bool:
        return self.vision is not None


# --------------------------------------------------------------------------------------
# Reading a config
# --------------------------------------------------------------------------------------

_CACHE: dict[str, ArchGeometry] = {}
_LOCK = threading.Lock()


def _config_key(config: Any) -> str:
    return config.to_json_string(use_diff=False)


def geometry_of(arch: Any) -> ArchGeometry:
    """The :class:`ArchGeometry` of ``arch``: an ``ArchGeometry`` (returned as is), a
    transformers ``PretrainedConfig``, a config dict (``config.json`` content), the path of
    a ``config.json`` or of a folder holding one, or a model (its ``.config`` is used; the
    count describes the *config*, e.g. a model whose FFN was already shrunk still counts
    the full FFN: pass the plan instead)."""
    if isinstance(arch, ArchGeometry):
        return arch
    config = _as_config(arch)
    key = _config_key(config)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    geometry = _build_geometry(config)
    with _LOCK:
        _CACHE[key] = geometry
    return geometry


def _as_config(arch: Any) -> Any:
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(arch, PretrainedConfig):
        return arch
    if isinstance(arch, Mapping):
        data = dict(arch)
        model_type = data.get("model_type")
        if not model_type:
            raise ModelError("a config dict needs a 'model_type'")
        from transformers import CONFIG_MAPPING

        cls = CONFIG_MAPPING[model_type]
        return cls.from_dict(data)
    if isinstance(arch, (str, Path)):
        path = Path(arch)
        if path.is_dir() or path.is_file():
            return AutoConfig.from_pretrained(str(path))
        raise ModelError(f"no config.json at '{arch}'")
    config = getattr(arch, "config", None)
    if isinstance(config, PretrainedConfig):
        return config
    raise TypeError(f"expected a config, a config dict, a path or an ArchGeometry, but got {type(arch).__name__}")


def _build_meta_model(config: Any) -> Any:
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            if getattr(config, "vision_config", None) is not None:
                return transformers.AutoModelForImageTextToText.from_config(config)
            return transformers.AutoModelForCausalLM.from_config(config)
    except (ArithmeticError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        # a setting no rule of searchskip.arch.config_rules covers, which transformers cannot build
        raise ModelError(f"config.json: transformers cannot build a model of type "
                         f"'{getattr(config, 'model_type', '?')}' from these settings: {first_line(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _numel(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def sliding_windows(text_config: Any, n: int) -> list[int | None]:
    """Keys a query of each of the ``n`` decoder layers sees at most (``None``: no window), from the
    decoder config as transformers reads it (Mistral: one window for all; Qwen2: per ``layer_types``)."""
    window = getattr(text_config, "sliding_window", None)
    if not window:
        return [None] * n
    types = getattr(text_config, "layer_types", None)
    if types is None:  # Mistral: one window for every layer
        return [int(window)] * n
    return [int(window) if t == "sliding_attention" else None for t in types[:n]]


def _build_geometry(config: Any) -> ArchGeometry:
    from torch import nn

    from searchskip.arch import get_adapter
    from searchskip.arch.config_rules import check_config

    check_config(config)
    model = _build_meta_model(config)
    adapter = get_adapter(model)
    text_config = adapter.text_config(model)
    decoder = adapter.layers(model)
    windows = sliding_windows(text_config, len(decoder))
    layers = []
    for i, layer in enumerate(decoder):
        attn = adapter.attn_linears(layer)
        mlp = adapter.mlp_linears(layer)
        heads, kv_heads, head_dim = adapter.attn_geometry(layer)
        layers.append(DecoderLayerGeometry(
            attn=tuple(Linear.of(k, attn[k]) for k in ("q", "k", "v", "o")),
            mlp=tuple(Linear.of(k, m) for k, m in mlp.items()),
            mlp_in_keys=tuple(adapter.mlp_in_keys), mlp_out_key=adapter.mlp_out_key,
            heads=int(heads), kv_heads=int(kv_heads), head_dim=int(head_dim),
            sliding_window=windows[i], params=_numel(layer),
        ))

    lm = adapter.language_model(model)
    in_layers = {id(m) for layer in decoder for m in layer.modules()}
    extra = tuple(Linear.of(name, m) for name, m in lm.named_modules()
                  if isinstance(m, nn.Linear) and id(m) not in in_layers)
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ModelError(f"{type(model).__name__}: the output embedding is not a linear layer")

    vision = vision_geometry(model, adapter, config) if adapter.vision_tower(model) is not None else None
    total = _numel(model)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "?")
    return ArchGeometry(
        name=name, family=adapter.name, layers=tuple(layers), lm_head=Linear.of("lm_head", head),
        extra_linears=extra, vision=vision, params_total=total,
        bidirectional_images=bool(adapter.bidirectional_images),
    )


# --------------------------------------------------------------------------------------
# Finding a job's config
# --------------------------------------------------------------------------------------


def _config_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or mistyped ``config.json`` raises: transformers 5.x checks each value's
    type (huggingface_hub's strict dataclasses: not a ``TypeError`` subclass)."""
    from huggingface_hub.errors import StrictDataclassError

    return OSError, ValueError, TypeError, StrictDataclassError


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line: a strict-dataclass error's last line names the field, the type
    it needs and the value it got."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith("TypeError: "):
        return f"config.json: {lines[-1].removeprefix('TypeError: ').partition('. Errors: ')[0]}"
    return " ".join(lines) or type(err).__name__


def known_config(model_id: str) -> Any | None:
    """The shipped config of hub id ``model_id`` (a ``PretrainedConfig``), or ``None``."""
    from transformers import AutoConfig

    name = KNOWN_CONFIGS.get(model_id)
    if name is None:
        return None
    config = AutoConfig.from_pretrained(str(CONFIG_DIR / name))
    config._name_or_path = model_id
    return config


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_config(spec: Any) -> tuple[Any, str]:
    """``(config, where it came from)`` for a job's ``model`` section (a ``ModelSpec``).

    Order: embedded or local folder; the Hugging Face cache; the hub (unless
    ``HF_HUB_OFFLINE`` is set); the config shipped in ``searchskip/arch/configs/``. The
    second value says which, in words (a shipped config is named as such, so reports can
    say the hub was not used). :class:`OfflineError` when none is available.
    """
    from transformers import AutoConfig

    from searchskip.models import resolve_source

    source, _ = resolve_source(spec)
    if Path(source).exists():
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
            return config, f"local folder {source}"
        except _config_errors() as err:
            raise ModelError(f"cannot read its config: {_one_line(err)}") from None  # callers name the folder
    kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, **kwargs), f"Hugging Face cache ({source})"
    except (OSError, ValueError):
        pass
    if not _offline():
        try:
            return AutoConfig.from_pretrained(source, **kwargs), f"Hugging Face hub ({source})"
        except (OSError, ValueError):
            pass
    config = known_config(source)
    if config is not None:
        return config, (f"config shipped with searchskip ({KNOWN_CONFIGS[source]}): the hub could not be reached "
                        f"and '{source}' is not cached")
    raise OfflineError(
        f"model.id: the config of '{source}' is not in the local Hugging Face cache and the hub could not be reached; "
        f"searchskip ships configs only for {', '.join(sorted(KNOWN_CONFIGS))}"
    )
