"""Gemma 3's vision-language model (``Gemma3ForConditionalGeneration``) over its Gemma 3 decoder.

Layout as LLaVA's (``model.model.vision_tower``: SigLIP without its pooling head;
``multi_modal_projector``; ``language_model``: ``Gemma3TextModel``; ``model.lm_head``). The
projector average-pools the tower's patch grid (64 x 64 at 896 px) down to
``mm_tokens_per_image`` positions (16 x 16), RMS-normalizes them and multiplies by a raw
weight matrix (``mm_input_projection_weight``, no ``nn.Linear``); FLOPs:
:func:`searchskip.flops.vision.pooled.pooled_tower`.

What is new for searchskip: **image tokens attend to every token of their own image**, the
later ones too (the model builds its masks from ``token_type_ids``; the processor returns
them, 1 at image tokens). :attr:`Gemma3VLAdapter.bidirectional_images` tells the parts that
build their own masks or count attention pairs: the token scopes slice the model's masks (so
they carry it), ``visual_tokens`` adds it to the masks of the layers that see fewer image
tokens, and the causal FLOP count adds the pairs. The image placeholder the processor
expands is ``<start_of_image>``; the image tokens are ``<image_soft_token>``, framed by
``<start_of_image>`` and ``<end_of_image>`` (text).
"""

from __future__ import annotations

from searchskip.arch.wrapper import WrapperAdapter


class Gemma3VLAdapter(WrapperAdapter):
    """Gemma 3 (4B, 12B, 27B): SigLIP + pooled projector + a Gemma 3 decoder."""

    description = "Gemma3ForConditionalGeneration (Gemma 3 4B / 12B / 27B with images)"
    model_type = "gemma3"
    class_name = "Gemma3ForConditionalGeneration"
    family = "gemma3-vl"
    name_with_decoder = False
    bidirectional_images = True
