"""Evaluators: maths against sentence-transformers' own evaluators, 2.x CSV files, tiny IR slice, full scores."""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, FakeModel, read_stsb

from st_onnx import InputExample
from st_onnx.evaluation import (BinaryClassificationEvaluator, EmbeddingSimilarityEvaluator,
                                InformationRetrievalEvaluator, SequentialEvaluator, SimilarityFunction,
                                TripletEvaluator)
from st_onnx.errors import InvalidInputError
from st_onnx.evaluation.binary_classification import average_precision

ALL_SIMS = ["cosine", "euclidean", "manhattan", "dot"]


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    s1 = [f"a{i}" for i in range(40)]
    s2 = [f"b{i % 25}" for i in range(40)]
    return s1, s2, [float(x) for x in rng.random(40)], [int(x) for x in rng.integers(0, 2, 40)]


def st_eval():
    pytest.importorskip("sentence_transformers")
    import sentence_transformers.sentence_transformer.evaluation as evaluation

    return evaluation


# -- compat: the same embeddings give sentence-transformers' numbers ---------------------------------------
@pytest.mark.compat
def test_embedding_similarity_matches_sentence_transformers(pairs):
    s1, s2, scores, _ = pairs
    theirs = st_eval().EmbeddingSimilarityEvaluator(s1, s2, scores, similarity_fn_names=ALL_SIMS)(FakeModel())
    ours = EmbeddingSimilarityEvaluator(s1, s2, scores)
    main = ours(FakeModel())
    for sim in ALL_SIMS:
        for corr in ("pearson", "spearman"):
            assert ours.last_metrics[f"{sim}_{corr}"] == pytest.approx(theirs[f"{corr}_{sim}"], abs=1e-6)
    assert main == pytest.approx(theirs["spearman_max"], abs=1e-6)


@pytest.mark.compat
def test_binary_classification_matches_sentence_transformers(pairs):
    s1, s2, _, labels = pairs
    theirs = st_eval().BinaryClassificationEvaluator(s1, s2, labels, similarity_fn_names=ALL_SIMS)(FakeModel())
    ours = BinaryClassificationEvaluator(s1, s2, labels)
    main = ours(FakeModel())
    for short, sim in (("cossim", "cosine"), ("euclidean", "euclidean"), ("manhattan", "manhattan"), ("dot", "dot")):
        for metric in ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap"):
            assert ours.last_metrics[short][metric] == pytest.approx(theirs[f"{sim}_{metric}"], rel=1e-5, abs=1e-5)
    assert main == pytest.approx(theirs["max_ap"], abs=1e-6)


def test_average_precision_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 2)  # with ties
    assert average_precision(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))


@pytest.mark.compat
def test_triplet_matches_sentence_transformers(pairs):
    s1, s2, _, _ = pairs
    s3 = [f"c{i}" for i in range(len(s1))]
    theirs = st_eval().TripletEvaluator(s1, s2, s3, similarity_fn_names=["cosine", "euclidean", "manhattan"])(
        FakeModel())
    ours = TripletEvaluator(s1, s2, s3)
    main = ours(FakeModel())
    for short, sim in (("cosinus", "cosine"), ("euclidean", "euclidean"), ("manhattan", "manhattan")):
        assert ours.last_metrics[f"accuracy_{short}"] == pytest.approx(theirs[f"{sim}_accuracy"], abs=1e-6)
    assert main == pytest.approx(theirs["max_accuracy"], abs=1e-6)


@pytest.mark.compat
def test_information_retrieval_matches_sentence_transformers():
    from sentence_transformers import util

    rng = np.random.default_rng(2)
    queries = {f"q{i}": f"q{i}" for i in range(12)}
    corpus = {f"d{i}": f"d{i}" for i in range(80)}
    relevant = {f"q{i}": {f"d{j}" for j in rng.choice(80, size=1 + i % 3, replace=False)} for i in range(12)}
    theirs = st_eval().InformationRetrievalEvaluator(queries, corpus, relevant,
                                                     score_functions={"cos_sim": util.cos_sim})(FakeModel())
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=30)  # chunks merge top-k
    ours(FakeModel())
    for key, value in theirs.items():
        name, metric = key[len("cos_sim_"):].split("@")
        assert ours.last_metrics["cos_sim"][f"{name}@k"][int(metric)] == pytest.approx(value, abs=1e-6), key


@pytest.mark.compat
@pytest.mark.parametrize("chunk", [50_000, 7])
def test_duplicate_documents_rank_by_corpus_id_as_in_sentence_transformers(chunk):
    """300 copies of one text (equal scores), ids inserted in reverse: ties rank by corpus id, any chunk size."""
    from sentence_transformers import util

    queries = {"q": "query"}
    corpus = {f"d{i:03d}": "same text" for i in reversed(range(300))}
    relevant = {"q": {"d007", "d150"}}
    theirs = st_eval().InformationRetrievalEvaluator(queries, corpus, relevant,
                                                     score_functions={"cos_sim": util.cos_sim})(FakeModel())
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=chunk)
    ours(FakeModel())
    assert theirs["cos_sim_mrr@10"] == pytest.approx(0.125)  # d007 is 8th: the ids' order, not the corpus's
    for key, value in theirs.items():
        name, metric = key[len("cos_sim_"):].split("@")
        assert ours.last_metrics["cos_sim"][f"{name}@k"][int(metric)] == pytest.approx(value, abs=1e-9), key


# -- behaviour ---------------------------------------------------------------------------------------------
def test_csv_files_as_sentence_transformers_2x_writes_them(pairs, tmp_path):
    s1, s2, scores, labels = pairs
    EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts")(FakeModel(), str(tmp_path), epoch=1, steps=5)
    EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts")(FakeModel(), str(tmp_path), epoch=2, steps=-1)
    rows = list(csv.reader(open(tmp_path / "similarity_evaluation_sts_results.csv")))
    assert rows[0] == ["epoch", "steps", "cosine_pearson", "cosine_spearman", "euclidean_pearson",
                       "euclidean_spearman", "manhattan_pearson", "manhattan_spearman", "dot_pearson", "dot_spearman"]
    assert [r[:2] for r in rows[1:]] == [["1", "5"], ["2", "-1"]]
    BinaryClassificationEvaluator(s1, s2, labels)(FakeModel(), str(tmp_path))
    header = next(csv.reader(open(tmp_path / "binary_classification_evaluation_results.csv")))
    assert header[2:9] == ["cossim_accuracy", "cossim_accuracy_threshold", "cossim_f1", "cossim_precision",
                           "cossim_recall", "cossim_f1_threshold", "cossim_ap"] and len(header) == 30
    TripletEvaluator(s1, s2, s2[::-1])(FakeModel(), str(tmp_path))
    header = next(csv.reader(open(tmp_path / "triplet_evaluation_results.csv")))
    assert header == ["epoch", "steps", "accuracy_cosinus", "accuracy_manhattan", "accuracy_euclidean"]
    ir = InformationRetrievalEvaluator({"q": "q"}, {"d1": "d1", "d2": "d2"}, {"q": {"d1"}}, name="x")
    ir(FakeModel(), str(tmp_path))
    header = next(csv.reader(open(tmp_path / "Information-Retrieval_evaluation_x_results.csv")))
    assert header[:4] == ["epoch", "steps", "cos_sim-Accuracy@1", "cos_sim-Accuracy@3"]
    assert header[-1] == "dot_score-MAP@100" and "cos_sim-Precision@1" in header and "cos_sim-NDCG@10" in header
    ir(FakeModel(), str(tmp_path))  # sentence-transformers writes this file's lines by hand: "\n", not "\r\n"
    data = (tmp_path / "Information-Retrieval_evaluation_x_results.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3
    assert (tmp_path / "triplet_evaluation_results.csv").read_bytes().endswith(b"\r\n")  # csv.writer's, as there


def test_main_similarity_and_from_input_examples(pairs):
    s1, s2, scores, _ = pairs
    examples = [InputExample(texts=[a, b], label=s) for a, b, s in zip(s1, s2, scores)]
    ev = EmbeddingSimilarityEvaluator.from_input_examples(examples, main_similarity=SimilarityFunction.COSINE)
    assert ev(FakeModel()) == pytest.approx(ev.last_metrics["cosine_spearman"])
    assert EmbeddingSimilarityEvaluator(s1, s2, scores, main_similarity="manhattan")(FakeModel()) == \
        pytest.approx(ev.last_metrics["manhattan_spearman"])
    with pytest.raises(ValueError, match="cosine"):
        SimilarityFunction.from_name("cosinus")
    with pytest.raises(ValueError, match="same length"):
        EmbeddingSimilarityEvaluator(s1, s2[:3], scores)
    with pytest.raises(ValueError, match="0 or 1"):
        BinaryClassificationEvaluator(s1[:2], s2[:2], [0, 2])
    with pytest.raises(ValueError, match="corpus is empty"):  # was a TypeError from inside the ranking
        InformationRetrievalEvaluator({"q": "the cat"}, {}, {"q": {"d"}})


@pytest.mark.parametrize("build, named", [
    (lambda: EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.5, 0.2], 16, None, None, "sts-dev"),
     "show_progress_bar='sts-dev'"),
    (lambda: EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.5, 0.2], 16, None, ["cosine"], "sts-dev"),
     "name=['cosine'], show_progress_bar='sts-dev'"),
    (lambda: TripletEvaluator(["a"], ["b"], ["c"], None, None, "dev"), "batch_size='dev'"),
    (lambda: TripletEvaluator(["a"], ["b"], ["c"], "cosine", 0.1, "dev"), "name=0.1, batch_size='dev'"),
])
def test_evaluators_built_in_the_newer_positional_order_are_refused_when_built(build, named):
    """sentence-transformers 3+ put similarity_fn_names sixth (EmbeddingSimilarityEvaluator) and margin fifth
    (TripletEvaluator); built in that order here, the evaluator failed only when called, after fit's first epoch."""
    with pytest.raises(InvalidInputError, match=re.escape(named) + ".*2.x's positional order"):
        build()
    EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.5, 0.2], 16, None, None, None, None)  # 2.x's defaults
    EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.5, 0.2], np.int64(8), show_progress_bar=1, write_csv=0)
    TripletEvaluator(["a"], ["b"], ["c"], None, None, np.int64(8), np.bool_(False), 0)  # truth values, as encode


def test_sequential_evaluator(pairs):
    s1, s2, scores, labels = pairs
    a = EmbeddingSimilarityEvaluator(s1, s2, scores)
    b = BinaryClassificationEvaluator(s1, s2, labels)
    assert SequentialEvaluator([a, b])(FakeModel()) == pytest.approx(b(FakeModel()))
    mean = SequentialEvaluator([a, b], main_score_function=np.mean)(FakeModel())
    assert mean == pytest.approx((a(FakeModel()) + b(FakeModel())) / 2)


def test_correlations_match_scipy_without_needing_it():
    """Pearson and Spearman (ties at their average rank) computed with numpy, as scipy.stats computes them."""
    from scipy.stats import pearsonr, rankdata, spearmanr

    from st_onnx.evaluation.embedding_similarity import average_ranks, pearson, spearman

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 300).astype(float)  # many ties, as STS gold scores have
    pred = gold + rng.normal(0, 2, 300)
    pred[:50] = np.round(pred[:50])
    assert np.array_equal(average_ranks(gold), rankdata(gold))
    assert pearson(gold, pred) == pytest.approx(pearsonr(gold, pred)[0], abs=1e-12)
    assert spearman(gold, pred) == pytest.approx(spearmanr(gold, pred)[0], abs=1e-12)
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    broken = pred.copy()
    broken[3] = np.nan  # a diverged model's score: no correlation, as scipy says (a rank for it would fake one)
    assert np.isnan(spearman(gold, broken)) and np.isnan(pearson(gold, broken))
    assert np.isnan(spearman(gold, np.full(300, np.nan)))


def test_duplicate_documents_in_one_chunk_tie_whatever_their_column():
    """A float32 matmul scores identical rows differently by column (190 of 200 such draws); the evaluator's
    scores must tie so that the corpus id, not the chunk layout, orders them."""
    from st_onnx.evaluation.information_retrieval import cos_sim, dot_score

    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.standard_normal((3, 384)).astype(np.float32)
        d = rng.standard_normal((7, 384)).astype(np.float32)
        d[[1, 4, 6]] = d[1]
        for fn in (cos_sim, dot_score):
            s = fn(q, d)
            assert (s[:, 1] == s[:, 4]).all() and (s[:, 1] == s[:, 6]).all()


def test_nan_embeddings_rank_last_in_retrieval():
    """A model that diverged to NaN is scored (NaN documents rank after every real score), not crashed on."""
    class NanModel(FakeModel):
        def encode(self, sentences, **kwargs):
            emb = FakeModel.encode(self, sentences)
            emb[[s.startswith("nan") for s in sentences]] = np.nan
            return emb

    queries = {"q": "query"}
    corpus = {f"d{i:02d}": ("nan" if i % 3 == 0 else "doc") + str(i) for i in range(30)}
    ev = InformationRetrievalEvaluator(queries, corpus, {"q": {"d00", "d01"}}, corpus_chunk_size=7)
    ev(NanModel())
    m = ev.last_metrics["cos_sim"]
    assert m["accuracy@k"][10] in (0.0, 1.0) and 0.0 <= m["map@k"][100] <= 1.0
    assert m["mrr@k"][10] == pytest.approx(reciprocal_rank_of("d01", corpus, NanModel()))
    all_nan = InformationRetrievalEvaluator(queries, {k: "nan" + k for k in corpus}, {"q": {"d05"}})
    all_nan(NanModel())
    assert all_nan.last_metrics["cos_sim"]["mrr@k"][10] == pytest.approx(1 / 6)  # ties: by corpus id


def reciprocal_rank_of(doc, corpus, model):
    """1/rank of ``doc`` (0 beyond 10) among the corpus's real (non-NaN) cosine scores to the query."""
    ids = list(corpus)
    emb = model.encode([corpus[i] for i in ids])
    q = model.encode(["query"])[0]
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    cos = np.where(np.isnan(cos), -np.inf, cos)
    rank = 1 + int(np.sum(cos > cos[ids.index(doc)]))
    return 1 / rank if rank <= 10 else 0.0


def test_evaluators_import_no_torch():
    code = ("import sys, st_onnx.evaluation; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'scipy')], "
            "'torch or scipy loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- SciFact (BEIR format) ---------------------------------------------------------------------------------
def load_scifact(folder: Path, corpus_file: str, qrels_file: str):
    opener = gzip.open if corpus_file.endswith(".gz") else open
    with opener(folder / corpus_file, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    corpus = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in docs}
    with open(folder / qrels_file, encoding="utf-8") as f:
        next(f)
        relevant: dict[str, set] = {}
        for line in f:
            q, c, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                relevant.setdefault(q, set()).add(c)
    queries_file = "scifact_queries.jsonl" if folder == DATA else "queries.jsonl"
    with open(folder / queries_file, encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in relevant}
    return queries, corpus, relevant


@pytest.mark.compat
def test_scifact_slice_with_tiny_model_scores_as_sentence_transformers(tiny_model_dir):
    """The repo's SciFact slice, a real model on each side: st-onnx's evaluator on st-onnx equals
    sentence-transformers' evaluator on sentence-transformers, metric by metric."""
    import sentence_transformers

    from st_onnx import SentenceTransformer

    queries, corpus, relevant = load_scifact(DATA, "scifact_corpus.jsonl", "scifact_qrels_test.tsv")
    assert len(queries) == 8 and len(corpus) == 40
    ev = InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=16)
    score = ev(SentenceTransformer(str(tiny_model_dir), device="cpu"))
    theirs = st_eval().InformationRetrievalEvaluator(queries, corpus, relevant, score_functions={
        "cos_sim": sentence_transformers.util.cos_sim, "dot_score": sentence_transformers.util.dot_score})(
        sentence_transformers.SentenceTransformer(str(tiny_model_dir), device="cpu"))
    assert len(theirs) == 2 * 15  # cos_sim_ndcg@10, dot_score_map@100, ...: 15 metrics per function
    for key, value in theirs.items():
        function = "_".join(key.split("_")[:2])
        name, at = key[len(function) + 1:].split("@")
        assert ev.last_metrics[function][f"{name}@k"][int(at)] == pytest.approx(value, abs=1e-6), key
    assert score == pytest.approx(max(ev.last_metrics[n]["map@k"][100] for n in ev.last_metrics))


# -- full evaluations with the real all-MiniLM-L6-v2 (published scores: ../shared/data/REFERENCE_SCORES.md) ---
def stsb_evaluator(split: str = "test") -> EmbeddingSimilarityEvaluator:
    rows = read_stsb(split)
    return EmbeddingSimilarityEvaluator([a for a, _, _ in rows], [b for _, b, _ in rows],
                                        [s / 5 for _, _, s in rows], name=f"sts-{split}",
                                        main_similarity=SimilarityFunction.COSINE)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_stsb_test_score_of_all_minilm(minilm_dir, backend, tmp_path):
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu", backend=backend)
    start = time.perf_counter()
    score = stsb_evaluator("test")(model, output_path=str(tmp_path))
    print(f"STSb test cosine Spearman ({backend}): {score:.6f} in {time.perf_counter() - start:.1f} s")
    assert score == pytest.approx(0.8203, abs=0.001)
    assert (tmp_path / "similarity_evaluation_sts-test_results.csv").is_file()


@pytest.mark.compat
def test_sentence_transformers_similarity_enum_and_dot_triplets(pairs):
    """sentence-transformers' own SimilarityFunction enum selects the same function here; a triplet evaluator
    asked for dot product reports dot accuracy (it was ignored: the best of the three distances came back)."""
    from sentence_transformers import SimilarityFunction as TheirFunction

    s1, s2, scores, _ = pairs
    assert EmbeddingSimilarityEvaluator(s1, s2, scores, main_similarity=TheirFunction.MANHATTAN)(FakeModel()) == \
        EmbeddingSimilarityEvaluator(s1, s2, scores, main_similarity="manhattan")(FakeModel())
    s3 = [f"c{i}" for i in range(len(s1))]
    theirs = st_eval().TripletEvaluator(s1, s2, s3, similarity_fn_names=["dot"])(FakeModel())
    ours = TripletEvaluator(s1, s2, s3, main_distance_function=TheirFunction.DOT_PRODUCT)
    assert ours(FakeModel()) == pytest.approx(theirs["dot_accuracy"], abs=1e-6)
    assert ours.last_metrics["accuracy_dot"] == pytest.approx(theirs["dot_accuracy"], abs=1e-6)


def test_information_retrieval_arguments_as_users_write_them():
    """A relevant id given as a string is that id (set('d1') was {'d', '1'}: every score 0); 'cosine' or the
    enum name the default score functions; cut-offs and chunk sizes that cannot work are refused by name."""
    queries, corpus = {"q1": "q1", "q2": "q2"}, {"d1": "d1", "d2": "d2", "d3": "d3"}
    as_sets = InformationRetrievalEvaluator(queries, corpus, {"q1": {"d1"}, "q2": {"d2"}})(FakeModel())
    as_strings = InformationRetrievalEvaluator(queries, corpus, {"q1": "d1", "q2": "d2"})
    assert as_strings(FakeModel()) == as_sets
    assert as_strings.relevant_docs == {"q1": {"d1"}, "q2": {"d2"}}
    for name in ("cosine", SimilarityFunction.COSINE, "cos_sim"):
        assert InformationRetrievalEvaluator(queries, corpus, {"q1": "d1"},
                                             main_score_function=name).main_score_function == "cos_sim"
    for kwargs, match in [({"map_at_k": [0]}, "map_at_k must be a positive int; got 0"),
                          ({"ndcg_at_k": []}, r"ndcg_at_k must be a non-empty list of positive ints such as \[10\]"),
                          ({"mrr_at_k": [2.0]}, "mrr_at_k must be a positive int; got 2.0"),
                          ({"corpus_chunk_size": 0}, "corpus_chunk_size must be a positive int; got 0"),
                          ({"main_score_function": "euclidean"}, "default score functions are cosine")]:
        with pytest.raises(InvalidInputError, match=match):
            InformationRetrievalEvaluator(queries, corpus, {"q1": "d1"}, **kwargs)


class RecordingModel(FakeModel):
    """FakeModel that records encode's keyword arguments and truncates as encode does."""

    def __init__(self):
        self.calls = []

    def encode(self, sentences, **kwargs):
        self.calls.append(kwargs)
        out = FakeModel.encode(self, sentences)
        return out[:, :kwargs["truncate_dim"]] if kwargs.get("truncate_dim") else out


@pytest.mark.parametrize("make", [
    lambda: EmbeddingSimilarityEvaluator(["a", "b", "c"], ["d", "e", "f"], [0.1, 0.5, 0.9], truncate_dim=4),
    lambda: BinaryClassificationEvaluator(["a", "b", "c"], ["d", "e", "f"], [0, 1, 1], truncate_dim=4),
    lambda: TripletEvaluator(["a", "b"], ["c", "d"], ["e", "f"], truncate_dim=4),
    lambda: InformationRetrievalEvaluator({"q": "a"}, {"d1": "x", "d2": "y"}, {"q": {"d1"}}, truncate_dim=4),
], ids=["similarity", "binary", "triplet", "retrieval"])
def test_evaluators_take_truncate_dim_as_sentence_transformers_2_7(make):
    model = RecordingModel()
    make()(model)
    assert model.calls and all(call["truncate_dim"] == 4 for call in model.calls)
    untruncated = RecordingModel()
    EmbeddingSimilarityEvaluator(["a", "c"], ["b", "d"], [0.5, 0.7])(untruncated)  # not set: not passed
    assert all("truncate_dim" not in call for call in untruncated.calls)


@pytest.mark.compat
@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_embedding_similarity_precision_as_sentence_transformers(minilm_dir, precision, tmp_path):
    """all-MiniLM-L6-v2, not the tiny model: texts its small vocabulary embeds alike tie, and sentence-transformers'
    float32 scores break ties by rounding, where st-onnx's float64 ones keep them."""
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    s1, s2, scores = (list(column) for column in zip(*read_stsb("test")[:100]))
    theirs = st_eval().EmbeddingSimilarityEvaluator(s1, s2, scores, precision=precision, truncate_dim=128,
                                                    similarity_fn_names=ALL_SIMS)(model)
    ours = EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts", precision=precision, truncate_dim=128)
    ours(model, str(tmp_path))
    for sim in ALL_SIMS:
        assert ours.last_metrics[f"{sim}_spearman"] == pytest.approx(theirs[f"spearman_{sim}"], abs=1e-6), sim
    assert (tmp_path / f"similarity_evaluation_sts_{precision}_results.csv").is_file()
    with pytest.raises(InvalidInputError, match="float16"):
        EmbeddingSimilarityEvaluator(s1, s2, scores, precision="float16")


def test_custom_retrieval_score_functions_get_tensors_as_in_sentence_transformers():
    torch = pytest.importorskip("torch")

    def cosine(a, b):  # typed Callable[[Tensor, Tensor], Tensor] there: .norm / torch.mm on numpy failed
        return torch.mm(torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1).T)

    queries, corpus = {"q1": "a", "q2": "b"}, {"d1": "x", "d2": "y", "d3": "z"}
    relevant = {"q1": {"d1"}, "q2": {"d3"}}
    custom = InformationRetrievalEvaluator(queries, corpus, relevant, score_functions={"c": cosine})
    from st_onnx.evaluation.information_retrieval import cos_sim

    builtin = InformationRetrievalEvaluator(queries, corpus, relevant, score_functions={"c": cos_sim})
    assert custom(FakeModel()) == pytest.approx(builtin(FakeModel()))
    assert custom.last_metrics["c"]["ndcg@k"][10] == pytest.approx(builtin.last_metrics["c"]["ndcg@k"][10])


def test_binary_classification_without_pairs_is_refused():
    with pytest.raises(InvalidInputError, match="at least one pair; got none"):
        BinaryClassificationEvaluator([], [], [])
