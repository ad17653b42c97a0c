"""What a model's ``config.json`` must hold for searchskip to count and run it: one rule per key,
checked before any model is built from the config (a zero, a negative or a null there would
otherwise surface as a ``ZeroDivisionError`` deep inside transformers, or, worse, as a FLOP
count for a model that cannot exist).

:func:`check_config` runs the rules of :data:`TEXT_RULES` on the decoder's config (the top-level
config of a text-only model, ``text_config`` of a vision-language one), :data:`VISION_RULES` on
``vision_config``, and the rules :data:`FAMILY_RULES` lists for the config's ``model_type``; the
first broken rule is a :class:`~searchskip.errors.ModelError` naming ``config.json``, the key and
the rule. Adding a rule: a ``(key, check)`` pair where ``check(value, config)`` returns the rule
``value`` breaks, or ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from searchskip.errors import ModelError

__all__ = ["FAMILY_RULES", "TEXT_RULES", "VISION_RULES", "check_config"]

Rule = tuple[str, Callable[[Any, Any], "str | None"]]
_MISSING = object()  # a key the config class does not have


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _window(value: Any, config: Any) -> str | None:
    if value is None or (_whole(value) and value >= 1):
        return None
    return "must be a positive whole number of keys (or null: no sliding window)"


def _side(value: Any, config: Any) -> str | None:
    """A pixel size: a positive whole number, or a pair of them (InternViT's ``[448, 448]``)."""
    pair = isinstance(value, (list, tuple)) and len(value) == 2 and all(_whole(v) and v >= 1 for v in value)
    if (_whole(value) and value >= 1) or pair:
        return None
    return "must be a positive whole number of pixels (or a [height, width] pair of them)"


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _pinpoints(value: Any, config: Any) -> str | None:
    """LLaVA-NeXT / OneVision: the resolutions an image is cut into crops at."""
    rule = ("must be a non-empty list of [height, width] pairs, each a positive multiple of the vision tower's "
            "image_size")
    if not isinstance(value, (list, tuple)) or not value:
        return rule
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    size = _first(size) if size is not None and _side(size, config) is None else None
    for pair in value:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_whole(v) and v >= 1 for v in pair)):
            return rule
        if size and any(v % size for v in pair):
            return f"{rule} ({size})"
    return None


def _downsample(value: Any, config: Any) -> str | None:
    """InternVL: the pixel shuffle folds 1/ratio x 1/ratio patches into one feature."""
    rule = "must be 1/k for a whole number k >= 1 (the pixel shuffle merges k x k patches; InternVL uses 0.5)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return rule
    k = 1 / value
    return None if abs(k - round(k)) < 1e-6 else rule


def _pooled_tokens(value: Any, config: Any) -> str | None:
    """Gemma 3: the projector average-pools the square patch grid to this many positions."""
    rule = ("must be a positive square whole number (the image's LLM positions: the vision tower's square patch "
            "grid average-pooled to side x side; Gemma 3 uses 256)")
    if not _whole(value) or value < 1 or math.isqrt(value) ** 2 != value:
        return rule
    vision = getattr(config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if _whole(size) and _whole(patch) and patch >= 1:
        grid, side = size // patch, math.isqrt(value)
        if grid % side:
            return (f"must pool the vision tower's {grid} x {grid} patch grid (image_size {size} / patch_size "
                    f"{patch}) in whole blocks: its side ({side}) must divide {grid}")
    return None


TEXT_RULES: tuple[Rule, ...] = (("sliding_window", _window),)
"""Rules of the decoder's config (every family)."""

VISION_RULES: tuple[Rule, ...] = (("image_size", _side), ("patch_size", _side))
"""Rules of ``vision_config`` (every vision-language family)."""

FAMILY_RULES: dict[str, tuple[Rule, ...]] = {
    "llava_next": (("image_grid_pinpoints", _pinpoints),),
    "llava_onevision": (("image_grid_pinpoints", _pinpoints),),
    "internvl": (("downsample_ratio", _downsample),),
    "gemma3": (("mm_tokens_per_image", _pooled_tokens),),
}
"""``config.model_type`` -> rules of its top-level keys."""


def check_config(config: Any) -> None:
    """:class:`~searchskip.errors.ModelError` naming ``config.json``, the key and the rule for the
    first key of ``config`` that breaks one (see the module doc)."""
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None) or config
    groups = [(config, "", FAMILY_RULES.get(getattr(config, "model_type", None), ())),
              (text, "text_config." if text is not config else "", TEXT_RULES)]
    if vision is not None:
        groups.append((vision, "vision_config.", VISION_RULES))
    for part, prefix, rules in groups:
        for key, check in rules:
            value = getattr(part, key, _MISSING)
            if value is _MISSING:  # the class has no such setting: transformers' own default stands
                continue
            rule = check(value, config)
            if rule:
                _refuse(f"{prefix}{key}", rule, value)


def _refuse(key: str, rule: str, value: Any) -> None:
    import json

    shown = json.dumps(value) if isinstance(value, (int, float, str, list, tuple, type(None))) else repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    raise ModelError(f"config.json: `{key}` {rule}, but got {shown}")
