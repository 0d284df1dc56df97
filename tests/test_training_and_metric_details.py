"""Details where training, losses, evaluators and util must agree with sentence-transformers: the losses' default
margins and scales, one-sided batches, metrics when k exceeds the relevant documents or the corpus, ties, when
fit evaluates and which model it keeps, weight decay groups, CSV columns. Each of these once passed the suite
while wrong (a mutation review, 2026-11-30)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import FakeModel


class Stub(torch.nn.Module):
    device = torch.device("cpu")

    def forward(self, features):
        return {"sentence_embedding": features["emb"]}


def embeddings(n_columns, batch=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g) for _ in range(n_columns)]


# -- losses: defaults and the one-sided batches -------------------------------------------------------------
def test_loss_defaults_are_sentence_transformers_ones():
    """Built without arguments, each loss gives sentence-transformers' value (margins and scales are defaults)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import losses as t

    from st_onnx import losses

    binary = torch.tensor([1, 0] * 6)
    floats = torch.rand(12, generator=torch.Generator().manual_seed(1))
    for name, labels, cols in (("ContrastiveLoss", binary, 2), ("OnlineContrastiveLoss", binary, 2),
                               ("TripletLoss", torch.zeros(12), 3), ("CoSENTLoss", floats, 2),
                               ("MultipleNegativesRankingLoss", torch.zeros(12), 2)):
        for seed in (0, 4):
            embs = [e * 0.3 for e in embeddings(cols, seed=seed)]  # distances near the default margins
            ours = getattr(losses, name)(Stub()).compute_loss_from_embeddings(embs, labels)
            theirs = getattr(t, name)(Stub()).compute_loss_from_embeddings(embs, labels)
            assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6), (name, seed)


@pytest.mark.parametrize("labels", [torch.zeros(12), torch.ones(12)])
def test_online_contrastive_loss_on_one_sided_batches(labels):
    """A batch of only negatives (or only positives) compares against the mean distance, as sentence-transformers."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import losses as t

    from st_onnx import losses

    embs = embeddings(2, seed=7)
    for metric in ("EUCLIDEAN", "COSINE_DISTANCE"):
        ours = losses.OnlineContrastiveLoss(Stub(), getattr(losses.SiameseDistanceMetric, metric), margin=40.0)
        theirs = t.OnlineContrastiveLoss(Stub(), getattr(t.SiameseDistanceMetric, metric), margin=40.0)
        a = ours.compute_loss_from_embeddings(embs, labels)
        b = theirs.compute_loss_from_embeddings(embs, labels)
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6), metric


# -- evaluation ---------------------------------------------------------------------------------------------
def test_retrieval_metrics_when_queries_have_more_relevant_documents_than_k():
    """nDCG@k's ideal DCG and MAP@k's divisor stop at k (min(k, relevant)), as sentence-transformers."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as Theirs

    from st_onnx.evaluation import InformationRetrievalEvaluator

    rng = np.random.default_rng(5)
    queries = {f"q{i}": f"q{i}" for i in range(10)}
    corpus = {f"d{i}": f"d{i}" for i in range(40)}
    relevant = {f"q{i}": {f"d{j}" for j in rng.choice(40, size=6, replace=False)} for i in range(10)}
    at = dict(mrr_at_k=[3], ndcg_at_k=[1, 3], accuracy_at_k=[1, 3], precision_recall_at_k=[1, 3], map_at_k=[3, 20])
    theirs = Theirs(queries, corpus, relevant, score_functions={"cos_sim": util.cos_sim}, **at)(FakeModel())
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, **at)
    main = ours(FakeModel())
    for key, value in theirs.items():
        name, metric = key[len("cos_sim_"):].split("@")
        assert ours.last_metrics["cos_sim"][f"{name}@k"][int(metric)] == pytest.approx(value, abs=1e-6), key
    # 2.x: the main score is the best MAP at the largest map_at_k
    assert main == max(ours.last_metrics[n]["map@k"][20] for n in ("cos_sim", "dot_score"))


def test_triplet_accuracy_counts_a_tie_as_a_miss():
    """A negative as near as the positive (here the same text) is no success, as in sentence-transformers."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator as Theirs

    from st_onnx.evaluation import TripletEvaluator

    anchors = [f"a{i}" for i in range(10)]
    positives = [f"p{i}" for i in range(10)]
    negatives = [f"p{i}" if i % 2 else f"n{i}" for i in range(10)]  # half the negatives are the positive
    theirs = Theirs(anchors, positives, negatives, similarity_fn_names=["cosine", "euclidean", "manhattan"])(
        FakeModel())
    ours = TripletEvaluator(anchors, positives, negatives)
    main = ours(FakeModel())
    for short, sim in (("cosinus", "cosine"), ("euclidean", "euclidean"), ("manhattan", "manhattan")):
        assert ours.last_metrics[f"accuracy_{short}"] == pytest.approx(theirs[f"{sim}_accuracy"]), short
    assert main <= 0.5


# -- fit ----------------------------------------------------------------------------------------------------
PAIRS = [
    ("the cat sleeps", "a cat sleeps", 0.9), ("the dog runs", "a dog runs fast", 0.8),
    ("a man plays music", "the man sings", 0.6), ("the car is red", "a fish swims", 0.1),
    ("the bird flies", "the plane flies", 0.5), ("the child reads", "a woman drives a car", 0.0),
]


def _examples():
    from st_onnx import InputExample

    return [InputExample(texts=[a, b], label=s) for a, b, s in PAIRS]


def test_evaluation_steps_count_within_each_epoch(tiny_model_dir):
    """sentence-transformers 2.x evaluates when the step within the epoch is a multiple of evaluation_steps."""
    from torch.utils.data import DataLoader

    from st_onnx import SentenceTransformer, losses

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    seen = []
    model.fit([(DataLoader(_examples(), batch_size=2), losses.CosineSimilarityLoss(model))],  # 3 steps an epoch
              evaluator=lambda m, output_path=None, epoch=-1, steps=-1: 0.0, epochs=2, evaluation_steps=2,
              callback=lambda score, epoch, steps: seen.append((epoch, steps)), show_progress_bar=False,
              warmup_steps=0)
    assert seen == [(0, 2), (0, -1), (1, 2), (1, -1)]


def test_an_equal_score_keeps_the_first_best_model(tiny_model_dir, tmp_path):
    """Only a strictly better score replaces the model saved at output_path (2.x: score > best_score)."""
    from torch.utils.data import DataLoader

    from st_onnx import SentenceTransformer, losses

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    snapshots = []
    model.fit([(DataLoader(_examples(), batch_size=2), losses.CosineSimilarityLoss(model))],
              evaluator=lambda m, output_path=None, epoch=-1, steps=-1: 0.5, epochs=2, output_path=str(tmp_path),
              callback=lambda *a: snapshots.append(model.encode(["the cat sleeps"])), show_progress_bar=False,
              warmup_steps=0, optimizer_params={"lr": 1e-3})
    assert len(snapshots) == 2 and not np.allclose(snapshots[0], snapshots[1])
    saved = SentenceTransformer(str(tmp_path), device="cpu").encode(["the cat sleeps"])
    np.testing.assert_allclose(saved, snapshots[0], atol=1e-6)


# -- util ---------------------------------------------------------------------------------------------------
def test_semantic_search_ties_in_sentence_transformers_order():
    st_util = pytest.importorskip("sentence_transformers.util")

    from st_onnx import util

    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 8)).astype(np.float32)
    corpus = torch.from_numpy(np.repeat(base, 5, axis=0))  # every vector five times: ties everywhere
    queries = torch.from_numpy(rng.standard_normal((3, 8)).astype(np.float32))
    for top_k in (3, 7, 12):
        ours = util.semantic_search(queries, corpus, top_k=top_k)
        theirs = st_util.semantic_search(queries, corpus, top_k=top_k)
        assert [[h["corpus_id"] for h in q] for q in ours] == [[h["corpus_id"] for h in q] for q in theirs]


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_k=2, corpus_chunk_size=7, query_chunk_size=5),
                                dict(top_k=1, score_function="dot_score", corpus_chunk_size=6)])
def test_paraphrase_mining_every_pair_as_sentence_transformers(kw):
    """All pairs (max_pairs not binding), few neighbours per sentence, chunked: each sentence keeps top_k others
    besides itself, as sentence-transformers."""
    st_util = pytest.importorskip("sentence_transformers.util")

    from st_onnx import util

    rng = np.random.default_rng(0)
    e = torch.from_numpy(np.concatenate([rng.normal(size=(24, 8)), rng.normal(size=(6, 8)) * 3]).astype("float32"))
    e[5] = e[17]  # a duplicate
    kw = dict(kw, max_pairs=10**6)
    ours_kw = dict(kw, score_function=getattr(util, kw["score_function"])) if "score_function" in kw else kw
    their_kw = dict(kw, score_function=getattr(st_util, kw["score_function"])) if "score_function" in kw else kw
    ours, theirs = util.paraphrase_mining_embeddings(e, **ours_kw), st_util.paraphrase_mining_embeddings(e, **their_kw)
    assert sorted(tuple(p[1:]) for p in ours) == sorted(tuple(p[1:]) for p in theirs)
    assert len(ours) >= 15


def test_biases_and_layer_norms_get_no_weight_decay(tiny_model_dir):
    """sentence-transformers 2.x: weight_decay on every parameter but biases and LayerNorm weights."""
    from torch.utils.data import DataLoader

    from st_onnx import SentenceTransformer, losses

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    groups = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kw):
            params = list(params)
            groups.extend(params)
            super().__init__(params, **kw)

    names = {id(p): n for n, p in model.torch_modules.named_parameters()}
    model.fit([(DataLoader(_examples(), batch_size=2), losses.CosineSimilarityLoss(model))], optimizer_class=Recording,
              weight_decay=0.1, steps_per_epoch=1, show_progress_bar=False, warmup_steps=0)
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay and len(decay) == len(names)
    for name, wd in decay.items():
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert wd == (0.0 if no_decay else 0.1), name


def test_csv_values_sit_under_their_headers(tmp_path):
    import csv

    from st_onnx.evaluation import EmbeddingSimilarityEvaluator

    s1, s2 = [f"a{i}" for i in range(20)], [f"b{i}" for i in range(20)]
    ev = EmbeddingSimilarityEvaluator(s1, s2, [i / 20 for i in range(20)], name="x")
    ev(FakeModel(), str(tmp_path), epoch=0, steps=3)
    header, row = list(csv.reader((tmp_path / "similarity_evaluation_x_results.csv").read_text().splitlines()))
    for h, v in zip(header[2:], row[2:]):
        assert float(v) == pytest.approx(ev.last_metrics[h]), h


def test_precision_at_k_divides_by_k_when_the_corpus_is_smaller():
    """precision@k is hits / k even when fewer than k documents exist (sentence-transformers)."""
    from st_onnx.evaluation import InformationRetrievalEvaluator

    ev = InformationRetrievalEvaluator({"q": "q"}, {"d1": "d1", "d2": "d2"}, {"q": {"d1", "d2"}},
                                       precision_recall_at_k=[1, 5])
    ev(FakeModel())
    assert ev.last_metrics["cos_sim"]["precision@k"][5] == pytest.approx(2 / 5)
    assert ev.last_metrics["cos_sim"]["recall@k"][5] == 1.0
