"""TripletEvaluator: the share of (anchor, positive, negative) triplets where the positive is nearer."""

from __future__ import annotations

import logging

import numpy as np

from .base import (SentenceEvaluator, SimilarityFunction, check_older_order, check_same_length, describe, encode,
                   paired_scores)

logger = logging.getLogger(__name__)

_NAMES = (("cosinus", "cosine"), ("manhattan", "manhattan"), ("euclidean", "euclidean"))
_BY_FUNCTION = {SimilarityFunction.COSINE: "cosinus", SimilarityFunction.MANHATTAN: "manhattan",
                SimilarityFunction.EUCLIDEAN: "euclidean", SimilarityFunction.DOT_PRODUCT: "dot"}


class TripletEvaluator(SentenceEvaluator):
    """Accuracy = share of triplets with distance(anchor, positive) < distance(anchor, negative), for cosine,
    manhattan and euclidean distance (and dot product, as sentence-transformers 3+); the main score is
    ``main_distance_function``'s, or the best of the three distances (2.x)."""

    def __init__(self, anchors: list[str], positives: list[str], negatives: list[str],
                 main_distance_function=None, name: str = "", batch_size: int = 16,
                 show_progress_bar: bool = False, write_csv: bool = True, truncate_dim: int | None = None) -> None:
        check_older_order("TripletEvaluator", "anchors, positives, negatives, main_distance_function, name, "
                          "batch_size, show_progress_bar, write_csv", "margin fifth", name=name, batch_size=batch_size,
                          show_progress_bar=show_progress_bar, write_csv=write_csv)
        self.truncate_dim = truncate_dim
        check_same_length(anchors=anchors, positives=positives, negatives=negatives, at_least=1)
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.main_distance_function = (None if main_distance_function is None
                                       else SimilarityFunction.from_name(main_distance_function))
        self.name, self.batch_size = name, batch_size
        self.show_progress_bar, self.write_csv = show_progress_bar, write_csv
        self.csv_file = f"triplet_evaluation{'_' + name if name else ''}_results.csv"
        self.csv_headers = ["epoch", "steps", "accuracy_cosinus", "accuracy_manhattan", "accuracy_euclidean"]
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> "TripletEvaluator":
        return cls(*([e.texts[i] for e in examples] for i in range(3)), **kwargs)

    def compute_metrics(self, model) -> dict[str, float]:
        a, p, n = (encode(model, col, self.batch_size, self.show_progress_bar, self.truncate_dim)
                   for col in (self.anchors, self.positives, self.negatives))
        pos, neg = paired_scores(a, p), paired_scores(a, n)  # similarities: higher is nearer
        metrics = {f"accuracy_{short}": float(np.mean(pos[key] > neg[key])) for short, key in _NAMES}
        return {**metrics, "accuracy_dot": float(np.mean(pos["dot"] > neg["dot"]))}

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> float:
        logger.info("TripletEvaluator: evaluating the model on the %s dataset%s:", self.name, describe(epoch, steps))
        m = self.compute_metrics(model)
        self.last_metrics = m
        for key, value in m.items():
            logger.info("%s: %.2f", key, value * 100)
        self.append_csv(output_path, [epoch, steps] + [m[h] for h in self.csv_headers[2:]])
        if self.main_distance_function in _BY_FUNCTION:
            return m[f"accuracy_{_BY_FUNCTION[self.main_distance_function]}"]
        return max(m[f"accuracy_{short}"] for short, _ in _NAMES)  # 2.x: the best of the three distances
