"""Tiny, deterministic models of every supported family, and inputs for them.

For tests and benchmarks: everything is built offline from configs (no hub access), in
eval mode and float32, with random weights fixed by ``seed``. Each model builds in a few
hundredths of a second.

``tiny_model(family)`` families (:data:`FAMILIES`):

============== =========================================================================
``llama``       LlamaForCausalLM, 4 heads (MHA), no sliding window
``mistral``     MistralForCausalLM, 4 heads / 2 KV heads (GQA), sliding window 8
``qwen2``       Qwen2ForCausalLM, 4 heads / 2 KV heads (GQA), q/k/v biases, no sliding window
``opt``         OPTForCausalLM, pre-norm, 4 heads, dropout 0.1 (inactive in eval)
``llava-*``     LlavaForConditionalGeneration: CLIP ViT (32x32 image, patch 8, 2 layers)
                -> 16 image tokens, 2-layer projector, and the decoder above
============== =========================================================================

Decoders: vocab 100 (pad 0, bos 1, eos 2, LLaVA image token 99), hidden 32, FFN 64,
128 positions, untied embeddings, ``initializer_range`` 0.1 (so sublayer updates are not
negligible against the residual stream and skipping visibly changes outputs).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "opt",
    "llava-llama",
    "llava-mistral",
    "llava-qwen2",
    "llava-opt",
)
"""Every family :func:`tiny_model` builds; text-only first, then LLaVA over each decoder."""

TEXT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if not f.startswith("llava-"))
LLAVA_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f.startswith("llava-"))

VOCAB = 100
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = 99
IMAGE_SIZE, PATCH_SIZE = 32, 8

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=4,
    max_position_embeddings=128,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    initializer_range=0.1,
    tie_word_embeddings=False,
)


def _text_config(decoder: str, num_layers: int, overrides: dict[str, Any]):
    import transformers as tf

    kw = dict(_COMMON, num_hidden_layers=num_layers)
    if decoder == "llama":
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=4)
        cls = tf.LlamaConfig
    elif decoder == "mistral":
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
        cls = tf.MistralConfig
    elif decoder == "qwen2":
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
        cls = tf.Qwen2Config
    elif decoder == "opt":
        kw.update(ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32, init_std=0.1)
        cls = tf.OPTConfig
    else:
        raise ValueError(f"unknown decoder '{decoder}'; families: {', '.join(FAMILIES)}")
    kw.update(overrides)
    return cls(**kw)


def tiny_model(family: str, seed: int = 0, num_layers: int = 4, **overrides: Any):
    """A tiny random model of ``family`` (one of :data:`FAMILIES`), eval mode, float32.

    ``overrides`` go to the decoder's config (e.g. ``do_layer_norm_before=False`` for OPT,
    ``use_sliding_window=True, sliding_window=4, max_window_layers=2`` for Qwen2). For LLaVA
    two dict-valued keys are special: ``vision_config`` (merged into the CLIP vision config)
    and ``llava_config`` (merged into the ``LlavaConfig`` arguments). The global torch RNG
    is left untouched; the same arguments give the same weights.
    """
    import transformers as tf

    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}'; families: {', '.join(FAMILIES)}")
    vision_overrides = overrides.pop("vision_config", None) or {}
    llava_overrides = overrides.pop("llava_config", None) or {}
    is_llava = family.startswith("llava-")
    if not is_llava and (vision_overrides or llava_overrides):
        raise ValueError(f"vision_config / llava_config overrides only apply to LLaVA families, not '{family}'")
    decoder = family.split("-", 1)[1] if is_llava else family
    text_config = _text_config(decoder, num_layers, overrides)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not is_llava:
            cls = {
                "llama": tf.LlamaForCausalLM,
                "mistral": tf.MistralForCausalLM,
                "qwen2": tf.Qwen2ForCausalLM,
                "opt": tf.OPTForCausalLM,
            }[decoder]
            model = cls(text_config)
        else:
            vision = dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=IMAGE_SIZE,
                patch_size=PATCH_SIZE,
                projection_dim=32,
            )
            vision.update(vision_overrides)
            vision_config = tf.CLIPVisionConfig(**vision)
            n_image = (vision_config.image_size // vision_config.patch_size) ** 2
            llava = dict(
                vision_config=vision_config,
                text_config=text_config,
                image_token_id=IMAGE_TOKEN_ID,
                image_seq_length=n_image,
                tie_word_embeddings=False,
            )
            llava.update(llava_overrides)
            model = tf.LlavaForConditionalGeneration(tf.LlavaConfig(**llava))
    return model.to(torch.float32).eval()


def image_tokens_per_image(model) -> int:
    """How many placeholder tokens one image expands to in a LLaVA ``model``."""
    vc = model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if model.config.vision_feature_select_strategy == "full" else 0)


def tiny_inputs(model, batch: int = 2, seq: int = 12, seed: int = 0, left_pad: bool = True) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**kw)`` / ``model.generate(**kw)``.

    ``seq`` text tokens per row (ids in ``[3, vocab)``, never the image token). For LLaVA each
    row is ``t t <image>*n t ...`` (n = :func:`image_tokens_per_image`, so rows are
    ``seq + n`` long) and ``pixel_values`` holds one random image per row. With
    ``left_pad`` and ``batch > 1`` the last row starts with ``max(1, seq // 4)`` pad tokens
    (masked out in ``attention_mask``) in place of its first text tokens.
    """
    config = model.config
    text_config = config.get_text_config(decoder=True)
    vocab = text_config.vocab_size
    pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    image_id = getattr(config, "image_token_id", None)
    is_llava = image_id is not None and hasattr(config, "vision_config")
    if is_llava and seq < 4:
        raise ValueError("LLaVA inputs need seq >= 4 text tokens (2 before the image, at least 1 after, padding)")
    if seq < 2:
        raise ValueError("seq must be at least 2")

    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab, (batch, seq), generator=g)
    if image_id is not None:
        text[text == image_id] = 3
    n_pad = max(1, seq // 4) if (left_pad and batch > 1) else 0

    rows, masks = [], []
    for b in range(batch):
        p = n_pad if b == batch - 1 else 0
        toks = text[b].clone()
        mask = torch.ones(seq, dtype=torch.long)
        toks[:p] = pad_id
        mask[:p] = 0
        if is_llava:
            # padding replaces the first text tokens; then 2 text tokens, the image, the rest
            n_img = image_tokens_per_image(model)
            body, body_mask = toks[p:], mask[p:]
            toks = torch.cat([toks[:p], body[:2], torch.full((n_img,), image_id), body[2:]])
            mask = torch.cat([mask[:p], body_mask[:2], torch.ones(n_img, dtype=torch.long), body_mask[2:]])
        rows.append(toks)
        masks.append(mask)
    out = {"input_ids": torch.stack(rows), "attention_mask": torch.stack(masks)}
    if is_llava:
        vc = config.vision_config
        out["pixel_values"] = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    return out


__all__ = [
    "FAMILIES",
    "LLAVA_FAMILIES",
    "TEXT_FAMILIES",
    "image_tokens_per_image",
    "tiny_inputs",
    "tiny_model",
]
