"""Score a loaded model on a schema VQA dataset: generate, then apply the VQAv2 metric."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from searchskip.eval.generate import answer_all
from searchskip.eval.vqa_accuracy import VQAScore, score


@dataclass
class EvalResult:
    """The score of one evaluation, its predictions and its throughput."""

    score: VQAScore
    predictions: list[str]
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.score.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        """Plain JSON-able data: the score's fields plus ``seconds`` and ``samples_per_s``."""
        return {**self.score.to_dict(), "seconds": round(self.seconds, 3), "samples_per_s": round(self.samples_per_s, 2)}


def evaluate(loaded, dataset, batch_size: int, max_new_tokens: int,
             on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """Answer every question of ``dataset`` greedily and score the answers (VQAv2 accuracy)."""
    start = time.perf_counter()
    predictions = answer_all(loaded, dataset, batch_size, max_new_tokens, on_batch)
    seconds = time.perf_counter() - start
    columns = dataset.select_columns(["answers", "question_type", "answer_type"]).to_dict()
    result = score(predictions, columns["answers"], columns["question_type"], columns["answer_type"])
    return EvalResult(score=result, predictions=predictions, seconds=seconds)
