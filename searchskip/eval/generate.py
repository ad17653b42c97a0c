"""Batched, deterministic greedy answering through ``model.generate``."""

from __future__ import annotations

from typing import Callable, Sequence

from searchskip.processors import encode


def prompt_inputs(loaded, images: Sequence, questions: Sequence[str]) -> dict:
    """Model inputs for a batch of (image, question) pairs: ``loaded.template`` around each
    question, ``loaded.processor`` on images + prompts, padded on the left; a plain dict of
    tensors on ``loaded.device``, ``pixel_values`` in the model's dtype."""
    processor = loaded.processor
    processor.tokenizer.padding_side = "left"  # decoder-only generation needs the prompt flush right
    prompts = [loaded.template.format(question=q) for q in questions]
    # one list of images per prompt: processors that count images per sample (Gemma 3's) need it
    inputs = encode(processor, [[image] for image in images], prompts, padding=True)
    inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
    dtype = getattr(loaded.model, "dtype", None)
    if "pixel_values" in inputs and dtype is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def greedy_generate(loaded, inputs: dict, max_new_tokens: int, **options):
    """``model.generate`` of prepared inputs, greedy and without gradients; ``options`` go to
    ``generate`` as well (e.g. ``output_logits=True, return_dict_in_generate=True``)."""
    import torch

    with torch.inference_mode():
        return loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=loaded.processor.tokenizer.pad_token_id, **options)


def decode_answers(loaded, new_tokens) -> list[str]:
    """The answers of generated token ids (prompt removed), special tokens removed, stripped."""
    return [text.strip() for text in loaded.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_answers(loaded, inputs: dict, max_new_tokens: int) -> list[str]:
    """Greedy answers for prepared model inputs (:func:`prompt_inputs`, or a prepared batch's
    :meth:`~searchskip.eval.prepared.PreparedBatch.generate_inputs`), special tokens removed."""
    out = greedy_generate(loaded, inputs, max_new_tokens)
    return decode_answers(loaded, out[:, inputs["input_ids"].shape[1]:])


def answer_batch(loaded, images: Sequence, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers for one batch of (image, question) pairs, left-padded, special tokens removed."""
    return generate_answers(loaded, prompt_inputs(loaded, images, questions), max_new_tokens)


def answer_all(loaded, dataset, batch_size: int, max_new_tokens: int,
               on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Answers for every row of a schema dataset, in order; ``on_batch(n)`` after each batch.
    Rows are batched by image shape (:mod:`searchskip.eval.batching`), answers returned in the
    dataset's order."""
    from searchskip.eval.batching import batch_spans, sorted_by_image

    ordered = sorted_by_image(loaded, dataset)
    answers: list[str] = [""] * len(ordered.keys)
    for start, stop in batch_spans(ordered.keys, batch_size):
        rows = ordered.dataset[start:stop]
        for i, answer in zip(ordered.order[start:stop], answer_batch(loaded, rows["image"], rows["question"],
                                                                      max_new_tokens)):
            answers[i] = answer
        if on_batch:
            on_batch(stop - start)
    return answers
