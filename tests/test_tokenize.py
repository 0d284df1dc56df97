"""TextTokenizer (tokenizers only) feeds the graph what transformers feeds the torch module; batching limits."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SENTENCES, minilm_path, stsb_sentences
from st_onnx.encode.batching import budget_batches, longest_first
from st_onnx.encode.tokenize import TextTokenizer
from st_onnx.errors import InvalidInputError


def hf_features(folder, columns, max_length):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(*columns, padding=True, truncation="longest_first", max_length=max_length, return_tensors="np")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return TextTokenizer.from_folder(minilm_path())


def test_fixed_padding_is_switched_off(minilm_tokenizer):
    assert minilm_tokenizer.max_seq_length == 256
    features = minilm_tokenizer(["a short text", "hi"])
    assert features["input_ids"].shape == (2, 5)  # not the 128 the tokenizer.json pads to
    assert features["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]


def test_same_features_as_transformers(minilm_tokenizer):
    texts = stsb_sentences(300) + SENTENCES + ["  padded with spaces  ", "word " * 400]
    ours = minilm_tokenizer(texts)
    ref = hf_features(minilm_path(), [texts], 256)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(ours[name], ref[name]), name
    assert ours["input_ids"].shape[1] == 256


def test_pairs_and_dicts(minilm_tokenizer):
    texts = stsb_sentences(40)
    pairs = list(zip(texts[::2], texts[1::2]))
    ours = minilm_tokenizer(pairs)
    ref = hf_features(minilm_path(), [[a for a, _ in pairs], [b for _, b in pairs]], 256)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(ours[name], ref[name]), name
    assert np.array_equal(minilm_tokenizer([{"q": t} for t in texts])["input_ids"], minilm_tokenizer(texts)["input_ids"])


def test_max_seq_length_and_lower_case(tiny_model_dir):
    tok = TextTokenizer.from_folder(tiny_model_dir)
    assert tok.max_seq_length == 64
    tok.max_seq_length = 8
    assert tok(["the " * 50])["input_ids"].shape == (1, 8)
    with pytest.raises(InvalidInputError, match="max_seq_length"):
        tok.max_seq_length = 0
    from tokenizers import normalizers

    tok.tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)  # cased: lowering has work to do
    assert tok(["THE CAT"])["input_ids"].tolist() != tok(["the cat"])["input_ids"].tolist()
    lower = TextTokenizer(tok.tokenizer, 16, do_lower_case=True)
    assert lower(["THE CAT"])["input_ids"].tolist() == tok(["the cat"])["input_ids"].tolist()
    assert lower(["[MASK]"])["input_ids"].tolist() == [[2, 4, 3]]  # special tokens matched before lowering
    assert tok.tokenizer.normalizer.__getstate__() != lower.tokenizer.normalizer.__getstate__()  # given one kept


def test_tokenizer_setter_accepts_a_transformers_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = TextTokenizer.from_folder(tiny_model_dir)
    tok.tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tok(["the cat", "a"])["input_ids"].shape == (2, 4)  # fixed padding switched off again
    with pytest.raises(InvalidInputError, match="tokenizer"):
        tok.tokenizer = "bert"


def test_budget_batches_respect_both_limits():
    lengths = sorted([3, 250, 40, 40, 7, 128, 1, 90] * 20, reverse=True)
    slices = list(budget_batches(lengths, batch_size=16, token_budget=1000))
    assert slices[0][0] == 0 and slices[-1][1] == len(lengths)
    assert all(a == b for (_, a), (b, _) in zip(slices, slices[1:]))
    for start, stop in slices:
        assert stop - start <= 16
        assert stop - start == 1 or (stop - start) * lengths[start] <= 1000
    assert list(budget_batches([5000, 4], batch_size=8, token_budget=100)) == [(0, 1), (1, 2)]
    assert longest_first([1, 3, 3, 2]).tolist() == [1, 2, 3, 0]
