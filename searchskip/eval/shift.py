"""How far a plan moves the model's answer: :func:`first_token_kl`, the KL divergence of the first
answer token's distribution from the unplanned model's, on prompt batches. ShortV's Layer
Contribution and the budget fit's measured harm (:mod:`searchskip.search.harm`) both read it."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["first_token_kl"]


def first_token_kl(model: Any, batches: Sequence[dict], plans: Iterable[Any], *,
                   calibration: Sequence[dict] | None = None) -> list[float]:
    """``E_x[KL(p(. | x) || p_plan(. | x))]`` for each plan of ``plans``, in order.

    ``p`` is the next-token distribution at the last prompt position of each sample ``x`` of
    ``batches`` (the first answer token's; batches are left-padded, so it is every row's last
    position), in float64, every sample weighing the same; a mean that rounding takes below 0 is
    0. The unplanned distributions are computed once. Each plan is applied with
    :func:`searchskip.apply.apply` (``calibration``: Wanda's calibration batches, default
    ``batches``) and restored; the model runs in eval mode (restored afterwards), without
    gradients or a KV cache, and is left as it was. ``batches`` are keyword arguments of
    ``model(**batch)``, e.g. from :func:`searchskip.ops.calibration.calibration_batches`.

    Raises ``ValueError`` when there is no sample, or a batch's last position is padding in some
    row (right padding).
    """
    import torch

    from searchskip.apply import apply

    batches = list(batches)
    for batch in batches:
        mask = batch.get("attention_mask")
        if mask is not None and not bool(mask[:, -1].bool().all()):
            raise ValueError("the first answer token's distribution is read at every row's last position, but a "
                             "batch is padded on the right; pad prompt batches on the left")

    def last_log_probs(batch: dict) -> Any:
        return torch.log_softmax(model(**batch, use_cache=False).logits[:, -1].double(), dim=-1)

    was_training = model.training
    out: list[float] = []
    try:
        model.eval()
        with torch.inference_mode():
            reference = [last_log_probs(batch) for batch in batches]
            rows = sum(r.shape[0] for r in reference)
            if rows == 0:
                raise ValueError("the batches hold no sample; the answer's shift needs at least one")
            for plan in plans:
                total = 0.0
                with apply(model, plan, calibration=calibration if calibration is not None else batches):
                    for batch, ref in zip(batches, reference):
                        total += float((ref.exp() * (ref - last_log_probs(batch))).sum(-1).sum())
                out.append(max(0.0, total / rows))
    finally:
        model.train(was_training)
    return out
