"""Load a model's processor, also where transformers cannot build it whole.

``AutoProcessor.from_pretrained`` builds every part a processor class declares. In
transformers 5.x Qwen2-VL's and Qwen2.5-VL's processors declare a *video* processor, which
needs torchvision; on a machine without it the processor cannot be built at all, not even
for images (transformers fails while checking the video processor's class). searchskip only
feeds images, so :func:`load_processor` then (and where a folder has no video processor
config) builds the same processor class with its image
processor (``AutoImageProcessor``: the PIL backend), its tokenizer and chat template, and no
video processor. It answers, batches and saves (``save_pretrained`` writes the image
processor and the tokenizer under the original processor class) as the full one does for
images; a video input is refused by the processor itself.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

__all__ = ["NOTICES", "PIL_LAYOUT", "encode", "expanded_image_text", "image_defaults", "image_inputs", "image_only_class",
           "image_only_processor", "image_placeholder", "image_token", "load_processor"]

PIL_LAYOUT = {"input_data_format": "channels_last"}
"""What every processor call says of its images: searchskip feeds PIL images, height x width x
channels. Without it transformers guesses the channel axis from the array's shape, and for an
image 3 (or 1) pixels high guesses wrong and logs "The channel dimension is ambiguous"."""


NOTICES = {
    "transformers.tokenization_utils_base": ("Token indices sequence length is longer than",),
    "transformers.image_utils": ("The channel dimension is ambiguous",),
}
"""Library log lines that are noise to a searchskip user, by logger and start: a tokenizer's notice
that a prompt (with its image tokens: InternVL's 256 a tile) is longer than its
``model_max_length`` (searchskip never truncates; the model's positions bound the prompt), and the
channel guess transformers' own image code makes again on an array it already laid out channels
first (InternVL's tiling of an image 1 or 3 pixels high; searchskip's own calls say
:data:`PIL_LAYOUT`)."""


class _DropNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def _quiet_notices() -> None:
    for name, starts in NOTICES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in log.filters):
            log.addFilter(_DropNotices(starts))


def encode(processor: Any, images: list, text: list[str], **kwargs: Any) -> Any:
    """``processor(images=..., text=..., return_tensors="pt")`` with :data:`PIL_LAYOUT`: the model
    inputs of ``text`` (each image placeholder expanded) and ``images``."""
    return processor(images=images, text=text, return_tensors="pt", **PIL_LAYOUT, **kwargs)


def _needs_video_stack(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return any(sign in text for sign in ("video_processor_mapping", "torchvision", "video processor"))


def load_processor(source: str, **kwargs: Any) -> Any:
    """The processor of ``source`` (a folder or hub id; ``kwargs`` go to ``from_pretrained``):
    ``AutoProcessor``'s, or, where that needs torchvision for a video processor this machine
    cannot build, :func:`image_only_processor`'s."""
    from transformers import AutoProcessor

    _quiet_notices()
    try:
        return AutoProcessor.from_pretrained(source, **kwargs)
    except (AttributeError, ImportError, ValueError, OSError) as err:
        if not _needs_video_stack(err):
            raise
        return image_only_processor(source, **kwargs)


@functools.lru_cache(maxsize=None)
def image_only_class(base: type) -> type:
    """``base`` without its video processor among its parts (so it is neither checked, built nor
    saved); same name, so saved files name ``base``."""

    @classmethod
    def get_attributes(cls):
        return [a for a in base.get_attributes() if a != "video_processor"]

    return type(base.__name__, (base,), {"get_attributes": get_attributes, "__module__": base.__module__,
                                         "__doc__": f"{base.__name__} for images only (no video processor)."})


def image_only_processor(source: str, **kwargs: Any) -> Any:
    """The processor class ``source`` names, built from its image processor, its tokenizer and
    its own saved settings (``processor_config.json``: LLaVA-OneVision's ``num_image_tokens``
    and ``vision_aspect_ratio``, ...) alone (see the module doc)."""
    import transformers

    name = _saved_processor_class(source, **kwargs) or _processor_class_of_config(source, **kwargs)
    base = getattr(transformers, name, None) if name else None
    if base is None:
        raise ValueError(f"cannot tell which processor class '{source}' uses (no processor_class in its files)")
    attributes = base.get_attributes()
    if set(attributes) - {"image_processor", "tokenizer", "video_processor"}:
        raise ValueError(f"{name} needs parts besides an image processor, a tokenizer and a video processor "
                         f"({', '.join(attributes)}); it cannot be built for images only")
    return image_only_class(base).from_pretrained(source, **kwargs)


def _saved_processor_class(source: str, **kwargs: Any) -> str | None:
    """The ``processor_class`` ``source``'s processor files name (processor, image processor or
    tokenizer config), if any."""
    from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin

    try:
        saved, _ = ProcessorMixin.get_processor_dict(source, **kwargs)
    except (OSError, ValueError):
        saved = {}
    if saved.get("processor_class"):
        return saved["processor_class"]
    for auto in (AutoImageProcessor, AutoTokenizer):
        try:
            name = getattr(auto.from_pretrained(source, **kwargs), "processor_class", None)
        except (OSError, ValueError, ImportError):
            continue
        if name:
            return name
    return None


def _processor_class_of_config(source: str, **kwargs: Any) -> str | None:
    """The processor class for the model type of ``source``'s config (transformers' auto map)."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
    return PROCESSOR_MAPPING_NAMES.get(model_type)


def image_defaults(processor: Any) -> dict:
    """The image settings ``processor``'s class passes its image processor on every call (InternVL:
    ``crop_to_patches: true``), which the image processor alone does not apply."""
    return dict(getattr(type(processor), "images_kwargs", None) or {})


def image_inputs(processor: Any, images: list) -> Any:
    """What ``processor``'s image processor makes of ``images`` (``return_tensors="pt"``) when the
    processor itself calls it: with the processor class's own image defaults (InternVL's
    processor tiles images, ``crop_to_patches``, which its image processor alone does not), and
    with the per-image counts the processor would drop from its output (InternVL's
    ``num_patches``, the tiles of each image)."""
    return processor.image_processor(images, return_tensors="pt", **PIL_LAYOUT, **image_defaults(processor))


def expanded_image_text(processor: Any, image: Any) -> str | None:
    """The text ``processor`` puts in place of one image placeholder for ``image``: its image
    tokens and whatever frames them (InternVL's ``<img>`` ... ``</img>``, Gemma 3's
    ``<start_of_image>`` ... ``<end_of_image>``), as its ``__call__`` builds it; ``None`` for a
    processor that does not expand placeholders this way."""
    try:
        _, texts = processor._process_images([image], return_tensors="pt", **PIL_LAYOUT, **image_defaults(processor))
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return texts[0] if texts else None


def image_placeholder(processor: Any) -> str:
    """What a prompt holds where an image goes: the processor's ``image_token`` (``<image>``;
    Qwen-VL's ``<|image_pad|>``; InternVL's ``<IMG_CONTEXT>``; Gemma 3's ``<start_of_image>``)."""
    return getattr(processor, "image_token", None) or "<image>"


def image_token(processor: Any) -> tuple[str, int]:
    """``(token, id)`` of the tokens that carry image features once the processor has expanded a
    placeholder: the tokenizer's ``image_token`` where it names one (Gemma 3's
    ``<image_soft_token>``, which differs from its placeholder), else the placeholder itself."""
    tokenizer = getattr(processor, "tokenizer", processor)
    token = getattr(tokenizer, "image_token", None)
    if token and token != image_placeholder(processor):
        return token, int(tokenizer.convert_tokens_to_ids(token))
    token = image_placeholder(processor)
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = tokenizer.convert_tokens_to_ids(token)
    return token, int(token_id)
