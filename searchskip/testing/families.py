"""The families :func:`~searchskip.testing.tiny_model` builds, and the token ids every tiny model shares."""

from __future__ import annotations

FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "phi3",
    "opt",
    "llava-llama",
    "llava-mistral",
    "llava-qwen2",
    "llava-qwen3",
    "llava-opt",
    "qwen2-vl",
    "qwen2.5-vl",
    "qwen3-vl",
    "llava-next",
    "llava-onevision",
    "internvl",
    "gemma3-vl",
)
"""Every family :func:`tiny_model` builds; text-only first, then LLaVA over each decoder, then
the other vision-language families."""

WRAPPER_DECODERS: dict[str, str] = {"llava-next": "llama", "llava-onevision": "qwen2", "internvl": "qwen2",
                                    "gemma3-vl": "gemma3"}
"""The vision-language families not named after their decoder, and the decoder each is built over."""
ANYRES_FAMILIES: tuple[str, ...] = ("llava-next", "llava-onevision")
LLAVA_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f.startswith("llava-") and f not in ANYRES_FAMILIES)
QWEN_VL_FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
TILED_FAMILIES: tuple[str, ...] = ("internvl",)
"""Families whose images are cut into tiles (InternVL)."""
GEMMA3_VL_FAMILIES: tuple[str, ...] = ("gemma3-vl",)
"""Gemma 3 with images: image tokens attend to their whole image, framed by <start_of_image> ... <end_of_image>."""
MULTIMODAL_FAMILIES: tuple[str, ...] = LLAVA_FAMILIES + QWEN_VL_FAMILIES + ANYRES_FAMILIES + TILED_FAMILIES + GEMMA3_VL_FAMILIES
RESOLUTION_FAMILIES: tuple[str, ...] = QWEN_VL_FAMILIES + ANYRES_FAMILIES + TILED_FAMILIES
"""Families whose image-token count follows each image's size (``tiny_inputs(image_sides=...)``)."""
ANYRES_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
"""LLaVA-NeXT's and LLaVA-OneVision's tiny resolutions (crops of :data:`IMAGE_SIZE`)."""
ONEVISION_ASPECT = "anyres_max_2"
"""The tiny LLaVA-OneVision's ``vision_aspect_ratio``: a 64x64 image's 2x2 tiles (8x8 features)
are shrunk to 5x5, a 32x64 image's 1x2 tiles are not."""
TEXT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in MULTIMODAL_FAMILIES)

VOCAB = 100
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = 99
VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID = 98, 97, 96
"""Qwen-VL's other special tokens (a Qwen-VL image is ``<vision_start> <image>*n <vision_end>``)."""
SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID})
IMAGE_SIZE, PATCH_SIZE = 32, 8
INTERNVL_TILE, INTERNVL_PATCH = 16, 2
"""The tiny InternViT's tile and patch: a tile is 8 x 8 patches, 4 x 4 = 16 LLM positions after the
pixel shuffle; a 16-pixel image is 1 tile, 32 pixels 2 x 2 tiles + a thumbnail, 48 pixels 3 x 3 + 1."""
QWEN_PATCH, QWEN_TEMPORAL, QWEN_MERGE = 4, 2, 2


def is_multimodal(family: str) -> bool:
    """Whether ``family`` (one of :data:`FAMILIES`) has a vision tower."""
    return family in MULTIMODAL_FAMILIES


def is_anyres_config(config) -> bool:
    """Whether a model config is LLaVA-NeXT's or LLaVA-OneVision's (anyres)."""
    return getattr(config, "model_type", None) in ("llava_next", "llava_onevision")


def is_gemma3_config(config) -> bool:
    """Whether a model config is Gemma 3's vision-language model (image tokens framed, bidirectional)."""
    return getattr(config, "model_type", None) == "gemma3"


def default_side(config) -> int:
    """The side in pixels of a tiny model's default image: :data:`IMAGE_SIZE`, InternVL's one tile."""
    return INTERNVL_TILE if is_tiled_config(config) else IMAGE_SIZE


def is_tiled_config(config) -> bool:
    """Whether a model config is InternVL's (images cut into tiles)."""
    return getattr(config, "model_type", None) == "internvl"


def is_qwen_vl_config(config) -> bool:
    """Whether a model config is Qwen2-VL's or Qwen2.5-VL's."""
    return getattr(config, "model_type", None) in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
