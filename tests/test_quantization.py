"""Embedding quantization (encode(precision=...), st_onnx.quantization) against sentence-transformers' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SENTENCES, stsb_sentences
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError
from st_onnx.quantization import PRECISIONS, quantize_embeddings

st = pytest.importorskip("sentence_transformers")
from sentence_transformers.util.quantization import quantize_embeddings as reference_quantize  # noqa: E402

EMB = np.random.default_rng(0).normal(size=(300, 37)).astype(np.float32)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_same_codes_as_sentence_transformers(precision):
    wide = EMB.astype(np.float64)  # float64 tensors are quantized in float64, as arrays (6/1000 codes differed)
    inputs = [EMB, torch.from_numpy(EMB), wide, torch.from_numpy(wide)] + (
        [] if precision.endswith("int8") else [EMB[0]])  # one vector cannot calibrate
    for given in inputs:
        got, want = quantize_embeddings(given, precision), reference_quantize(given, precision)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    if precision.endswith("int8"):
        ranges = np.stack([EMB.min(axis=0), EMB.max(axis=0)])
        assert np.array_equal(quantize_embeddings(EMB[:1], precision, ranges=ranges),
                              reference_quantize(EMB[:1], precision, ranges=ranges))
        assert np.array_equal(quantize_embeddings(EMB, precision, calibration_embeddings=EMB[:50]),
                              reference_quantize(EMB, precision, calibration_embeddings=EMB[:50]))


def test_widths_and_empty_inputs():
    assert quantize_embeddings(EMB, "binary").shape == (300, 5)  # ceil(37 / 8) bytes
    for precision, dtype, width in (("int8", np.int8, 37), ("ubinary", np.uint8, 5), ("uint8", np.uint8, 37)):
        out = quantize_embeddings(np.zeros((0, 37), np.float32), precision)
        assert out.shape == (0, width) and out.dtype == dtype


def test_bad_quantization_input_is_refused():
    with pytest.raises(InvalidInputError, match="precision 'int4' is not supported; allowed: float32, int8"):
        quantize_embeddings(EMB, "int4")
    with pytest.raises(InvalidInputError, match="int8 buckets cannot be computed from 1 embedding"):
        quantize_embeddings(EMB[:1], "int8")
    with pytest.raises(InvalidInputError, match=r"ranges must have shape \(2, 37\)"):
        quantize_embeddings(EMB, "uint8", ranges=np.zeros((2, 5)))
    with pytest.raises(InvalidInputError, match="must be floats"):
        quantize_embeddings(EMB.astype(np.int8), "binary")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("precision", ["int8", "ubinary", "binary"])
def test_encode_precision_matches_sentence_transformers(tiny_model_copy, backend, precision):
    texts = stsb_sentences(120)
    ours = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    theirs = st.SentenceTransformer(str(tiny_model_copy), device="cpu")
    got = ours.encode(texts, precision=precision, normalize_embeddings=True)
    want = theirs.encode(texts, precision=precision, normalize_embeddings=True)
    assert got.dtype == want.dtype and got.shape == want.shape
    if backend == "torch":
        assert np.array_equal(got, want)
    else:  # the same codes but where a value sits within ~1e-7 of a bucket edge (measured: 0.03% of int8 codes)
        assert (got != want).mean() < 0.002 and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    tensor = ours.encode(texts, precision=precision, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == want.shape


def test_encode_precision_refusals(tiny_model_copy):
    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    with pytest.raises(InvalidInputError, match="precision 'int4' is not supported"):
        model.encode(SENTENCES, precision="int4")
    with pytest.raises(InvalidInputError, match="quantizes sentence or token embeddings; got output_value None"):
        model.encode(SENTENCES, precision="binary", output_value=None)  # sentence-transformers fails on it too
    with pytest.raises(InvalidInputError, match="cannot be computed from 1 embedding"):
        model.encode("one text", precision="int8")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("lengths", [(4, 4, 4), (3, 5, 0, 2)])
def test_a_list_of_token_embedding_matrices_as_sentence_transformers(precision, lengths):
    """sentence-transformers 6: one (n_i, dim) matrix per text gives a list, in one set of int8/uint8 buckets for
    all of them. Before: ragged lengths raised numpy's error; equal lengths gave one 3-D array bucketed per token
    position (156 of 192 int8 codes differed)."""
    matrices = [EMB[:n] * (i + 1) for i, n in enumerate(lengths)]
    got, want = quantize_embeddings(matrices, precision), reference_quantize(matrices, precision)
    assert isinstance(got, list) and len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)
    assert quantize_embeddings([], precision) == [] == reference_quantize([], precision)
    if precision.endswith("int8"):
        given = quantize_embeddings(matrices, precision, calibration_embeddings=EMB)
        assert all(np.array_equal(g, w) for g, w in
                   zip(given, reference_quantize(matrices, precision, calibration_embeddings=EMB)))
    with pytest.raises(InvalidInputError, match=r"matrices of one dim; got shapes \[\(2, 37\), \(2, 5\)\]"):
        quantize_embeddings([EMB[:2], EMB[:2, :5]], precision)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_encode_quantizes_token_embeddings_as_sentence_transformers(tiny_model_copy, backend):
    """encode(output_value='token_embeddings', precision=...) gives one numpy array per text, every text in the
    same buckets, as sentence-transformers 6 (it was refused)."""
    ours = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    theirs = st.SentenceTransformer(str(tiny_model_copy), device="cpu")
    for precision in ("int8", "ubinary"):
        for kwargs in ({}, {"convert_to_numpy": False}):
            got = ours.encode(SENTENCES, output_value="token_embeddings", precision=precision, **kwargs)
            want = theirs.encode(SENTENCES, output_value="token_embeddings", precision=precision, **kwargs)
            assert isinstance(got, list) and len(got) == len(want)
            assert all(isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
                       for g, w in zip(got, want))
            # the codes of our own float token embeddings in shared buckets (the onnx graph's floats differ ~1e-7)
            floats = [np.asarray(t) for t in ours.encode(SENTENCES, output_value="token_embeddings",
                                                         convert_to_numpy=True)]
            assert all(np.array_equal(g, q) for g, q in zip(got, reference_quantize(floats, precision)))
            if backend == "torch":
                assert all(np.array_equal(g, w) for g, w in zip(got, want))
    one = ours.encode(SENTENCES[0], output_value="token_embeddings", precision="binary")
    assert isinstance(one, np.ndarray) and one.dtype == np.int8 and one.shape == (len(got[0]), 4)
    for kwargs in ({"convert_to_tensor": True}, {"convert_to_tensor": True, "convert_to_numpy": False}):
        got = ours.encode(SENTENCES, output_value="token_embeddings", precision="int8", **kwargs)
        want = theirs.encode(SENTENCES, output_value="token_embeddings", precision="int8", **kwargs)
        assert [type(g) for g in got] == [type(w) for w in want] == [np.ndarray] * len(SENTENCES)  # were tensors


def test_encode_with_a_pool_is_encode_multi_process(tiny_model_copy):
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    texts = SENTENCES * 5
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        got = model.encode(texts, pool=pool, chunk_size=7, normalize_embeddings=True, truncate_dim=16)
        packed = model.encode(texts, pool=pool, precision="ubinary")
        packed_mp = model.encode_multi_process(texts, pool, precision="ubinary")
        single = model.encode(texts[0], pool=pool)
        tokens = model.encode(texts[0], pool=pool, output_value="token_embeddings")  # one text: one array
    np.testing.assert_allclose(tokens, model.encode(texts[0], output_value="token_embeddings"), atol=1e-5)
    np.testing.assert_allclose(got, model.encode(texts, normalize_embeddings=True, truncate_dim=16), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(packed, model.encode(texts, precision="ubinary")) and np.array_equal(packed_mp, packed)
    assert single.shape == (32,)


def test_calibration_embeddings_that_cannot_give_buckets_are_refused():
    emb = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    with pytest.raises(InvalidInputError, match=r"from 1 calibration embedding\(s\)"):
        quantize_embeddings(emb, "int8", calibration_embeddings=emb[:1])  # was: every value -128
    with pytest.raises(InvalidInputError, match=r"matrix of 8-dimensional embeddings .* got shape \(20, 4\)"):
        quantize_embeddings(emb, "int8", calibration_embeddings=emb[:, :4])


def test_binary_precisions_put_exact_zeros_in_the_0_bit_as_sentence_transformers():
    """Exact zeros are common after a ReLU Dense; a Hamming index built with sentence-transformers must agree."""
    emb = np.array([[0.0, 1.0, -1.0, 0.0, 0.5, 0.0, -0.5, 0.0], [0.0] * 8], dtype=np.float32)
    for precision in ("binary", "ubinary"):
        np.testing.assert_array_equal(quantize_embeddings(emb, precision), reference_quantize(emb, precision))
