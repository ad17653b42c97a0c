"""Build the embedded tiny LLaVA: a real ``LlavaForConditionalGeneration``, its tokenizer and processor.

Everything is built offline from configs: a CLIP vision tower, LLaVA's two-layer MLP
projector and a Llama decoder, a word-level tokenizer over the easy-VQA vocabulary,
and a ``LlavaProcessor`` that expands ``<image>`` into one token per image patch.
The architecture is the same class LLaVA-1.5 uses, so every code path searchskip
exercises on this model is the one it runs on ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
"""The embedded model's prompt (LLaVA-1.5's, without the single-word instruction it never needs)."""

_WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class TinyLlavaShape:
    """Sizes of the embedded model. Defaults are the shipped model's."""

    image_size: int = 64
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_ffn: int = 512
    text_width: int = 128
    text_layers: int = 8
    text_heads: int = 4
    text_kv_heads: int = 4
    text_ffn: int = 344
    max_positions: int = 128

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Special tokens, the prompt template's words, then every lower-cased word and
    punctuation run of ``texts``, sorted."""
    words: set[str] = set(_WORD.findall(PROMPT_TEMPLATE.replace("<image>", "").replace("{question}", "").lower()))
    for text in texts:
        words.update(_WORD.findall(text.lower()))
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def build_tokenizer(vocab: list[str]):
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary (lower-cased, punctuation split)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=128,
    )
    return tok


def build_processor(tokenizer, shape: TinyLlavaShape = TinyLlavaShape()):
    """A ``LlavaProcessor``: CLIP image preprocessing at the model's size and ``<image>`` expansion."""
    from transformers import LlavaProcessor

    try:  # the PIL backend needs no torchvision (there is no CPU torchvision wheel here)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    image_processor = ImageProcessor(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_config(tokenizer, shape: TinyLlavaShape = TinyLlavaShape()):
    """A ``LlavaConfig`` with a CLIP vision tower and a Llama decoder of the given sizes."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_width,
        intermediate_size=shape.vision_ffn,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_width,
        intermediate_size=shape.text_ffn,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(config, seed: int = 0):
    """A freshly initialised ``LlavaForConditionalGeneration`` (deterministic for a seed)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.bos_token_id = config.text_config.bos_token_id
    return model
