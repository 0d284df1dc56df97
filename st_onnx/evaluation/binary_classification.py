"""BinaryClassificationEvaluator: how well a similarity threshold separates duplicate (1) from other (0) pairs."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InvalidInputError
from .base import SentenceEvaluator, check_same_length, describe, encode_unique, paired_scores

logger = logging.getLogger(__name__)

# (2.x short name, key in paired_scores, higher score means more similar, display name)
_SIMILARITIES = (
    ("cossim", "cosine", True, "Cosine-Similarity"),
    ("manhattan", "manhattan", False, "Manhattan-Distance"),
    ("euclidean", "euclidean", False, "Euclidean-Distance"),
    ("dot", "dot", True, "Dot-Product"),
)
_COLUMNS = ("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap")


def _sorted_groups(scores, labels, high_score_more_similar: bool):
    """Scores sorted most-similar first, labels alike, and the indices where a group of equal scores ends."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(-scores if high_score_more_similar else scores, kind="stable")
    s, y = scores[order], (labels[order] == 1).astype(np.int64)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return s, y, ends


def _threshold(s: np.ndarray, i: int) -> float:
    """Midway between group end i and the next score (or s[i] at the end, or when the midpoint rounds onto it)."""
    if i == len(s) - 1:
        return float(s[i])
    mid = (s[i] + s[i + 1]) / 2
    return float(s[i]) if mid == s[i + 1] else float(mid)


def find_best_acc_and_threshold(scores, labels, high_score_more_similar: bool) -> tuple[float, float]:
    s, y, ends = _sorted_groups(scores, labels, high_score_more_similar)
    if not len(s):
        return 0.0, -1.0
    negatives = len(y) - y.sum()
    best_acc = negatives / len(y)  # the threshold that calls every pair dissimilar
    best = float(np.nextafter(s[0], np.inf if high_score_more_similar else -np.inf))
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    acc = (tp + negatives - fp) / len(y)
    i = int(np.argmax(acc))
    if acc[i] > best_acc:
        best_acc, best = float(acc[i]), _threshold(s, int(ends[i]))
    return float(best_acc), best


def find_best_f1_and_threshold(scores, labels, high_score_more_similar: bool) -> tuple[float, float, float, float]:
    s, y, ends = _sorted_groups(scores, labels, high_score_more_similar)
    tp = np.cumsum(y)[ends]
    if not len(s) or tp[-1] == 0:
        return 0.0, 0.0, 0.0, 0.0
    precision = tp / (ends + 1)
    recall = tp / y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(precision[i]), float(recall[i]), _threshold(s, int(ends[i]))


def average_precision(labels, scores) -> float:
    """Area under the precision-recall step curve (scikit-learn's average_precision_score)."""
    s, y, ends = _sorted_groups(scores, labels, True)
    tp = np.cumsum(y)[ends]
    if not len(s) or tp[-1] == 0:
        return 0.0
    precision = tp / (ends + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


class BinaryClassificationEvaluator(SentenceEvaluator):
    """Accuracy, F1 (with thresholds), precision, recall and average precision for each similarity; the main
    score is the best average precision (2.x)."""

    def __init__(self, sentences1: list[str], sentences2: list[str], labels: list[int], name: str = "",
                 batch_size: int = 32, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None) -> None:
        check_same_length(sentences1=sentences1, sentences2=sentences2, labels=labels)
        if not len(labels):
            raise InvalidInputError("BinaryClassificationEvaluator needs at least one pair; got none")
        self.truncate_dim = truncate_dim
        bad = sorted({lab for lab in labels if lab not in (0, 1)})
        if bad:
            raise InvalidInputError(f"BinaryClassificationEvaluator labels must be 0 or 1; got {bad[:5]}")
        self.sentences1, self.sentences2, self.labels = list(sentences1), list(sentences2), list(labels)
        self.name, self.batch_size = name, batch_size
        self.show_progress_bar, self.write_csv = show_progress_bar, write_csv
        self.csv_file = f"binary_classification_evaluation{'_' + name if name else ''}_results.csv"
        self.csv_headers = ["epoch", "steps"] + [f"{short}_{c}" for short, *_ in _SIMILARITIES for c in _COLUMNS]
        self.last_metrics: dict = {}

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> "BinaryClassificationEvaluator":
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                   [int(e.label) for e in examples], **kwargs)

    def compute_metrices(self, model) -> dict[str, dict[str, float]]:
        emb1, emb2 = encode_unique(model, [self.sentences1, self.sentences2], self.batch_size,
                                   self.show_progress_bar, self.truncate_dim)
        all_scores = paired_scores(emb1, emb2)
        labels = np.asarray(self.labels)
        out = {}
        for short, key, higher, display in _SIMILARITIES:
            scores = all_scores[key] if higher else -all_scores[key]  # distances, as 2.x reports them
            acc, acc_threshold = find_best_acc_and_threshold(scores, labels, higher)
            f1, precision, recall, f1_threshold = find_best_f1_and_threshold(scores, labels, higher)
            ap = average_precision(labels, scores if higher else -scores)
            out[short] = {"accuracy": acc, "accuracy_threshold": acc_threshold, "f1": f1, "f1_threshold": f1_threshold,
                          "precision": precision, "recall": recall, "ap": ap}
            logger.info("%-20s Accuracy: %.2f (threshold %.4f)  F1: %.2f (threshold %.4f)  AP: %.2f", display,
                        acc * 100, acc_threshold, f1 * 100, f1_threshold, ap * 100)
        return out

    compute_metrics = compute_metrices

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> float:
        logger.info("Binary Accuracy Evaluation of the model on the %s dataset%s:", self.name, describe(epoch, steps))
        m = self.compute_metrices(model)
        self.last_metrics = m
        self.append_csv(output_path, [epoch, steps] + [m[short][c] for short, *_ in _SIMILARITIES for c in _COLUMNS])
        return max(m[short]["ap"] for short in m)
