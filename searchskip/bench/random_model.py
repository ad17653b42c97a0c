"""A LLaVA of any size with random weights, built where it will run: :func:`random_llava`.

For timing and correctness checks of large models without their weights (no hub): the model is
built on the ``meta`` device from a config (no memory), materialized on the target device
(``to_empty``: no CPU copy of a 7B model) and initialized there with transformers' own
``initialize_weights`` (normal weights, unit norms, and the non-persistent buffers -- rotary
frequencies, position ids -- recomputed). Its processor is the embedded model's tokenizer with an
image processor at the config's vision size, so prompts have as many image tokens as the real
model's (576 for LLaVA-1.5 at 336 px); the config's image token id is set to the tokenizer's.
Accuracy is meaningless with random weights; timings, FLOPs and plan correctness are not.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["random_llava"]


def _processor(vision: Any) -> tuple[Any, str]:
    """``(LlavaProcessor, prompt template)``: the embedded model's tokenizer and template, and a
    CLIP image processor at ``vision``'s image size."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor

    from searchskip import zoo

    embedded = zoo.embedded_model(zoo.embedded_names()[0])
    tokenizer = AutoTokenizer.from_pretrained(embedded.path)
    side = vision.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return processor, embedded.prompt_template


def random_llava(config: Any, *, dtype: str, device: str, seed: int = 0) -> Any:
    """A :class:`~searchskip.models.LoadedModel` of ``config`` (a ``LlavaConfig``; copied, not
    changed) with random weights in ``dtype`` on ``device``, built on the meta device and
    materialized there (see the module doc)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from searchskip.models import LoadedModel

    processor, template = _processor(config.vision_config)
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = config.text_config.max_position_embeddings  # the embedded model's is 128
    config = copy.deepcopy(config)
    config.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    for part in (config, config.text_config):
        part.pad_token_id, part.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        part.bos_token_id = tokenizer.bos_token_id
    if max(tokenizer.get_vocab().values()) >= config.text_config.vocab_size:
        raise ValueError(f"the embedded tokenizer's ids do not fit the config's vocab_size {config.text_config.vocab_size}")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    kept = {name: b.dtype for name, b in model.named_buffers()}
    model.to(getattr(torch, dtype))  # on meta: no memory; buffers keep their dtype, as from_pretrained keeps them
    for name, buffer in list(model.named_buffers()):
        if buffer.dtype != kept[name]:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buffer.to(kept[name])
    model.to_empty(device=device)
    torch.manual_seed(seed)
    if str(device).startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
    with torch.no_grad():
        for module in model.modules():  # nothing is initialized yet: meta skipped it
            if hasattr(module, "_is_hf_initialized"):
                del module._is_hf_initialized
        model.initialize_weights()
        model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    # random weights may pick the image token, which a prompt's recompute would take for an image slot
    model.generation_config.suppress_tokens = [config.image_token_id]
    model.eval()
    return LoadedModel(model=model, processor=processor, template=template, device=str(device),
                       source=f"{getattr(config, '_name_or_path', '') or 'a LLaVA config'} (random weights)")
