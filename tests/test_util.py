"""st_onnx.util against sentence_transformers.util: same results for the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_onnx import util

st_util = pytest.importorskip("sentence_transformers.util")


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 16)).astype("float32"), rng.normal(size=(90, 16)).astype("float32")


def test_scores_match_and_accept_numpy_lists_and_single_vectors(vectors):
    a, b = vectors
    for ours, theirs in ((util.cos_sim, st_util.cos_sim), (util.dot_score, st_util.dot_score)):
        torch.testing.assert_close(ours(a, b), theirs(a, b))
        torch.testing.assert_close(ours(a[0], b), theirs(a[0], b))
        torch.testing.assert_close(ours(a.tolist(), torch.from_numpy(b)), theirs(a.tolist(), torch.from_numpy(b)))
    torch.testing.assert_close(util.pairwise_cos_sim(a, a[::-1].copy()), st_util.pairwise_cos_sim(a, a[::-1].copy()))
    norms = util.normalize_embeddings(torch.from_numpy(a)).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(60))


@pytest.mark.parametrize("top_k,qc,cc", [(1, 100, 500000), (5, 7, 20), (200, 13, 31)])
def test_semantic_search_matches(vectors, top_k, qc, cc):
    q, c = map(torch.from_numpy, vectors)
    ours = util.semantic_search(q, c, query_chunk_size=qc, corpus_chunk_size=cc, top_k=top_k)
    theirs = st_util.semantic_search(q, c, query_chunk_size=qc, corpus_chunk_size=cc, top_k=top_k)
    assert [[h["corpus_id"] for h in row] for row in ours] == [[h["corpus_id"] for h in row] for row in theirs]
    assert len(ours[0]) == min(top_k, 90)
    np.testing.assert_allclose([h["score"] for h in ours[3]], [h["score"] for h in theirs[3]], atol=1e-6)


def test_paraphrase_mining_matches(vectors, tiny_model_dir):
    e = torch.from_numpy(np.concatenate(vectors))
    kw = dict(query_chunk_size=40, corpus_chunk_size=70, top_k=4, max_pairs=50)
    ours, theirs = util.paraphrase_mining_embeddings(e, **kw), st_util.paraphrase_mining_embeddings(e, **kw)
    assert [p[1:] for p in ours] == [p[1:] for p in theirs] and len(ours) == 50
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    texts = ["the cat sleeps", "a cat sleeps", "the big red car", "the red car", "fish swims"]
    pairs = util.paraphrase_mining(model, texts, top_k=2)
    assert all(i < j for _, i, j in pairs) and pairs == sorted(pairs, key=lambda p: -p[0])


@pytest.mark.parametrize("name", ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim",
                                  "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"])
def test_util_scores_shapes_and_dtypes_as_sentence_transformers(name):
    """float16/bfloat16 scored in float32, two single vectors paired into a 0-d score, lists of arrays stacked."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
    ours, theirs = getattr(util, name), getattr(st_util, name)
    cases = [(torch.from_numpy(a).half(), torch.from_numpy(b).half()),
             (torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()),
             (a[0], b[0]), (list(a), list(b)), (a, b)]
    for x, y in cases:
        got, want = ours(x, y), theirs(x, y)
        assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape, (name, x.__class__)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_paraphrase_mining_takes_the_encode_arguments(tiny_model_dir):
    """sentence-transformers 6's truncate_dim, prompt_name and prompt reach encode."""
    from helpers import SENTENCES
    from st_onnx import SentenceTransformer

    ours = SentenceTransformer(str(tiny_model_dir), device="cpu", prompts={"query": "a red "})
    theirs = pytest.importorskip("sentence_transformers").SentenceTransformer(
        str(tiny_model_dir), device="cpu", prompts={"query": "a red "})
    kw = {"truncate_dim": 8, "prompt_name": "query"}
    got, want = util.paraphrase_mining(ours, SENTENCES, **kw), st_util.paraphrase_mining(theirs, SENTENCES, **kw)
    assert [p[1:] for p in got] == [p[1:] for p in want]
    np.testing.assert_allclose([p[0] for p in got], [p[0] for p in want], atol=1e-5)
    assert got != util.paraphrase_mining(ours, SENTENCES, prompt="")


@pytest.mark.parametrize("threshold, size, batch", [(0.75, 10, 1024), (0.9, 3, 7), (0.5, 1, 64)])
def test_community_detection_matches(threshold, size, batch):
    """Clustered random points (no tied scores): the same clusters, centers first, in the same order."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(6, 24))
    points = np.concatenate([c + rng.normal(scale=0.35, size=(int(n), 24))
                             for c, n in zip(centers, rng.integers(2, 30, size=6))]).astype("float32")
    want = st_util.community_detection(torch.from_numpy(points), threshold, size, batch)
    assert util.community_detection(points, threshold, size, batch) == want and len(want) > 1
    assert util.community_detection(points[:2], min_community_size=3) == [] == util.community_detection([])
    with pytest.raises(ValueError, match="min_community_size must be a positive int"):
        util.community_detection(points, min_community_size=0)


def test_quantized_embeddings_score_exactly():
    """int8 embeddings: sentence-transformers' int8 dot products wrap around (64 where the sum is 267,584) and
    cosine refuses integers; here integer inputs are scored in float64, so ranks and scores are exact."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, size=(5, 384), dtype=np.int8)
    exact = codes.astype(np.float64) @ codes.astype(np.float64).T
    np.testing.assert_array_equal(util.dot_score(codes, codes).numpy(), exact)
    np.testing.assert_allclose(util.cos_sim(codes, codes).numpy(),
                               exact / np.outer(np.linalg.norm(codes, axis=1), np.linalg.norm(codes, axis=1)))
    hits = util.semantic_search(codes[:1], codes, score_function=util.dot_score)
    assert hits[0][0]["corpus_id"] == int(np.argmax(exact[0]))


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": -1}, "top_k must be a positive int; got -1"),
    ({"top_k": 2.0}, "top_k must be a positive int; got 2.0"),
    ({"query_chunk_size": 0}, "query_chunk_size must be a positive int; got 0"),
    ({"score_function": "cosine"}, "score_function must be a function of two embedding matrices"),
])
def test_search_arguments_are_named_when_wrong(kwargs, match):
    from st_onnx.errors import InvalidInputError

    emb = torch.randn(6, 8)
    for search in (lambda **kw: util.semantic_search(emb[:2], emb, **kw),
                   lambda **kw: util.paraphrase_mining_embeddings(emb, **kw)):
        with pytest.raises(InvalidInputError, match=match):
            search(**kwargs)


def test_a_users_score_function_gets_the_embeddings_dtype_as_given():
    """A Hamming score on ubinary codes needs their bytes: they were handed over as float64 (bitwise_xor failed)."""
    from st_onnx.quantization import quantize_embeddings

    popcount = torch.tensor([bin(i).count("1") for i in range(256)])

    def neg_hamming(a, b):
        assert a.dtype == b.dtype == torch.uint8
        return -popcount[torch.bitwise_xor(a[:, None, :], b[None, :, :]).long()].sum(-1).float()

    rng = np.random.default_rng(0)
    corpus = quantize_embeddings(rng.standard_normal((50, 64)).astype(np.float32), "ubinary")
    queries = quantize_embeddings(rng.standard_normal((3, 64)).astype(np.float32), "ubinary")
    ours = util.semantic_search(queries, corpus, top_k=3, score_function=neg_hamming)
    theirs = st_util.semantic_search(queries, corpus, top_k=3, score_function=neg_hamming)
    assert [[(h["corpus_id"], h["score"]) for h in q] for q in ours] == \
        [[(h["corpus_id"], h["score"]) for h in q] for q in theirs]
    assert ours[0][0]["score"] < 0
    one = util.semantic_search(queries[0], corpus, top_k=1, score_function=neg_hamming)  # a single query: one row
    assert one[0][0] == ours[0][0]
    mined = util.paraphrase_mining_embeddings(torch.from_numpy(corpus), top_k=2, max_pairs=3, score_function=neg_hamming)
    reference = st_util.paraphrase_mining_embeddings(torch.from_numpy(corpus), top_k=2, max_pairs=3,
                                                     score_function=neg_hamming)
    assert [pair[0] for pair in mined] == [pair[0] for pair in reference]  # which of tied pairs comes first: either


def test_empty_inputs_and_no_pairs_as_sentence_transformers():
    """encode([]) of sentence-transformers is shape (0,): searching it crashed in a matrix product; max_pairs=0
    was refused where sentence-transformers mines no pair; a negative max_pairs stays refused, by name."""
    from st_onnx.errors import InvalidInputError

    queries = torch.ones(2, 16)
    for corpus in (torch.empty(0), np.array([], dtype=np.float32), torch.empty(0, 16)):
        assert util.semantic_search(queries, corpus) == st_util.semantic_search(queries, corpus) == [[], []]
    emb = torch.randn(3, 2)
    mined = util.paraphrase_mining_embeddings(emb, max_pairs=0)
    assert mined == st_util.paraphrase_mining_embeddings(emb, max_pairs=0) == []
    with pytest.raises(InvalidInputError, match="max_pairs must be an int >= 0; got -1"):
        util.paraphrase_mining_embeddings(emb, max_pairs=-1)


@pytest.mark.parametrize("name", ["cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim",
                                  "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"])
def test_sparse_embeddings_score_as_dense_ones(name):
    """sentence-transformers 6's SparseEncoder gives sparse tensors, which its util scores (densely); cos_sim and
    the distances raised on them (norm and cdist have no sparse kernels)."""
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(4, 30)).astype(np.float32) * (rng.random((4, 30)) < 0.2))
    b = torch.from_numpy(rng.normal(size=(4, 30)).astype(np.float32) * (rng.random((4, 30)) < 0.2))
    ours = getattr(util, name)(a.to_sparse(), b.to_sparse())
    assert ours.layout == torch.strided
    torch.testing.assert_close(ours, getattr(util, name)(a, b))
    torch.testing.assert_close(ours, getattr(st_util, name)(a.to_sparse(), b.to_sparse()), atol=1e-5, rtol=1e-5)
