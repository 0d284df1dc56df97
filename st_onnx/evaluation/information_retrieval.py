"""InformationRetrievalEvaluator: rank a corpus for each query; accuracy, precision, recall, MRR, nDCG, MAP @k."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..errors import InvalidInputError, positive_int
from .base import SentenceEvaluator, SimilarityFunction, describe, encode

logger = logging.getLogger(__name__)


def cos_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return _pair_scores(a, b)


def dot_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _pair_scores(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def _pair_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` in float64, rounded to float32: a float32 matmul gives identical documents scores that differ in
    the last bit by their column (BLAS sums edge columns in another order), which would rank duplicates by position;
    rounded float64 sums agree, so equal documents tie and rank by corpus id."""
    return (a @ b.T).astype(np.float32)


def top_k(scores: np.ndarray, k: int, best_idx: np.ndarray | None, best_val: np.ndarray | None, offset: int,
          id_rank: np.ndarray):
    """Merge a chunk of scores (queries x chunk) into the running top-k (indices and values, best first).

    Equal scores rank by corpus id (``id_rank``: each corpus index's place among the sorted ids), the total order
    (-score, corpus id) sentence-transformers 6 ranks by, so duplicate documents rank the same there and here,
    whatever the chunk size.
    """
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN score (a diverged model) ranks last
    idx = np.broadcast_to(np.arange(offset, offset + scores.shape[1]), scores.shape)
    if best_idx is not None:
        idx = np.concatenate([best_idx, idx], axis=1)
        scores = np.concatenate([best_val, scores], axis=1)
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # each row's k-th best score
    out_idx = np.empty((scores.shape[0], k), dtype=np.int64)
    out_val = np.empty((scores.shape[0], k), dtype=scores.dtype)
    for row in range(scores.shape[0]):
        candidates = np.flatnonzero(scores[row] >= kth[row])  # the top k and every tie at the cut
        ids = idx[row, candidates]
        best = np.lexsort((id_rank[ids], -scores[row, candidates]))[:k]
        out_idx[row] = ids[best]
        out_val[row] = scores[row, candidates[best]]
    return out_idx, out_val


def rank_metrics(hits: list[list[str]], relevant: list[set], at: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """The 2.x metrics of ranked corpus ids against each query's relevant set (binary relevance)."""
    out: dict[str, dict[int, float]] = {m: {} for m in ("accuracy@k", "precision@k", "recall@k", "mrr@k",
                                                      "ndcg@k", "map@k")}
    flags = [np.array([doc in rel for doc in ranked], dtype=np.float64) for ranked, rel in zip(hits, relevant)]
    for k in at["accuracy"]:
        out["accuracy@k"][k] = float(np.mean([f[:k].any() for f in flags]))
    for k in at["precision_recall"]:
        out["precision@k"][k] = float(np.mean([f[:k].sum() / k for f in flags]))
        out["recall@k"][k] = float(np.mean([f[:k].sum() / len(r) for f, r in zip(flags, relevant)]))
    for k in at["mrr"]:
        out["mrr@k"][k] = float(np.mean([1.0 / (np.argmax(f[:k]) + 1) if f[:k].any() else 0.0 for f in flags]))
    for k in at["ndcg"]:
        ndcg = []
        for f, r in zip(flags, relevant):
            discounts = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = float(np.sum(f[:k] * discounts[: len(f[:k])]))
            ndcg.append(dcg / float(np.sum(discounts[: min(len(r), k)])))
        out["ndcg@k"][k] = float(np.mean(ndcg))
    for k in at["map"]:
        aps = []
        for f, r in zip(flags, relevant):
            top = f[:k]
            precisions = np.cumsum(top) / np.arange(1, len(top) + 1)
            aps.append(float(np.sum(precisions * top)) / min(k, len(r)))
        out["map@k"][k] = float(np.mean(aps))
    return out


class InformationRetrievalEvaluator(SentenceEvaluator):
    """Queries {qid: text}, corpus {cid: text}, relevant_docs {qid: set(cid)}; queries without relevant docs
    are left out. The main score is the best MAP@max(map_at_k) over the score functions (2.x)."""

    csv_lineterminator = "\n"  # sentence-transformers writes this file's lines by hand, not with csv.writer

    def __init__(self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set],
                 corpus_chunk_size: int = 50000, mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,),
                 accuracy_at_k: list[int] = (1, 3, 5, 10), precision_recall_at_k: list[int] = (1, 3, 5, 10),
                 map_at_k: list[int] = (100,), show_progress_bar: bool = False, batch_size: int = 32,
                 name: str = "", write_csv: bool = True, truncate_dim: int | None = None,
                 score_functions: dict[str, Callable] | None = None, main_score_function: str | None = None) -> None:
        # a single id given as a string is that id (set("d1") would be {"d", "1"})
        relevant_docs = {q: ({ids} if isinstance(ids, (str, int)) else ids) for q, ids in relevant_docs.items()}
        self.queries_ids = [q for q in queries if q in relevant_docs and len(relevant_docs[q]) > 0]
        self.queries = [queries[q] for q in self.queries_ids]
        self.corpus_ids = list(corpus)
        self.corpus = [corpus[c] for c in self.corpus_ids]
        self._id_rank = _id_rank(self.corpus_ids)
        self.relevant_docs = relevant_docs
        given = {"mrr": mrr_at_k, "ndcg": ndcg_at_k, "accuracy": accuracy_at_k,
                 "precision_recall": precision_recall_at_k, "map": map_at_k}
        self.at = {kind: _cutoffs(f"{kind}_at_k", ks) for kind, ks in given.items()}
        self.corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
        self.show_progress_bar = show_progress_bar
        self.batch_size = batch_size
        self.name = name
        self.write_csv = write_csv
        self.truncate_dim = truncate_dim
        self.score_functions = dict(score_functions or {"cos_sim": cos_sim, "dot_score": dot_score})
        self.score_function_names = sorted(self.score_functions)
        if main_score_function is not None and score_functions is None:  # 'cosine', the enum... for the defaults
            function = SimilarityFunction.from_name(main_score_function)
            if function not in _DEFAULT_NAMES:
                raise InvalidInputError(f"main_score_function is {main_score_function!r}; the default score "
                                        "functions are cosine ('cos_sim') and dot product ('dot_score')")
            main_score_function = _DEFAULT_NAMES[function]
        if main_score_function is not None and main_score_function not in self.score_functions:
            raise InvalidInputError(
                f"main_score_function {main_score_function!r} is not one of score_functions: "
                f"{', '.join(self.score_function_names)}"
            )
        self.main_score_function = main_score_function
        if not self.queries_ids:
            raise InvalidInputError("no query has relevant documents: relevant_docs must map query ids to sets "
                                    "of corpus ids")
        if not self.corpus_ids:
            raise InvalidInputError("the corpus is empty: there is nothing to rank; allowed: a dict of at least one "
                                    "corpus id -> text")
        self.csv_file = f"Information-Retrieval_evaluation{'_' + name if name else ''}_results.csv"
        self.csv_headers = ["epoch", "steps"] + [h for n in self.score_function_names for h in self._headers(n)]
        self.last_metrics: dict = {}

    def _headers(self, name: str) -> list[str]:
        h = [f"{name}-Accuracy@{k}" for k in self.at["accuracy"]]
        for k in self.at["precision_recall"]:
            h += [f"{name}-Precision@{k}", f"{name}-Recall@{k}"]
        h += [f"{name}-MRR@{k}" for k in self.at["mrr"]]
        h += [f"{name}-NDCG@{k}" for k in self.at["ndcg"]]
        return h + [f"{name}-MAP@{k}" for k in self.at["map"]]

    def _row(self, metrics: dict) -> list[float]:
        row = []
        for n in self.score_function_names:
            m = metrics[n]
            row += [m["accuracy@k"][k] for k in self.at["accuracy"]]
            for k in self.at["precision_recall"]:
                row += [m["precision@k"][k], m["recall@k"][k]]
            row += [m["mrr@k"][k] for k in self.at["mrr"]]
            row += [m["ndcg@k"][k] for k in self.at["ndcg"]]
            row += [m["map@k"][k] for k in self.at["map"]]
        return row

    def compute_metrices(self, model, corpus_model=None, corpus_embeddings: np.ndarray | None = None) -> dict:
        """``{score_function: {"ndcg@k": {10: v}, "map@k": {...}, ...}}`` (2.x's spelling of the name)."""
        max_k = max(max(v) for v in self.at.values())
        q_emb = encode(model, self.queries, self.batch_size, self.show_progress_bar, self.truncate_dim)
        ranked = {n: (None, None) for n in self.score_functions}
        for start in range(0, len(self.corpus), self.corpus_chunk_size):
            end = min(start + self.corpus_chunk_size, len(self.corpus))
            if corpus_embeddings is None:
                c_emb = encode(corpus_model or model, self.corpus[start:end], self.batch_size, self.show_progress_bar,
                               self.truncate_dim)
            else:
                c_emb = np.asarray(corpus_embeddings[start:end])
            for n, fn in self.score_functions.items():
                scores = _score(fn, q_emb, c_emb)
                ranked[n] = top_k(scores, max_k, *ranked[n], offset=start, id_rank=self._id_rank)
        relevant = [set(self.relevant_docs[q]) for q in self.queries_ids]
        return {n: rank_metrics([[self.corpus_ids[i] for i in row] for row in idx], relevant, self.at)
                for n, (idx, _) in ranked.items()}

    compute_metrics = compute_metrices

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1,
                 *args, **kwargs) -> float:
        logger.info("Information Retrieval Evaluation of the model on the %s dataset%s:", self.name,
                    describe(epoch, steps))
        metrics = self.compute_metrices(model, *args, **kwargs)
        self.last_metrics = metrics
        for n in self.score_function_names:
            for metric, values in metrics[n].items():
                for k, v in values.items():
                    logger.info("%s %s %d: %.4f", n, metric.replace("@k", "@"), k, v)
        self.append_csv(output_path, [epoch, steps] + self._row(metrics))
        top = max(self.at["map"])
        if self.main_score_function is None:
            return max(metrics[n]["map@k"][top] for n in self.score_function_names)
        return metrics[self.main_score_function]["map@k"][top]


def _score(fn: Callable, queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """``fn(queries, corpus)`` as float64 numpy. The numpy functions here get arrays; a user's function gets torch
    tensors where torch is installed, as sentence-transformers gives it (``Callable[[Tensor, Tensor], Tensor]``)."""
    if fn not in (cos_sim, dot_score):
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            scores = fn(torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(np.ascontiguousarray(corpus)))
            if isinstance(scores, torch.Tensor):
                scores = scores.detach().cpu().double().numpy()
            return np.asarray(scores, dtype=np.float64)
    return np.asarray(fn(queries, corpus), dtype=np.float64)


_DEFAULT_NAMES = {SimilarityFunction.COSINE: "cos_sim", SimilarityFunction.DOT_PRODUCT: "dot_score"}


def _cutoffs(name: str, ks) -> list[int]:
    """A metric's cut-offs (k of metric@k): a non-empty list of positive ints."""
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not list(ks):
        raise InvalidInputError(f"{name} must be a non-empty list of positive ints such as [10]; got {ks!r}")
    return [positive_int(k, name) for k in ks]


def _id_rank(corpus_ids: list) -> np.ndarray:
    """Each corpus index's place among the corpus ids sorted (as given, else as strings: mixed id types)."""
    try:
        order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
    except TypeError:
        order = sorted(range(len(corpus_ids)), key=lambda i: str(corpus_ids[i]))
    rank = np.empty(len(corpus_ids), dtype=np.int64)
    rank[order] = np.arange(len(corpus_ids))
    return rank
