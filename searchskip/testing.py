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
``qwen2-vl``    Qwen2VLForConditionalGeneration: Qwen ViT (patch 4, temporal patch 2,
                2 blocks, merge 2x2), Qwen2 decoder with M-RoPE (sections 1/1/2)
``qwen2.5-vl``  Qwen2_5_VLForConditionalGeneration: as Qwen2-VL, with a gated ViT MLP and
                window attention (16-pixel windows) in block 0, full attention in block 1
============== =========================================================================

Qwen-VL images are 32x32 by default (8x8 patches -> 16 image tokens); ``tiny_inputs`` takes
other sizes per row (``image_sides``), so image-token counts may differ between rows.

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
    "qwen2-vl",
    "qwen2.5-vl",
)
"""Every family :func:`tiny_model` builds; text-only first, then LLaVA over each decoder, then
the other vision-language families."""

LLAVA_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f.startswith("llava-"))
QWEN_VL_FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl")
MULTIMODAL_FAMILIES: tuple[str, ...] = LLAVA_FAMILIES + QWEN_VL_FAMILIES
TEXT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in MULTIMODAL_FAMILIES)

VOCAB = 100
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = 99
VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID = 98, 97, 96
"""Qwen-VL's other special tokens (a Qwen-VL image is ``<vision_start> <image>*n <vision_end>``)."""
SPECIAL_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID})
IMAGE_SIZE, PATCH_SIZE = 32, 8
QWEN_PATCH, QWEN_TEMPORAL, QWEN_MERGE = 4, 2, 2


def is_multimodal(family: str) -> bool:
    """Whether ``family`` (one of :data:`FAMILIES`) has a vision tower."""
    return family in MULTIMODAL_FAMILIES

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
    if not is_multimodal(family) and (vision_overrides or llava_overrides):
        raise ValueError(f"vision_config / llava_config overrides only apply to vision-language families, not '{family}'")
    if family in QWEN_VL_FAMILIES:
        if llava_overrides:
            raise ValueError(f"llava_config overrides only apply to LLaVA families, not '{family}'")
        return _tiny_qwen_vl(family, seed, num_layers, vision_overrides, overrides)
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


def _tiny_qwen_vl(family: str, seed: int, num_layers: int, vision_overrides: dict, overrides: dict):
    import transformers as tf

    text = dict(_COMMON, num_hidden_layers=num_layers, intermediate_size=64, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    text.update(overrides)
    vision = dict(depth=2, num_heads=2, patch_size=QWEN_PATCH, temporal_patch_size=QWEN_TEMPORAL,
                  spatial_merge_size=QWEN_MERGE, initializer_range=0.1)
    if family == "qwen2.5-vl":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32, window_size=16,
                      fullatt_block_indexes=[1])
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
    else:
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
        config_cls, model_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
    vision.update(vision_overrides)
    config = config_cls(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID,
                        video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID,
                        vision_end_token_id=VISION_END_ID, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(torch.float32).eval()


def _is_qwen_vl(config: Any) -> bool:
    return getattr(config, "model_type", None) in ("qwen2_vl", "qwen2_5_vl")


def image_tokens_per_image(model, side: int | None = None) -> int:
    """How many placeholder tokens one image expands to in a vision-language ``model``
    (a Qwen-VL image of ``side`` x ``side`` pixels; default :data:`IMAGE_SIZE`)."""
    config = model.config
    vc = config.vision_config
    if _is_qwen_vl(config):
        patches = (side or IMAGE_SIZE) // vc.patch_size
        return patches * patches // vc.spatial_merge_size ** 2
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if config.vision_feature_select_strategy == "full" else 0)


def qwen_vl_pixels(model, sides: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ``pixel_values`` and ``image_grid_thw`` of one square image per entry of ``sides``
    (pixels; multiples of ``patch_size * spatial_merge_size``), as Qwen-VL's image processor
    lays them out: a row of ``channels * temporal_patch_size * patch_size ** 2`` values per patch."""
    vc = model.config.vision_config
    per_patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    grids, pixels = [], []
    for side in sides:
        if side % (vc.patch_size * vc.spatial_merge_size):
            raise ValueError(f"image side {side} is not a multiple of patch_size * spatial_merge_size")
        n = side // vc.patch_size
        grids.append([1, n, n])
        pixels.append(torch.randn(n * n, per_patch, generator=generator))
    return {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids)}


def tiny_inputs(model, batch: int = 2, seq: int = 12, seed: int = 0, left_pad: bool = True,
                image_sides: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**kw)`` / ``model.generate(**kw)``.

    ``seq`` text tokens per row (ids in ``[3, vocab)``, never a special token). For LLaVA each
    row is ``t t <image>*n t ...`` (n = :func:`image_tokens_per_image`, so rows are
    ``seq + n`` long) and ``pixel_values`` holds one random image per row. A Qwen-VL row is
    ``t t <vision_start> <image>*n <vision_end> t ...`` with ``pixel_values`` and
    ``image_grid_thw`` of one image per row, ``image_sides[b]`` pixels square (default
    :data:`IMAGE_SIZE` for every row) and ``mm_token_type_ids`` (1 at image tokens: M-RoPE
    needs it); rows with fewer image tokens than the longest are left-padded to its length. With ``left_pad`` and ``batch > 1`` the last row starts with
    ``max(1, seq // 4)`` pad tokens (masked out in ``attention_mask``) in place of its first
    text tokens.
    """
    config = model.config
    text_config = config.get_text_config(decoder=True)
    vocab = text_config.vocab_size
    pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    image_id = getattr(config, "image_token_id", None)
    is_llava = image_id is not None and hasattr(config, "vision_config")
    qwen = _is_qwen_vl(config)
    if is_llava and seq < 4:
        raise ValueError("vision-language inputs need seq >= 4 text tokens (2 before the image, at least 1 after, padding)")
    if seq < 2:
        raise ValueError("seq must be at least 2")
    if image_sides is not None and (not qwen or len(image_sides) != batch):
        raise ValueError("image_sides: one side per row, for Qwen-VL models only")
    sides = list(image_sides) if image_sides is not None else [IMAGE_SIZE] * batch

    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab, (batch, seq), generator=g)
    for special in SPECIAL_IDS:
        text[text == special] = 3
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
            n_img = image_tokens_per_image(model, sides[b])
            image = torch.full((n_img,), image_id)
            if qwen:
                image = torch.cat([torch.tensor([VISION_START_ID]), image, torch.tensor([VISION_END_ID])])
            body, body_mask = toks[p:], mask[p:]
            toks = torch.cat([toks[:p], body[:2], image, body[2:]])
            mask = torch.cat([mask[:p], body_mask[:2], torch.ones(len(image), dtype=torch.long), body_mask[2:]])
        rows.append(toks)
        masks.append(mask)
    width = max(len(r) for r in rows)
    rows = [torch.cat([torch.full((width - len(r),), pad_id), r]) for r in rows]
    masks = [torch.cat([torch.zeros(width - len(m), dtype=torch.long), m]) for m in masks]
    out = {"input_ids": torch.stack(rows), "attention_mask": torch.stack(masks)}
    if qwen:  # what Qwen-VL's processor returns beside the ids: 1 marks an image token (M-RoPE reads it)
        out["mm_token_type_ids"] = (out["input_ids"] == image_id).long()
        out.update(qwen_vl_pixels(model, sides, g))
    elif is_llava:
        vc = config.vision_config
        out["pixel_values"] = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    return out


def append_tokens(inputs: dict[str, torch.Tensor], tokens: int | torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """``inputs`` with ``tokens`` appended to every row as if generated (a batch x n tensor, or
    a count ``n`` of random text tokens, never a special one): ``input_ids``,
    ``attention_mask`` and ``mm_token_type_ids`` grow together."""
    ids = inputs["input_ids"]
    if isinstance(tokens, int):
        g = torch.Generator().manual_seed(seed)
        extra = torch.randint(3, min(SPECIAL_IDS - {PAD_ID, BOS_ID, EOS_ID}), (ids.shape[0], tokens), generator=g)
    else:
        extra = tokens.to(ids.dtype)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, extra], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    return out


def row_inputs(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """The inputs of :func:`tiny_inputs` (or a processor) for row ``row`` alone, its left
    padding removed: what that row would be given as a batch of one. Qwen-VL's
    ``pixel_values`` (patches of every image, concatenated) are cut by ``image_grid_thw``."""
    real = inputs["attention_mask"][row].bool()
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            out[key] = value[row:row + 1][:, real]
        elif key == "pixel_values" and "image_grid_thw" in inputs:
            counts = inputs["image_grid_thw"].prod(-1).tolist()
            start = sum(counts[:row])
            out[key] = value[start:start + counts[row]]
        else:
            out[key] = value[row:row + 1]
    return out


__all__ = [
    "FAMILIES",
    "LLAVA_FAMILIES",
    "append_tokens",
    "MULTIMODAL_FAMILIES",
    "QWEN_VL_FAMILIES",
    "TEXT_FAMILIES",
    "image_tokens_per_image",
    "is_multimodal",
    "qwen_vl_pixels",
    "row_inputs",
    "tiny_inputs",
    "tiny_model",
]
