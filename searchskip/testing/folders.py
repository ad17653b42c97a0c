"""A tiny random-weight model of a vision-language family saved as a model folder the CLI loads.

``save_tiny_model("qwen2.5-vl", folder)`` writes what a hub checkpoint holds: ``config.json``,
safetensors weights, a word-level tokenizer over the easy-VQA words (so answers decode to
words) and the family's own processor (``LlavaProcessor``; ``LlavaNextProcessor``; ``LlavaOnevisionProcessor`` and ``InternVLProcessor`` (images only); ``Gemma3Processor``; ``Qwen2VLProcessor`` with Qwen-VL's
image processor, PIL backend, at a tiny pixel range so that images of different sizes give
different image-token counts). A job pointing ``model.id`` at the folder runs every verb
(``flops``, ``search``, ``eval``, ``export``, ``finetune``) as it would on the real model.

The tokenizer keeps the tiny models' fixed ids (:mod:`searchskip.testing.families`): pad 0,
BOS 1, EOS 2, the image token 99 (Qwen-VL: video 98, vision start 97, vision end 96); the
other ids are words, then unused fillers up to :data:`~searchskip.testing.families.VOCAB`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from searchskip.testing.families import (
    BOS_ID,
    EOS_ID,
    GEMMA3_VL_FAMILIES,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    INTERNVL_PATCH,
    INTERNVL_TILE,
    ONEVISION_ASPECT,
    LLAVA_FAMILIES,
    ANYRES_FAMILIES,
    ANYRES_PINPOINTS,
    PAD_ID,
    PATCH_SIZE,
    QWEN_MERGE,
    QWEN_PATCH,
    QWEN_TEMPORAL,
    QWEN_VL_FAMILIES,
    TILED_FAMILIES,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB,
)
from searchskip.testing.models import tiny_model

__all__ = ["save_tiny_model", "tiny_vocabulary"]

_WORD = re.compile(r"\w+|[^\w\s]+")
_UNK_ID = 3


def _specials(family: str) -> dict[int, str]:
    out = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>", _UNK_ID: "<unk>"}
    if family in QWEN_VL_FAMILIES:
        out.update({IMAGE_TOKEN_ID: "<|image_pad|>", VIDEO_TOKEN_ID: "<|video_pad|>",
                    VISION_START_ID: "<|vision_start|>", VISION_END_ID: "<|vision_end|>",
                    4: "<|im_start|>", 5: "<|im_end|>"})
    elif family in TILED_FAMILIES:
        out.update({IMAGE_TOKEN_ID: "<IMG_CONTEXT>", VIDEO_TOKEN_ID: "<video>", VISION_START_ID: "<img>",
                    VISION_END_ID: "</img>", 4: "<|im_start|>", 5: "<|im_end|>"})
    elif family in GEMMA3_VL_FAMILIES:
        out.update({IMAGE_TOKEN_ID: "<image_soft_token>", VISION_START_ID: "<start_of_image>",
                    VISION_END_ID: "<end_of_image>", 4: "<start_of_turn>", 5: "<end_of_turn>"})
    else:
        out[IMAGE_TOKEN_ID] = "<image>"
    if family == "llava-onevision":  # its processor counts video tokens in every text
        out.update({VIDEO_TOKEN_ID: "<video>", 4: "<|im_start|>", 5: "<|im_end|>"})
    return out


def tiny_vocabulary(family: str, texts: list[str]) -> list[str]:
    """:data:`VOCAB` tokens: the family's special tokens at their fixed ids, the lower-cased
    words of ``texts`` (as many as fit, most frequent first) and fillers."""
    specials = _specials(family)
    counts: dict[str, int] = {}
    for text in texts:
        for word in _WORD.findall(text.lower()):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))
    free = [i for i in range(VOCAB) if i not in specials]
    vocab = [""] * VOCAB
    for i, token in specials.items():
        vocab[i] = token
    for i, word in zip(free, words):
        vocab[i] = word
    for i in free[len(words):]:
        vocab[i] = f"<unused{i}>"
    return vocab


def _tokenizer(family: str, vocab: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(_specials(family).values())
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.add_special_tokens(specials)
    extra = ({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
             if family in QWEN_VL_FAMILIES else {"image_token": "<image>"})
    if family == "llava-onevision":
        extra["video_token"] = "<video>"
    if family in TILED_FAMILIES:
        extra = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>", "end_image_token": "</img>",
                 "video_token": "<video>"}
    if family in GEMMA3_VL_FAMILIES:
        extra = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens=extra, padding_side="left",
                                   model_max_length=256)


def _processor(family: str, tokenizer):
    if family in QWEN_VL_FAMILIES:
        import transformers
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from searchskip.processors import image_only_class

        unit = QWEN_PATCH * QWEN_MERGE  # pixels per LLM position along a side
        images = Qwen2VLImageProcessorPil(patch_size=QWEN_PATCH, temporal_patch_size=QWEN_TEMPORAL,
                                          merge_size=QWEN_MERGE,
                                          size={"shortest_edge": (2 * unit) ** 2, "longest_edge": (6 * unit) ** 2})
        base = {"qwen2-vl": transformers.Qwen2VLProcessor, "qwen2.5-vl": transformers.Qwen2_5_VLProcessor,
                "qwen3-vl": transformers.Qwen3VLProcessor}[family]
        # images only: the video processor needs torchvision (see searchskip.processors)
        return image_only_class(base)(image_processor=images, tokenizer=tokenizer)
    if family in GEMMA3_VL_FAMILIES:
        from transformers import Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        return Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=16)
    if family in TILED_FAMILIES:
        import transformers
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        from searchskip.processors import image_only_class

        images = GotOcr2ImageProcessorPil(size={"height": INTERNVL_TILE, "width": INTERNVL_TILE}, max_patches=9)
        return image_only_class(transformers.InternVLProcessor)(
            image_processor=images, tokenizer=tokenizer, image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2)
    if family == "llava-onevision":
        import transformers
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        from searchskip.processors import image_only_class

        images = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                 image_grid_pinpoints=ANYRES_PINPOINTS)
        # images only: the video processor needs torchvision (see searchskip.processors)
        return image_only_class(transformers.LlavaOnevisionProcessor)(
            image_processor=images, tokenizer=tokenizer, num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
            vision_feature_select_strategy="full", vision_aspect_ratio=ONEVISION_ASPECT)
    if family == "llava-next":
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        images = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                            image_grid_pinpoints=ANYRES_PINPOINTS)
        return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def save_tiny_model(family: str, folder: str | Path, texts: list[str] | None = None, *, seed: int = 0,
                    num_layers: int = 4, **overrides: Any) -> Path:
    """Save a tiny ``family`` model (:func:`~searchskip.testing.tiny_model`; a vision-language
    family; ``overrides`` go to its decoder's config) with its tokenizer and processor into
    ``folder``; ``texts`` give the tokenizer's words (default: the easy-VQA words of the embedded
    model's tokenizer)."""
    if family not in LLAVA_FAMILIES + QWEN_VL_FAMILIES + ANYRES_FAMILIES + TILED_FAMILIES + GEMMA3_VL_FAMILIES:
        raise ValueError(f"save_tiny_model builds vision-language families only, not '{family}'")
    if texts is None:
        texts = _easy_vqa_texts()
    folder = Path(folder)
    model = tiny_model(family, seed=seed, num_layers=num_layers, **overrides)
    processor = _processor(family, _tokenizer(family, tiny_vocabulary(family, texts)))
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _easy_vqa_texts() -> list[str]:
    """The words of the embedded model's tokenizer (the easy-VQA questions and answers)."""
    import json

    from searchskip.zoo import embedded_model

    data = json.loads((embedded_model("tiny-llava-easyvqa").path / "tokenizer.json").read_text(encoding="utf-8"))
    return [w for w in data["model"]["vocab"] if not w.startswith("<")]
