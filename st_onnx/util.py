"""sentence-transformers' ``util`` helpers: similarity scores, semantic search, paraphrase mining.

The similarity functions, search, mining and clustering helpers most code calls, with sentence-transformers'
names, signatures and results (torch tensors out; lists, numpy arrays or tensors in; float16/bfloat16 scored in
float32); for the rest sentence-transformers' own util takes st-onnx embeddings as they are (quantization is in
``st_onnx.quantization``).
Loaded lazily: ``import st_onnx`` does not import torch.
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "community_detection", "cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "normalize_embeddings",
    "pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim", "paraphrase_mining",
    "paraphrase_mining_embeddings", "pytorch_cos_sim", "semantic_search", "similarity_functions",
]


def _to_tensor(x) -> Tensor:
    """A tensor from a tensor, array or list (a list of arrays or tensors is stacked), its dtype kept; a sparse
    tensor (sentence-transformers' SparseEncoder gives them) made dense, as the scores are."""
    if isinstance(x, Tensor):
        return x if x.layout == torch.strided else x.to_dense()
    if isinstance(x, list) and x and all(isinstance(v, Tensor) for v in x):
        return torch.stack(x)
    if isinstance(x, list) and x and all(isinstance(v, np.ndarray) for v in x):
        return torch.from_numpy(np.stack(x))
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return torch.tensor(x)  # python floats become float32, as in sentence-transformers


def _as_tensor(x) -> Tensor:
    """``_to_tensor``, with float16/bfloat16 scores computed in float32 as sentence-transformers does (rounding them
    would tie nearby scores), and integer ones (quantized embeddings) in float64, where sentence-transformers' int8
    sums overflow silently."""
    x = _to_tensor(x)
    if torch.is_floating_point(x) and torch.finfo(x.dtype).bits < 32:
        x = x.float()
    elif not torch.is_floating_point(x):  # quantized embeddings (int8, binary): int8 dot products wrap around
        x = x.double()
    return x


def _as_batch(x) -> Tensor:
    """``_to_tensor`` with a single vector as one row: what search and mining hand a user's score function (its
    dtype as given, as sentence-transformers: a Hamming score on uint8 binary embeddings needs their bytes)."""
    x = _to_tensor(x)
    return x.unsqueeze(0) if x.dim() == 1 else x


def _as_matrix(x) -> Tensor:
    """``_as_tensor``, a single vector becoming one row."""
    x = _as_tensor(x)
    return x.unsqueeze(0) if x.dim() == 1 else x


def normalize_embeddings(embeddings: Tensor) -> Tensor:
    """Scale every row to unit L2 length."""
    return torch.nn.functional.normalize(embeddings, p=2, dim=-1)


def cos_sim(a, b) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``: shape (len(a), len(b))."""
    a, b = _as_matrix(a), _as_matrix(b)
    return torch.mm(normalize_embeddings(a), normalize_embeddings(b).T)


pytorch_cos_sim = cos_sim


def dot_score(a, b) -> Tensor:
    """Dot product of every row of ``a`` with every row of ``b``."""
    a, b = _as_matrix(a), _as_matrix(b)
    return torch.mm(a, b.T)


# The pairwise scores keep their inputs' shape: two single vectors give a 0-d tensor, as in sentence-transformers.
def pairwise_dot_score(a, b) -> Tensor:
    """Row i of ``a`` with row i of ``b``: their dot product."""
    return (_as_tensor(a) * _as_tensor(b)).sum(dim=-1)


def pairwise_cos_sim(a, b) -> Tensor:
    return pairwise_dot_score(normalize_embeddings(_as_tensor(a)), normalize_embeddings(_as_tensor(b)))


def euclidean_sim(a, b) -> Tensor:
    """Negative Euclidean distance of every row of ``a`` to every row of ``b`` (higher is more similar)."""
    a, b = _as_matrix(a), _as_matrix(b)
    return -torch.cdist(a, b, p=2.0)


def manhattan_sim(a, b) -> Tensor:
    """Negative Manhattan (L1) distance of every row of ``a`` to every row of ``b``."""
    a, b = _as_matrix(a), _as_matrix(b)
    return -torch.cdist(a, b, p=1.0)


def pairwise_euclidean_sim(a, b) -> Tensor:
    return -torch.sqrt(((_as_tensor(a) - _as_tensor(b)) ** 2).sum(dim=-1))


def pairwise_manhattan_sim(a, b) -> Tensor:
    return -(_as_tensor(a) - _as_tensor(b)).abs().sum(dim=-1)


def similarity_functions(name: str) -> tuple[Callable, Callable]:
    """(matrix, pairwise) similarity functions for a ``similarity_fn_name``."""
    table = {"cosine": (cos_sim, pairwise_cos_sim), "dot": (dot_score, pairwise_dot_score),
             "euclidean": (euclidean_sim, pairwise_euclidean_sim),
             "manhattan": (manhattan_sim, pairwise_manhattan_sim)}
    return table[name]


def _check_search(score_function: Callable, max_pairs: object = 1, **sizes: object) -> None:
    """Chunk sizes and top_k are positive ints, max_pairs an int >= 0; the score function is callable."""
    from .errors import InvalidInputError, non_negative_int, positive_int

    for name, value in sizes.items():
        positive_int(value, name)
    non_negative_int(max_pairs, "max_pairs")
    if not callable(score_function):
        raise InvalidInputError(f"score_function must be a function of two embedding matrices such as "
                                f"util.cos_sim; got {score_function!r}")


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable[[Tensor, Tensor], Tensor] = cos_sim,
) -> list[list[dict[str, int | float]]]:
    """For each query, the ``top_k`` corpus entries by score: ``[[{'corpus_id': int, 'score': float}, ...], ...]``."""
    _check_search(query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size, top_k=top_k,
                  score_function=score_function)
    queries, corpus = _as_batch(query_embeddings), _as_batch(corpus_embeddings)
    if corpus.numel() == 0:  # encode([]) of sentence-transformers is shape (0,): no corpus, no hits
        return [[] for _ in range(len(queries))]
    if corpus.device != queries.device:
        queries = queries.to(corpus.device)
    heaps: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    for c0 in range(0, len(corpus), corpus_chunk_size):
        chunk = corpus[c0 : c0 + corpus_chunk_size]
        for q0 in range(0, len(queries), query_chunk_size):
            scores = score_function(queries[q0 : q0 + query_chunk_size], chunk)
            values, idx = torch.topk(scores, min(top_k, scores.shape[1]), dim=1, largest=True, sorted=False)
            for heap, row_scores, row_idx in zip(heaps[q0:], values.cpu().tolist(), (idx + c0).cpu().tolist()):
                for candidate in zip(row_scores, row_idx):
                    if len(heap) < top_k:
                        heapq.heappush(heap, candidate)
                    else:
                        heapq.heappushpop(heap, candidate)
    return [
        [{"corpus_id": cid, "score": score} for score, cid in sorted(heap, key=lambda t: t[0], reverse=True)]
        for heap in heaps
    ]


def paraphrase_mining(
    model,
    sentences: list[str],
    show_progress_bar: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[list[float | int]]:
    """Pairs of sentences with the highest scores: ``[[score, i, j], ...]`` with i < j, best first; the texts
    are encoded with ``truncate_dim``, ``prompt_name`` and ``prompt`` as ``encode`` takes them."""
    embeddings = model.encode(sentences, show_progress_bar=show_progress_bar, batch_size=batch_size,
                              convert_to_tensor=True, truncate_dim=truncate_dim, prompt_name=prompt_name,
                              prompt=prompt)
    return paraphrase_mining_embeddings(embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k,
                                        score_function)


def paraphrase_mining_embeddings(
    embeddings,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable[[Tensor, Tensor], Tensor] = cos_sim,
) -> list[list[float | int]]:
    _check_search(query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size, top_k=top_k,
                  max_pairs=max_pairs, score_function=score_function)
    embeddings = _as_batch(embeddings)
    best: dict[tuple[int, int], float] = {}
    for q0 in range(0, len(embeddings), query_chunk_size):
        queries = embeddings[q0 : q0 + query_chunk_size]
        values, idx = None, None
        for c0 in range(0, len(embeddings), corpus_chunk_size):
            scores = score_function(queries, embeddings[c0 : c0 + corpus_chunk_size])
            v, i = torch.topk(scores, min(top_k + 1, scores.shape[1]), dim=1)
            i = i + c0
            if values is not None:
                v, i = torch.cat([values, v], dim=1), torch.cat([idx, i], dim=1)
                v, pos = torch.topk(v, min(top_k + 1, v.shape[1]), dim=1)
                i = torch.gather(i, 1, pos)
            values, idx = v, i
        for row, (row_v, row_i) in enumerate(zip(values.cpu().tolist(), idx.cpu().tolist())):
            i = q0 + row
            kept = [(j, s) for j, s in zip(row_i, row_v) if j != i][:top_k]
            for j, score in kept:
                best.setdefault((min(i, j), max(i, j)), score)
    ranked = heapq.nlargest(max_pairs, ((s, i, j) for (i, j), s in best.items()), key=lambda t: t[0])
    return [[s, i, j] for s, i, j in ranked]


def community_detection(embeddings, threshold: float = 0.75, min_community_size: int = 10, batch_size: int = 1024,
                        show_progress_bar: bool = False) -> list[list[int]]:
    """Clusters of texts: each a center and the texts within cosine ``threshold`` of it (the center first, then
    the closest first), at least ``min_community_size`` strong. Candidates are taken largest first and each
    text joins one cluster only, as in sentence-transformers; the clusters come largest first."""
    from tqdm.auto import tqdm

    from .errors import positive_int

    min_size = positive_int(min_community_size, "min_community_size")
    batch_size = positive_int(batch_size, "batch_size")
    vectors = normalize_embeddings(_as_matrix(embeddings)) if len(embeddings) else None
    if vectors is None or len(vectors) < min_size:
        return []
    candidates: list[tuple[int, np.ndarray]] = []
    for start in tqdm(range(0, len(vectors), batch_size), desc="Finding clusters", disable=not show_progress_bar):
        scores = vectors[start : start + batch_size] @ vectors.T
        counts = (scores >= threshold).sum(dim=1)
        for row in torch.nonzero(counts >= min_size).flatten().tolist():
            closest = torch.argsort(scores[row], descending=True, stable=True)[: int(counts[row])]
            candidates.append((start + row, closest.cpu().numpy()))  # CUDA embeddings too
    candidates.sort(key=lambda c: len(c[1]), reverse=True)  # stable: equal sizes keep their order
    taken = np.zeros(len(vectors), dtype=bool)
    clusters = []
    for center, members in candidates:
        free = members[~taken[members]]
        if taken[center] or len(free) < min_size:
            continue
        cluster = [center] + [int(i) for i in free if i != center]
        taken[cluster] = True
        clusters.append(cluster)
    return sorted(clusters, key=len, reverse=True)
