"""SequentialEvaluator: run several evaluators; the main score is a function of their scores (the last)."""

from __future__ import annotations

from typing import Callable, Iterable

from .base import SentenceEvaluator


class SequentialEvaluator(SentenceEvaluator):
    def __init__(self, evaluators: Iterable[SentenceEvaluator],
                 main_score_function: Callable[[list[float]], float] = lambda scores: scores[-1]) -> None:
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> float:
        scores = [evaluator(model, output_path, epoch, steps) for evaluator in self.evaluators]
        return self.main_score_function(scores)
