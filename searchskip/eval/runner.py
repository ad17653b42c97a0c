"""Score a loaded model on a schema VQA dataset: generate, then apply the VQAv2 metric.

:func:`score_model` is the one way every verb scores a model (``eval``, the export's check, the
fine-tune's before/after reports): the model as :func:`~searchskip.models.load_model` loaded it
(its stored prompt template and runtime plan), the job's ``eval`` settings, eval mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

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


def score_model(loaded: Any, dataset: Any, settings: Any, *, label: str = "scoring", progress: Any = None,
                console: Any = None) -> EvalResult:
    """Score ``loaded`` on ``dataset`` with a job's ``eval`` settings (:class:`~searchskip.config.job.EvalSpec`:
    batch size, answer length), the model in eval mode (its training mode is put back after).

    Progress: a task called ``label`` on ``progress`` (a rich ``Progress`` the caller shows), else a
    transient bar of its own on ``console``, else none."""
    was_training = bool(getattr(loaded.model, "training", False))
    loaded.model.eval()
    try:
        if progress is None and console is None:
            return evaluate(loaded, dataset, settings.batch_size, settings.max_new_tokens)
        if progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=True) as own:
                return score_model(loaded, dataset, settings, label=label, progress=own)
        task = progress.add_task(label, total=len(dataset))
        try:
            return evaluate(loaded, dataset, settings.batch_size, settings.max_new_tokens,
                            on_batch=lambda n: progress.advance(task, n))
        finally:
            progress.remove_task(task)
    finally:
        loaded.model.train(was_training)
