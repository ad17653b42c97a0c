"""Tiny random-weight models of every family, built offline from configs (see :mod:`searchskip.testing`)."""

from __future__ import annotations

from typing import Any

import torch

from searchskip.testing.families import (
    ANYRES_PINPOINTS,
    BOS_ID,
    INTERNVL_PATCH,
    INTERNVL_TILE,
    EOS_ID,
    FAMILIES,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    ONEVISION_ASPECT,
    PAD_ID,
    PATCH_SIZE,
    QWEN_MERGE,
    QWEN_PATCH,
    QWEN_TEMPORAL,
    QWEN_VL_FAMILIES,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB,
    WRAPPER_DECODERS,
    is_multimodal,
)

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
    elif decoder == "qwen3":
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        cls = tf.Qwen3Config
    elif decoder in ("gemma2", "gemma3"):  # sandwich norms; sliding and full layers alternate
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  query_pre_attn_scalar=16, sliding_window=6,
                  layer_types=["sliding_attention", "full_attention"] * (num_layers // 2) + ["sliding_attention"] * (num_layers % 2))
        if decoder == "gemma2":  # a cap low enough to bend the tiny model's scores
            kw.update(attn_logit_softcapping=2.0, final_logit_softcapping=5.0)
            cls = tf.Gemma2Config
        else:
            cls = tf.Gemma3TextConfig
    elif decoder == "phi3":  # fused qkv / gate_up; rotary on half of each head (as Phi-4-mini's 0.75)
        kw.update(intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5)
        cls = tf.Phi3Config
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
    is_llava = family.startswith("llava-") or family in WRAPPER_DECODERS  # a CLIP-like tower beside a decoder
    if not is_multimodal(family) and (vision_overrides or llava_overrides):
        raise ValueError(f"vision_config / llava_config overrides only apply to vision-language families, not '{family}'")
    if family in QWEN_VL_FAMILIES:
        if llava_overrides:
            raise ValueError(f"llava_config overrides only apply to LLaVA families, not '{family}'")
        return _tiny_qwen_vl(family, seed, num_layers, vision_overrides, overrides)
    decoder = WRAPPER_DECODERS.get(family) or (family.split("-", 1)[1] if is_llava else family)
    text_config = _text_config(decoder, num_layers, overrides)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not is_llava:
            cls = {
                "llama": tf.LlamaForCausalLM,
                "mistral": tf.MistralForCausalLM,
                "qwen2": tf.Qwen2ForCausalLM,
                "qwen3": tf.Qwen3ForCausalLM,
                "gemma2": tf.Gemma2ForCausalLM,
                "gemma3": tf.Gemma3ForCausalLM,
                "phi3": tf.Phi3ForCausalLM,
                "opt": tf.OPTForCausalLM,
            }[decoder]
            model = cls(text_config)
        else:
            vision_config = _vision_config(family, vision_overrides)
            side, patch = vision_config.image_size, vision_config.patch_size
            n_image = (side // patch) ** 2 if isinstance(side, int) else None  # InternVL: tiles, set below
            llava = dict(
                vision_config=vision_config,
                text_config=text_config,
                image_token_id=IMAGE_TOKEN_ID,
                image_seq_length=n_image,
                tie_word_embeddings=False,
            )
            llava.update(llava_overrides)
            if family == "gemma3-vl":  # 8 x 8 SigLIP patches pooled to 4 x 4, Gemma 3 decoder
                del llava["image_seq_length"], llava["image_token_id"]
                model = tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
                    mm_tokens_per_image=16, image_token_index=IMAGE_TOKEN_ID,
                    boi_token_index=VISION_START_ID, eoi_token_index=VISION_END_ID, **llava))
            elif family == "internvl":  # InternViT tiles, pixel shuffle 0.5, Qwen2 decoder
                del llava["image_seq_length"]
                tile_tokens = (INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2
                model = tf.InternVLForConditionalGeneration(tf.InternVLConfig(image_seq_length=tile_tokens, **llava))
            elif family == "llava-next":  # anyres: a base crop and the tiles of the best of ANYRES_PINPOINTS
                del llava["image_seq_length"]
                llava.setdefault("image_grid_pinpoints", ANYRES_PINPOINTS)
                model = tf.LlavaNextForConditionalGeneration(tf.LlavaNextConfig(**llava))
            elif family == "llava-onevision":  # anyres over SigLIP crops, tiles shrunk past 2 crops' worth
                del llava["image_seq_length"]
                llava.update(video_token_id=VIDEO_TOKEN_ID, vision_feature_select_strategy="full")
                llava.setdefault("image_grid_pinpoints", ANYRES_PINPOINTS)
                llava.setdefault("vision_aspect_ratio", ONEVISION_ASPECT)
                model = tf.LlavaOnevisionForConditionalGeneration(tf.LlavaOnevisionConfig(**llava))
            else:
                model = tf.LlavaForConditionalGeneration(tf.LlavaConfig(**llava))
    return model.to(torch.float32).eval()


def _vision_config(family: str, overrides: dict):
    """The tiny vision tower of a LLaVA-like ``family``: CLIP (32x32 image, patch 8, 2 layers);
    SigLIP for LLaVA-OneVision, Gemma 3 (patch 4) and where ``overrides`` ask for
    ``model_type: siglip_vision_model`` (then with its attention-pooling head); InternViT on
    16-pixel tiles for InternVL. ``overrides`` (other than ``model_type``) go to the config."""
    import transformers as tf

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    if family == "internvl":
        vision.update(image_size=INTERNVL_TILE, patch_size=INTERNVL_PATCH)
        cls = tf.InternVLVisionConfig
    elif family in ("llava-onevision", "gemma3-vl") or overrides.get("model_type") == "siglip_vision_model":
        vision["vision_use_head"] = family not in ("llava-onevision", "gemma3-vl")  # no class token either
        if family == "gemma3-vl":
            vision["patch_size"] = IMAGE_SIZE // 8
        cls = tf.SiglipVisionConfig
    else:
        vision["projection_dim"] = 32
        cls = tf.CLIPVisionConfig
    vision.update({k: v for k, v in overrides.items() if k != "model_type"})
    return cls(**vision)


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
    elif family == "qwen3-vl":  # DeepStack features of ViT block 0 added after decoder layer 0
        text.update(head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [1, 1, 2], "mrope_interleaved": True})
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32, num_position_embeddings=16,
                      deepstack_visual_indexes=[0])
        config_cls, model_cls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration
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
