"""Tiny, deterministic models of every supported family, and inputs for them.

For tests and benchmarks: everything is built offline from configs (no hub access), in
eval mode and float32, with random weights fixed by ``seed``. Each model builds in a few
hundredths of a second.

``tiny_model(family)`` families (:data:`FAMILIES`):

=================== =========================================================================
``llama``           LlamaForCausalLM, 4 heads (MHA), no sliding window
``mistral``         MistralForCausalLM, 4 heads / 2 KV heads (GQA), sliding window 8
``qwen2``           Qwen2ForCausalLM, 4 heads / 2 KV heads (GQA), q/k/v biases, no sliding window
``qwen3``           Qwen3ForCausalLM, 4 heads / 2 KV heads, per-head q/k RMSNorms
``opt``             OPTForCausalLM, pre-norm, 4 heads, dropout 0.1 (inactive in eval)
``llava-*``         LlavaForConditionalGeneration: CLIP ViT (32x32 image, patch 8, 2 layers)
                    -> 16 image tokens, 2-layer projector, and the decoder above
``qwen2-vl``        Qwen2VLForConditionalGeneration: Qwen ViT (patch 4, temporal patch 2,
                    2 blocks, merge 2x2), Qwen2 decoder with M-RoPE (sections 1/1/2)
``qwen2.5-vl``      Qwen2_5_VLForConditionalGeneration: as Qwen2-VL, with a gated ViT MLP and
                    window attention (16-pixel windows) in block 0, full attention in block 1
``llava-next``      LlavaNextForConditionalGeneration (Llama decoder): anyres over 32-pixel CLIP
                    crops, resolutions 32x32, 32x64, 64x32, 64x64 (a 32x32 image: 2 crops, 36
                    image tokens; 64x64: 5 crops, 88 tokens)
``qwen3-vl``        Qwen3VLForConditionalGeneration: learned 4x4 ViT position grid, Qwen3 decoder
                    with interleaved M-RoPE, DeepStack features of ViT block 0 added after layer 0
``llava-onevision`` LlavaOnevisionForConditionalGeneration (Qwen2 decoder): anyres over 32-pixel
                    SigLIP crops (no class token), ``anyres_max_2`` (a 64x64 image's 2x2 tiles
                    shrunk from 8x8 to 5x5 features: 46 image tokens; 32x32: 36)
``internvl``        InternVLForConditionalGeneration (Qwen2 decoder): 32-pixel InternViT tiles
                    (patch 4, class token), pixel shuffle 0.5: 16 image tokens a tile; a 32x32
                    image is 1 tile, 64x64 is 2x2 tiles + a thumbnail (80 tokens)
=================== =========================================================================

Qwen-VL images are 32x32 by default (8x8 patches -> 16 image tokens); ``tiny_inputs`` takes
other sizes per row (``image_sides``), so image-token counts may differ between rows.

Decoders: vocab 100 (pad 0, bos 1, eos 2, LLaVA image token 99), hidden 32, FFN 64,
128 positions, untied embeddings, ``initializer_range`` 0.1 (so sublayer updates are not
negligible against the residual stream and skipping visibly changes outputs).
"""

from searchskip.testing.families import (
    ANYRES_FAMILIES,
    BOS_ID,
    EOS_ID,
    FAMILIES,
    IMAGE_SIZE,
    IMAGE_TOKEN_ID,
    INTERNVL_PATCH,
    LLAVA_FAMILIES,
    MULTIMODAL_FAMILIES,
    PAD_ID,
    PATCH_SIZE,
    QWEN_MERGE,
    QWEN_PATCH,
    QWEN_TEMPORAL,
    QWEN_VL_FAMILIES,
    RESOLUTION_FAMILIES,
    SPECIAL_IDS,
    TEXT_FAMILIES,
    TILED_FAMILIES,
    VIDEO_TOKEN_ID,
    VISION_END_ID,
    VISION_START_ID,
    VOCAB,
    is_multimodal,
)
from searchskip.testing.inputs import (
    anyres_pixels,
    append_tokens,
    image_tokens_per_image,
    qwen_vl_pixels,
    row_inputs,
    tiled_pixels,
    tiny_inputs,
)
from searchskip.testing.models import tiny_model

__all__ = [
    "ANYRES_FAMILIES",
    "BOS_ID",
    "EOS_ID",
    "FAMILIES",
    "IMAGE_SIZE",
    "IMAGE_TOKEN_ID",
    "INTERNVL_PATCH",
    "LLAVA_FAMILIES",
    "MULTIMODAL_FAMILIES",
    "PAD_ID",
    "PATCH_SIZE",
    "QWEN_MERGE",
    "QWEN_PATCH",
    "QWEN_TEMPORAL",
    "QWEN_VL_FAMILIES",
    "RESOLUTION_FAMILIES",
    "SPECIAL_IDS",
    "TEXT_FAMILIES",
    "TILED_FAMILIES",
    "VIDEO_TOKEN_ID",
    "VISION_END_ID",
    "VISION_START_ID",
    "VOCAB",
    "anyres_pixels",
    "append_tokens",
    "image_tokens_per_image",
    "is_multimodal",
    "qwen_vl_pixels",
    "row_inputs",
    "tiled_pixels",
    "tiny_inputs",
    "tiny_model",
]
