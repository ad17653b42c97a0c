"""Label-free fitness: how closely a planned model answers like the unplanned one.

* ``agreement`` -- the share of questions whose answer (the decoded, stripped string) is identical
  to the unplanned model's answer.
* ``kl`` -- the mean, over questions, of the mean over the unplanned model's answer tokens of
  ``KL(p_unplanned || p_planned)`` of the next-token distributions, the planned model
  **teacher-forced** along the unplanned answer (both from the raw logits, before any logits
  processor). The unplanned answer's tokens run to its first end-of-sequence token (included: it
  is a prediction too) or to ``max_new_tokens``.

:class:`Reference` holds the unplanned model's answers, answer tokens and log-probabilities of
every batch of a prepared subset, computed once (per search worker). :func:`score_batch` scores a
planned batch against it with one ``generate`` (the one accuracy needs): a row whose planned
answer tokens equal the reference's followed the same path, so that generation's logits *are* the
teacher-forced ones; only the rows that diverge are decoded again, forced along the reference
(:class:`ForceTokens`). So the cost over plain answering is the log-softmax of the answer steps
and one extra prefill for the diverging rows only. Batches must hold one image per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from searchskip.eval.generate import decode_answers, greedy_generate

__all__ = ["Reference", "BatchFidelity", "score_batch", "reference_batch", "ForceTokens", "kl_rows"]


@dataclass
class ReferenceBatch:
    """The unplanned model's outputs on one batch."""

    answers: list[str]
    tokens: list[list[int]]
    """Each row's answer tokens (to its first end-of-sequence token, included)."""
    probs: list[Any]
    """Each row's ``(len(tokens), vocab)`` float32 next-token probabilities ``p``, on the CPU."""
    plogp: list[Any]
    """Each row's ``(len(tokens),)`` ``sum(p log p)``: the half of each KL term that no plan changes."""


@dataclass
class BatchFidelity:
    """A planned batch scored against its reference."""

    answers: list[str]
    agreement: list[float]
    kl: list[float]


def _stop_ids(loaded: Any) -> set[int]:
    eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = loaded.processor.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _generate(loaded: Any, inputs: dict, max_new_tokens: int, processors: list | None = None) -> tuple[Any, Any]:
    """``(new token ids (B, T), raw logits (T, B, V))`` of one greedy ``generate``."""
    import torch
    from transformers import LogitsProcessorList

    out = greedy_generate(loaded, inputs, max_new_tokens, logits_processor=LogitsProcessorList(processors or []),
                          output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.logits)


def _answer_tokens(row: Any, stop: set[int]) -> list[int]:
    ids = [int(i) for i in row]
    for k, token in enumerate(ids):
        if token in stop:
            return ids[:k + 1]
    return ids


def reference_batch(loaded: Any, inputs: dict, max_new_tokens: int) -> ReferenceBatch:
    """The unplanned model's answers, answer tokens and log-probabilities on one batch of inputs."""
    import torch

    new, logits = _generate(loaded, inputs, max_new_tokens)
    stop = _stop_ids(loaded)
    tokens = [_answer_tokens(row, stop) for row in new]
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    rows = [logp[:len(t), i] for i, t in enumerate(tokens)]
    probs = [row.exp() for row in rows]
    return ReferenceBatch(decode_answers(loaded, new), tokens, probs,
                          [(p * row).sum(-1) for p, row in zip(probs, rows)])


class ForceTokens:
    """A logits processor that makes ``generate`` emit each row's ``targets`` (then ``fill``)."""

    def __init__(self, targets: list[list[int]], prompt_length: int, fill: int):
        self.targets, self.prompt_length, self.fill = targets, prompt_length, fill

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        t = input_ids.shape[1] - self.prompt_length
        forced = torch.tensor([ids[t] if t < len(ids) else self.fill for ids in self.targets], device=scores.device)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, forced[:, None], 0.0)


def _rows(inputs: dict, rows: list[int]) -> dict:
    """The generate inputs of ``rows`` of a batch (one image per row)."""
    import torch

    size = inputs["input_ids"].shape[0]
    index = torch.tensor(rows, device=inputs["input_ids"].device)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == "mm_encoder_outputs":
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            features = value["image"].pooler_output
            if len(features) != size:
                raise ValueError(f"label-free fitness needs one image per question, but a batch of {size} questions "
                                 f"has {len(features)} images")
            picked = [features[i] for i in rows] if isinstance(features, (list, tuple)) else features[index]
            out[key] = {"image": BaseModelOutputWithPooling(pooler_output=picked)}
        elif torch.is_tensor(value) and value.dim() > 0:
            if value.shape[0] != size:
                raise ValueError(f"label-free fitness needs one image per question, but {key} has {value.shape[0]} "
                                 f"rows for {size} questions")
            out[key] = value[index.to(value.device)]
        else:
            out[key] = value
    return out


def kl_rows(reference: ReferenceBatch, planned: list[Any]) -> list[float]:
    """Per row: the mean over its answer tokens of ``KL(reference || planned)``, from the planned
    log-probabilities: ``sum(p log p) - sum(p log q)``, the first sum stored with the reference."""
    out = []
    for p, plogp, logq in zip(reference.probs, reference.plogp, planned):
        kl = plogp - (p * logq).sum(-1)
        out.append(float(kl.mean()) if kl.numel() else 0.0)
    return out


def score_batch(loaded: Any, inputs: Any, reference: ReferenceBatch, max_new_tokens: int) -> BatchFidelity:
    """The planned model's answers on one batch (``inputs``: a callable giving fresh generate inputs),
    their agreement with ``reference`` and the teacher-forced KL (module doc)."""
    import torch

    batch = inputs()
    new, logits = _generate(loaded, batch, max_new_tokens)
    answers = decode_answers(loaded, new)
    stop = _stop_ids(loaded)
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    planned: list[Any] = [None] * len(answers)
    diverged = []
    for i, target in enumerate(reference.tokens):
        mine = _answer_tokens(new[i], stop)
        if mine == target:
            planned[i] = logp[:len(target), i]
        else:
            diverged.append(i)
    if diverged:
        sub = _rows(inputs(), diverged)
        targets = [reference.tokens[i] for i in diverged]
        forcer = ForceTokens(targets, sub["input_ids"].shape[1], loaded.processor.tokenizer.pad_token_id or 0)
        _, forced = _generate(loaded, sub, max(len(t) for t in targets), [forcer])
        forced_logp = torch.log_softmax(forced.float(), dim=-1).cpu()
        for k, i in enumerate(diverged):
            planned[i] = forced_logp[:len(reference.tokens[i]), k]
    agreement = [float(a == b) for a, b in zip(answers, reference.answers)]
    return BatchFidelity(answers, agreement, kl_rows(reference, planned))


class Reference:
    """The unplanned model's outputs on every batch of a prepared subset, computed once on first use."""

    def __init__(self, loaded: Any, prepared: Any, max_new_tokens: int):
        self.loaded, self.prepared, self.max_new_tokens = loaded, prepared, max_new_tokens
        self.batches: list[ReferenceBatch] | None = None

    def ensure(self) -> list[ReferenceBatch]:
        """Compute the reference (the model must be unplanned now) unless it was already."""
        if self.batches is None:
            self.batches = [reference_batch(self.loaded, batch.generate_inputs(), self.max_new_tokens)
                            for batch in self.prepared]
        return self.batches
