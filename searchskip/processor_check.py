"""Does a model's processor agree with its config and its prompt template? Checked before any verb
scores, prices or searches the model.

A vision-language model runs only when its processor puts, for every image, exactly as many image
tokens in the prompt as the model's vision side makes features; otherwise transformers stops at
the first batch ("Image features and image tokens do not match"). Processor and config are two
files (``processor_config.json`` / ``preprocessor_config.json`` and ``config.json``) that a copied,
hand-edited or half-converted folder can set apart, and a job's ``model.prompt_template`` can
leave the image out or put it in twice. :func:`check_processor` catches all of these where they
start:

* the template holds the processor's image placeholder exactly once;
* settings both files hold (:data:`SHARED_SETTINGS`: LLaVA-OneVision's ``vision_aspect_ratio``,
  the anyres ``image_grid_pinpoints``, Gemma 3's image token count) are equal, and the image token
  the config names is the one the tokenizer gives the processor's image token;
* on probe images (:data:`PROBE_SIZES`: square, wide, tall) the processor does not fail, its image
  tokens equal the image positions the config gives (the count searchskip prices), and the images
  (crops, tiles) it makes for a fixed-resolution tower are the tower's ``vision_config.image_size``.
"""

from __future__ import annotations

from typing import Any

from searchskip.errors import ModelError, first_line

__all__ = ["PROBE_SIZES", "SHARED_SETTINGS", "check_processor", "config_image_token_id"]

PROBE_SIZES = ((64, 64), (64, 160), (160, 64))
"""``(height, width)`` of the probe images."""

SHARED_SETTINGS = (
    ("vision_aspect_ratio", "vision_aspect_ratio", "processor_config.json"),
    ("image_grid_pinpoints", "image_processor.image_grid_pinpoints", "the image processor's settings"),
    ("mm_tokens_per_image", "image_seq_length", "processor_config.json"),
)
"""``(config.json key, processor attribute, where the processor's value is saved)`` of the settings
a config and its processor both hold (where both have them)."""


def config_image_token_id(config: Any) -> int | None:
    """The id of the token the model replaces with image features (``image_token_id``, or
    ``image_token_index``), or ``None``."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return value
    return None


def check_processor(config: Any, geometry: Any, processor: Any, template: str, *, template_key: str | None,
                    source: str) -> None:
    """:class:`~searchskip.errors.ModelError` when ``processor`` (of the model at ``source``, whose
    ``config`` and FLOP ``geometry`` are given) disagrees with the config or with ``template`` (see
    the module doc). ``template_key``: the job key the template came from (``model.prompt_template``),
    or ``None`` for the family's or the export's own template."""
    from searchskip.eval.prompts import placeholder_problem
    from searchskip.processors import image_placeholder

    if geometry.vision is None:
        return
    problem = placeholder_problem(template, image_placeholder(processor))
    if problem:
        if template_key:
            raise ModelError(f"{template_key}: {problem}")
        raise ModelError(f"model.id: '{source}': the prompt template searchskip uses for it {problem}; "
                         "set model.prompt_template in the job")
    where = f"model.id: '{source}'"
    _check_shared(config, processor, where)
    _check_image_token(config, processor, where)
    _check_probes(config, geometry, processor, template, where)


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _check_shared(config: Any, processor: Any, where: str) -> None:
    for key, attr, saved in SHARED_SETTINGS:
        ours, theirs = getattr(config, key, None), _attr(processor, attr)
        if ours is not None and theirs is not None and not _same(ours, theirs):
            raise ModelError(f"{where}: config.json `{key}` ({ours!r}) differs from the processor's `{attr}` "
                             f"({theirs!r}, in {saved}); the model would refuse its prompts: make them equal")


def _check_image_token(config: Any, processor: Any, where: str) -> None:
    from searchskip.processors import image_token

    wanted = config_image_token_id(config)
    token, token_id = image_token(processor)
    if wanted is None:
        raise ModelError(f"{where}: config.json names no image token (`image_token_id`); its processor's is "
                         f"{token!r} (id {token_id})")
    text = getattr(config, "text_config", None) or config
    vocab = getattr(text, "vocab_size", None)
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0 or (vocab and wanted >= vocab):
        raise ModelError(f"{where}: config.json `image_token_id` must be a token id below the vocabulary size "
                         f"({vocab}), but got {wanted!r}")
    if wanted != token_id:
        raise ModelError(f"{where}: config.json `image_token_id` ({wanted}) is not the id of the processor's image "
                         f"token {token!r} ({token_id}); the model would find no image in its prompts")


def _check_probes(config: Any, geometry: Any, processor: Any, template: str, where: str) -> None:
    from PIL import Image

    from searchskip.eval.batching import shape_of_inputs
    from searchskip.processors import encode, image_inputs

    image_id = config_image_token_id(config)
    for height, width in PROBE_SIZES:
        image = Image.new("RGB", (width, height), (128, 96, 64))
        try:
            ids = encode(processor, [image], [template.format(question="what is it?")])["input_ids"][0].tolist()
            pixels = image_inputs(processor, [image])
            shape = shape_of_inputs(pixels)
        except Exception as err:  # noqa: BLE001 - a processor's settings break it in any of many ways
            raise ModelError(f"{where}: its processor fails on a {width}x{height} image ({type(err).__name__}: "
                             f"{first_line(err)}); check its settings (preprocessor_config.json, processor_config.json)") from None
        _check_resolution(config, pixels, where)
        try:
            expected = (geometry.vision.image_tokens if geometry.vision.image_tokens is not None
                        else geometry.vision.tokens_per_image(shape))
        except (ValueError, ArithmeticError) as err:
            raise ModelError(f"{where}: config.json's vision settings cannot place a {width}x{height} image "
                             f"(image shape {shape}): {err}") from None
        got = ids.count(image_id)
        if got != expected:
            raise ModelError(f"{where}: its processor puts {got} image tokens in the prompt for a {width}x{height} "
                             f"image, but config.json's vision settings make {expected} image features of it (the "
                             "model would stop: \"Image features and image tokens do not match\"); the processor's "
                             "settings (processor_config.json, preprocessor_config.json: image size, image_seq_length, "
                             "tiling) must match config.json's")


def _check_resolution(config: Any, pixels: Any, where: str) -> None:
    """Images (crops, tiles) the image processor makes are the vision tower's ``image_size``, for
    towers that take one resolution (not Qwen-VL's patch lists)."""
    size = getattr(getattr(config, "vision_config", None), "image_size", None)
    values = pixels.get("pixel_values") if hasattr(pixels, "get") else None
    if size is None or values is None or getattr(values, "dim", lambda: 0)() < 4:
        return
    want = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    got = tuple(int(x) for x in values.shape[-2:])
    if got != tuple(int(x) for x in want):
        raise ModelError(f"{where}: its image processor makes {got[0]}x{got[1]}-pixel images (crops, tiles), but the "
                         f"vision tower takes config.json's `vision_config.image_size` ({want[0]}x{want[1]}); the "
                         "image processor's size (preprocessor_config.json / processor_config.json) must match it")
