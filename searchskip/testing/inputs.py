"""Inputs for the tiny models: batches as a processor gives them, rows alone, generated tokens appended."""

from __future__ import annotations

import torch

from searchskip.testing.families import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_IDS,
    VISION_END_ID,
    VISION_START_ID,
    IMAGE_TOKEN_ID,
    default_side,
    is_anyres_config,
    is_gemma3_config,
    is_qwen_vl_config,
    is_tiled_config,
)

def image_tokens_per_image(model, side: int | None = None) -> int:
    """How many placeholder tokens one image expands to in a vision-language ``model``
    (a Qwen-VL, anyres or InternVL image of ``side`` x ``side`` pixels; default
    :func:`~searchskip.testing.families.default_side`)."""
    from searchskip.flops import geometry_of

    config = model.config
    vc = config.vision_config
    side = side or default_side(config)
    if is_qwen_vl_config(config):
        patches = side // vc.patch_size
        return patches * patches // vc.spatial_merge_size ** 2
    vision = geometry_of(config).vision
    if is_tiled_config(config):
        return vision.tokens_per_image(vision.shape_for(side, side))
    return vision.tokens_per_image((side, side) if is_anyres_config(config) else None)


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


def anyres_pixels(model, sides: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ``pixel_values`` (images x crops x channels x crop x crop, zero crops padding the
    images with fewer) and ``image_sizes`` of one square image per entry of ``sides``, as
    LLaVA-NeXT's image processor lays them out."""
    from searchskip.flops import geometry_of

    vision = geometry_of(model.config).vision
    vc = model.config.vision_config
    crops = [vision.crops((side, side)) for side in sides]
    pixels = torch.zeros(len(sides), max(crops), vc.num_channels, vc.image_size, vc.image_size)
    for row, n in enumerate(crops):
        pixels[row, :n] = torch.randn(n, vc.num_channels, vc.image_size, vc.image_size, generator=generator)
    return {"pixel_values": pixels, "image_sizes": torch.tensor([[side, side] for side in sides])}


def tiled_pixels(model, sides: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random ``pixel_values`` (all images' tiles, concatenated) of one square image per entry of
    ``sides``, as InternVL's processor lays them out: one tile, or the tiles of the best grid
    plus a thumbnail."""
    from searchskip.flops import geometry_of

    vision = geometry_of(model.config).vision
    vc = model.config.vision_config
    tiles = sum(vision.tiles(vision.shape_for(side, side)) for side in sides)
    height, width = vc.image_size
    return {"pixel_values": torch.randn(tiles, vc.num_channels, height, width, generator=generator)}


def tiny_inputs(model, batch: int = 2, seq: int = 12, seed: int = 0, left_pad: bool = True,
                image_sides: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**kw)`` / ``model.generate(**kw)``.

    ``seq`` text tokens per row (ids in ``[3, vocab)``, never a special token). For LLaVA each
    row is ``t t <image>*n t ...`` (n = :func:`image_tokens_per_image`, so rows are
    ``seq + n`` long) and ``pixel_values`` holds one random image per row. A Qwen-VL row is
    ``t t <vision_start> <image>*n <vision_end> t ...`` with ``pixel_values`` and
    ``image_grid_thw`` of one image per row, ``image_sides[b]`` pixels square (default
    :func:`~searchskip.testing.families.default_side` for every row) and ``mm_token_type_ids`` (1 at image tokens: M-RoPE
    needs it); an InternVL row frames its image tokens the same way (``<img>`` ... ``</img>``)
    and ``pixel_values`` holds every row's tiles; rows with fewer image tokens than the longest
    are left-padded to its length. With ``left_pad`` and ``batch > 1`` the last row starts with
    ``max(1, seq // 4)`` pad tokens (masked out in ``attention_mask``) in place of its first
    text tokens.
    """
    config = model.config
    text_config = config.get_text_config(decoder=True)
    vocab = text_config.vocab_size
    pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    image_id = getattr(config, "image_token_id", None)
    is_llava = image_id is not None and hasattr(config, "vision_config")
    qwen = is_qwen_vl_config(config)
    if is_llava and seq < 4:
        raise ValueError("vision-language inputs need seq >= 4 text tokens (2 before the image, at least 1 after, padding)")
    if seq < 2:
        raise ValueError("seq must be at least 2")
    nxt = is_anyres_config(config)
    tiled = is_tiled_config(config)
    gemma = is_gemma3_config(config)
    if image_sides is not None and (not (qwen or nxt or tiled) or len(image_sides) != batch):
        raise ValueError("image_sides: one side per row, for Qwen-VL, LLaVA-NeXT / OneVision and InternVL models only")
    sides = list(image_sides) if image_sides is not None else [default_side(config)] * batch

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
            if qwen or tiled or gemma:  # framed: <vision_start> ... <vision_end>, <img> ... </img>, <start_of_image> ...
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
    elif nxt:
        out.update(anyres_pixels(model, sides, g))
    elif tiled:
        out.update(tiled_pixels(model, sides, g))
    elif gemma:  # the processor's token_type_ids (1 at image tokens): the model's masks let images see themselves whole
        out["token_type_ids"] = (out["input_ids"] == image_id).long()
        vc = config.vision_config
        out["pixel_values"] = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    elif is_llava:
        vc = config.vision_config
        out["pixel_values"] = torch.randn(batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    return out


def append_tokens(inputs: dict[str, torch.Tensor], tokens: int | torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """``inputs`` with ``tokens`` appended to every row as if generated (a batch x n tensor, or
    a count ``n`` of random text tokens, never a special one): ``input_ids``,
    ``attention_mask`` and ``mm_token_type_ids`` / ``token_type_ids`` grow together."""
    ids = inputs["input_ids"]
    if isinstance(tokens, int):
        g = torch.Generator().manual_seed(seed)
        extra = torch.randint(3, min(SPECIAL_IDS - {PAD_ID, BOS_ID, EOS_ID}), (ids.shape[0], tokens), generator=g)
    else:
        extra = tokens.to(ids.dtype)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, extra], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.zeros_like(extra)], dim=1)
    return out


def row_inputs(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """The inputs of :func:`tiny_inputs` (or a processor) for row ``row`` alone, its left
    padding removed: what that row would be given as a batch of one. Qwen-VL's
    ``pixel_values`` (patches of every image, concatenated) are cut by ``image_grid_thw``."""
    real = inputs["attention_mask"][row].bool()
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
            out[key] = value[row:row + 1][:, real]
        elif key == "pixel_values" and "image_grid_thw" in inputs:
            counts = inputs["image_grid_thw"].prod(-1).tolist()
            start = sum(counts[:row])
            out[key] = value[start:start + counts[row]]
        elif key == "pixel_values" and value.dim() == 4 and value.shape[0] != inputs["input_ids"].shape[0]:
            # InternVL: every image's tiles, concatenated; a row's share follows its image tokens
            tokens = (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(-1).tolist()
            per_token = value.shape[0] / sum(tokens)
            start = round(sum(tokens[:row]) * per_token)
            out[key] = value[start:start + round(tokens[row] * per_token)]
        else:
            out[key] = value[row:row + 1]
    return out
