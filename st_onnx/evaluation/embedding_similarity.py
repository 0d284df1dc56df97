"""EmbeddingSimilarityEvaluator: Pearson and Spearman correlation of pair similarities with gold scores."""

from __future__ import annotations

import logging

import numpy as np

from .base import (SentenceEvaluator, SimilarityFunction, check_older_order, check_same_length, describe, encode,
                   finite_numbers, paired_scores)

logger = logging.getLogger(__name__)

_ORDER = ("cosine", "euclidean", "manhattan", "dot")
_BY_FUNCTION = {SimilarityFunction.COSINE: "cosine", SimilarityFunction.EUCLIDEAN: "euclidean",
                SimilarityFunction.MANHATTAN: "manhattan", SimilarityFunction.DOT_PRODUCT: "dot"}


class EmbeddingSimilarityEvaluator(SentenceEvaluator):
    """Encode sentences1 and sentences2, score each pair with cosine, euclidean, manhattan and dot, and
    correlate with ``scores``. The main score is the Spearman of ``main_similarity``, or the best of the four
    when it is None (sentence-transformers 2.x)."""

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity=None, name: str = "", show_progress_bar: bool = False,
                 write_csv: bool = True, precision: str | None = None, truncate_dim: int | None = None) -> None:
        check_same_length(sentences1=sentences1, sentences2=sentences2, scores=scores, at_least=2)  # a correlation
        check_older_order("EmbeddingSimilarityEvaluator", "..., batch_size, main_similarity, name, show_progress_bar, "
                          "write_csv", "similarity_fn_names sixth", name=name, batch_size=batch_size,
                          show_progress_bar=show_progress_bar, write_csv=write_csv)
        gold = finite_numbers("scores", list(scores))
        if precision is not None:
            from ..quantization import check_precision

            check_precision(precision)
        self.precision, self.truncate_dim = precision, truncate_dim
        self.sentences1 = list(sentences1)
        self.sentences2 = list(sentences2)
        self.scores = gold.tolist()
        self.batch_size = batch_size
        self.main_similarity = None if main_similarity is None else SimilarityFunction.from_name(main_similarity)
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.csv_file = (f"similarity_evaluation{'_' + name if name else ''}{'_' + precision if precision else ''}"
                         "_results.csv")
        self.csv_headers = ["epoch", "steps"] + [f"{s}_{c}" for s in ("cosine", "euclidean", "manhattan", "dot")
                                                 for c in ("pearson", "spearman")]
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> "EmbeddingSimilarityEvaluator":
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **kwargs)

    def compute_metrics(self, model) -> dict[str, float]:
        """``{"<similarity>_pearson": r, "<similarity>_spearman": rho}`` for the four similarities."""
        kwargs = {"precision": self.precision, "normalize_embeddings": True} if self.precision else {}
        if self.precision in ("int8", "uint8"):  # one set of buckets for both columns (sentence-transformers 6)
            both = encode(model, self.sentences1 + self.sentences2, self.batch_size, self.show_progress_bar,
                          self.truncate_dim, **kwargs)
            emb1, emb2 = both[: len(self.sentences1)], both[len(self.sentences1):]
        else:
            emb1, emb2 = (encode(model, col, self.batch_size, self.show_progress_bar, self.truncate_dim, **kwargs)
                          for col in (self.sentences1, self.sentences2))
        if self.precision in ("binary", "ubinary"):  # packed bits: one 0/1 column per dimension
            emb1, emb2 = (np.unpackbits((e.astype(np.int16) + (128 if self.precision == "binary" else 0))
                                        .astype(np.uint8), axis=1) for e in (emb1, emb2))
        emb1, emb2 = emb1.astype(np.float32), emb2.astype(np.float32)
        gold = np.asarray(self.scores, dtype=np.float64)
        metrics = {}
        for sim, values in paired_scores(emb1, emb2).items():
            metrics[f"{sim}_pearson"] = pearson(gold, values)
            metrics[f"{sim}_spearman"] = spearman(gold, values)
        return metrics

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> float:
        logger.info("EmbeddingSimilarityEvaluator: evaluating the model on the %s dataset%s:", self.name,
                    describe(epoch, steps))
        m = self.compute_metrics(model)
        self.last_metrics = m
        for sim in _ORDER:
            logger.info("%-10s Pearson: %.4f\tSpearman: %.4f", sim.capitalize(), m[f"{sim}_pearson"],
                        m[f"{sim}_spearman"])
        self.append_csv(output_path, [epoch, steps] + [m[h] for h in self.csv_headers[2:]])
        if self.main_similarity is None:
            return max(m[f"{s}_spearman"] for s in _ORDER)
        return m[f"{_BY_FUNCTION[self.main_similarity]}_spearman"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two 1-D samples; NaN when either is constant or holds a NaN (as scipy.stats.pearsonr)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, tied values sharing their average rank; NaN when either sample
    holds a NaN (as scipy.stats.spearmanr: a diverged model must not score)."""
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return pearson(average_ranks(a), average_ranks(b))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; each group of equal values gets the mean of the ranks it spans."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks
