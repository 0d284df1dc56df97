"""SequentialEvaluator: run several evaluators; the main score is a function of their scores (the last)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from .base import SentenceEvaluator

SEQUENTIAL_SCORE = "sequential_score"


class SequentialEvaluator(SentenceEvaluator):
    """Runs ``evaluators`` in turn. With 2.x-style evaluators (a float each) it returns
    ``main_score_function(scores)``; once one returns a dict of metrics (sentence-transformers 3 and later), it
    returns, as those do, all metrics merged plus ``"sequential_score"``, its ``primary_metric``, each dict's
    score being its evaluator's ``primary_metric`` (else its first metric)."""

    def __init__(self, evaluators: Iterable[SentenceEvaluator],
                 main_score_function: Callable[[list[float]], float] = lambda scores: scores[-1]) -> None:
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function
        self.primary_metric: str | None = None

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> Any:
        scores: list[float] = []
        metrics: dict[str, Any] = {}
        any_dict = False
        for i, evaluator in enumerate(self.evaluators):
            result = evaluator(model, output_path, epoch, steps)
            if isinstance(result, dict):
                any_dict = True
                key = getattr(evaluator, "primary_metric", None)
                scores.append(result[key] if key in result else next(iter(result.values())))
                metrics.update(result)
            else:
                scores.append(result)
                metrics[f"evaluator_{i}"] = result
        main = self.main_score_function(scores) if scores else 0.0
        if not any_dict:
            return main
        self.primary_metric = SEQUENTIAL_SCORE
        metrics[SEQUENTIAL_SCORE] = main
        return metrics
