"""TextTokenizer (tokenizers only) feeds the graph what transformers feeds the torch module; batching limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import (SENTENCES, WORDS, _save_encoder, copy_minilm, make_tiny_encoder, make_tiny_model, minilm_path,
                     stsb_sentences)
from st_onnx.encode.batching import budget_batches, longest_first
from st_onnx.encode.tokenize import TextTokenizer
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError, ParityError


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


def _edit_json(path, **changes):
    import json

    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **changes}))


def _minilm_copy(tmp_path):
    return copy_minilm(tmp_path / "minilm")


CASED = ["THE Café NAÏVE résumé", "Two Dogs RUN", "a [MASK] here", "北京 Ünïcödé"]


@pytest.mark.parametrize("where", ["tokenizer_config.json", "tokenizer_args"])
def test_bert_normalizer_settings_of_the_tokenizer_config_win_as_in_transformers(tmp_path, where):
    """transformers builds a BERT tokenizer's normalizer from tokenizer_config.json (and the module's saved
    tokenizer_args), whatever tokenizer.json's says: with do_lower_case and strip_accents off there, cased
    and accented texts get other ids, on both backends alike."""
    from st_onnx.layout import SBERT_CONFIG_JSON

    folder = _minilm_copy(tmp_path)
    settings = {"do_lower_case": False, "strip_accents": False}
    if where == "tokenizer_config.json":
        _edit_json(folder / "tokenizer_config.json", **settings)
    else:
        _edit_json(folder / SBERT_CONFIG_JSON, tokenizer_args=settings)
    from st_onnx import SentenceTransformer

    want = SentenceTransformer(str(folder), device="cpu").tokenize(CASED)["input_ids"].numpy()
    got = TextTokenizer.from_folder(folder)(CASED)["input_ids"]
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, TextTokenizer.from_folder(minilm_path())(CASED)["input_ids"])


def test_truncation_side_of_the_tokenizer_config_is_followed(tmp_path):
    from st_onnx import SentenceTransformer
    from st_onnx.errors import ModelFolderError

    folder = _minilm_copy(tmp_path)
    _edit_json(folder / "tokenizer_config.json", truncation_side="left")
    _edit_json(folder / "sentence_bert_config.json", max_seq_length=8)
    texts = ["one two three four five six seven eight nine ten eleven", "short"]
    want = SentenceTransformer(str(folder), device="cpu").tokenize(texts)["input_ids"].numpy()
    tokenizer = TextTokenizer.from_folder(folder)
    np.testing.assert_array_equal(tokenizer(texts)["input_ids"], want)
    assert tokenizer.truncation_side == "left" and want[0, -2] == tokenizer.tokenizer.token_to_id("eleven")
    _edit_json(folder / "tokenizer_config.json", truncation_side="middle")
    with pytest.raises(ModelFolderError, match="truncation_side 'middle'; allowed: 'right' or 'left'"):
        TextTokenizer.from_folder(folder)


def test_an_export_is_refused_when_the_runtime_tokenizer_would_feed_other_ids(tmp_path):
    """A tokenizer setting the runtime does not rebuild (here another [CLS] token) is caught before the export:
    the graph would be right and every embedding off."""
    from st_onnx import SentenceTransformer, layout
    from st_onnx.errors import ParityError

    folder = _minilm_copy(tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        _edit_json(folder / name, cls_token="[MASK]")
    with pytest.raises(ParityError, match=r"other token ids than transformers' for 'A man is playing a guitar.'"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert not layout.fused_graph_path(folder, "fp32").exists()


def test_a_generic_tokenizer_class_keeps_the_normalizer_of_its_tokenizer_json(tiny_model_copy):
    """Only BERT-style classes rebuild their normalizer from the config: the tiny model's generic fast tokenizer
    lowers as its tokenizer.json says, whatever tokenizer_config.json's do_lower_case, in transformers and here."""
    from st_onnx import SentenceTransformer

    _edit_json(tiny_model_copy / "tokenizer_config.json", do_lower_case=False)
    texts = ["THE Big CAT", "Dog"]
    want = SentenceTransformer(str(tiny_model_copy), device="cpu").tokenize(texts)["input_ids"].numpy()
    np.testing.assert_array_equal(TextTokenizer.from_folder(tiny_model_copy)(texts)["input_ids"], want)
    _edit_json(tiny_model_copy / "tokenizer_config.json", tokenizer_class="BertTokenizer")
    want = SentenceTransformer(str(tiny_model_copy), device="cpu").tokenize(texts)["input_ids"].numpy()
    assert want[0, 1] == 1  # "THE" unlowered is [UNK] in the tiny vocabulary
    np.testing.assert_array_equal(TextTokenizer.from_folder(tiny_model_copy)(texts)["input_ids"], want)


def test_the_bundle_tokenizer_follows_the_tokenizer_settings(tmp_path):
    """export/make_bundle.py writes tokenizer.json as the model tokenizes: config's normalizer settings and
    truncation side included (plain tokenizers reads the bundle; no tokenizer_config.json travels)."""
    import importlib.util
    from pathlib import Path

    from st_onnx import SentenceTransformer

    path = Path(__file__).resolve().parents[1] / "export" / "make_bundle.py"
    spec = importlib.util.spec_from_file_location("make_bundle", path)
    make_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_bundle)
    folder = _minilm_copy(tmp_path)
    _edit_json(folder / "tokenizer_config.json", do_lower_case=False, truncation_side="left")
    _edit_json(folder / "sentence_bert_config.json", max_seq_length=6)
    texts = CASED + ["one two three four five six seven eight nine ten"]
    want = SentenceTransformer(str(folder), device="cpu").tokenize(texts)
    tok, pad_id = make_bundle.bundle_tokenizer(folder, 6, do_lower_case=False)
    got = np.array([e.ids for e in tok.encode_batch(texts)])
    np.testing.assert_array_equal(got, want["input_ids"].numpy())


@pytest.fixture(params=["tiny", "minilm"])
def untyped_folder(request, tiny_model_dir, tmp_path):
    """A BERT folder whose tokenizer_config.json names neither tokenizer_class nor model_input_names (as
    bert-base-uncased's): transformers picks BertTokenizer from config.json's model_type, with token_type_ids."""
    dest = tmp_path / "model"
    if request.param == "tiny":
        shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns("st_onnx"))
    else:
        copy_minilm(dest)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    for key in ("tokenizer_class", "model_input_names"):
        config.pop(key, None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def test_pairs_get_token_type_ids_where_the_model_type_names_the_tokenizer(untyped_folder):
    """The graph took token_type_ids (the exporter asks transformers) while the runtime fed none: the second text
    of a pair got type 0, not 1 (maxdiff 0.016 on all-MiniLM-L6-v2), and tokenize() left them out."""
    from st_onnx import SentenceTransformer

    pairs = [(SENTENCES[i], SENTENCES[i + 1]) for i in range(len(SENTENCES) - 1)]
    torch_model = SentenceTransformer(str(untyped_folder), device="cpu")
    assert "token_type_ids" in torch_model.tokenize(pairs[:1])
    onnx_model = SentenceTransformer(str(untyped_folder), backend="onnx", device="cpu")
    assert "token_type_ids" in onnx_model._backend.manifest["inputs"]
    features = onnx_model.tokenize(pairs[:1])
    assert "token_type_ids" in features and features["token_type_ids"].max() == 1
    np.testing.assert_allclose(onnx_model.encode(pairs), torch_model.encode(pairs), atol=1e-5)
    assert TextTokenizer.from_folder(untyped_folder)(pairs[:1])["token_type_ids"].max() == 1  # no manifest too


def _ids(features):
    return [[i for i, m in zip(row, mask) if m] for row, mask in
            zip(features["input_ids"].tolist(), features["attention_mask"].tolist())]


def _edit_tokenizer_json(folder: Path, fn) -> None:
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    fn(spec)
    path.write_text(json.dumps(spec))


def _legacy_xlmr(folder: Path) -> Path:
    """A tiny XLM-R whose tokenizer.json is in the format transformers 4 wrote for XLM-RoBERTa (bare Metaspace
    pre-tokenizer); transformers 5's XLMRobertaTokenizer rebuilds it with WhitespaceSplit in front."""
    import transformers as tf
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    raw = folder.parent / (folder.name + "-hf")
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -5.0) for w in WORDS] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz.,!?"]
    vocab += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tf.XLMRobertaTokenizer(tokenizer_object=tok, model_max_length=128).save_pretrained(raw)
    legacy = tok.to_str()
    config = tf.XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=130, pad_token_id=1,
                                 type_vocab_size=1)
    _save_encoder(folder, raw, config, "mean", 0)
    (folder / "tokenizer.json").write_text(legacy)  # the file as a Hub model written by transformers 4 carries it
    return folder


def _distilbert_no_clean_text(folder: Path) -> Path:
    make_tiny_encoder(folder, "distilbert")
    _edit_tokenizer_json(folder, lambda s: s["normalizer"].update(clean_text=False))
    return folder


def _roberta_nfc(folder: Path) -> Path:
    make_tiny_encoder(folder, "roberta")
    _edit_tokenizer_json(folder, lambda s: s.__setitem__("normalizer", {"type": "NFC"}))
    return folder


# texts the export probes do not exercise: trailing whitespace, control/zero-width chars, NFD accents
PROBES = ["the cat ", "the cat\n", "\x00the cat", "a\u200b dog", "cafe\u0301", "the dog  "]


@pytest.mark.parametrize("build", [_legacy_xlmr, _distilbert_no_clean_text, _roberta_nfc])
def test_a_tokenizer_json_transformers_rebuilds_otherwise_is_refused_at_export(tmp_path, build):
    """transformers 5 rebuilds the normalizer, pre-tokenizer and model options of its tokenizer classes from
    tokenizer_config.json; where tokenizer.json says otherwise, the onnx backend fed other ids than the torch backend
    (cosine 0.24-0.97) for texts the export's probes did not hold. Found by a fuzz of 8,800 strings."""
    folder = build(tmp_path / "m")
    torch_model = SentenceTransformer(str(folder), device="cpu")
    runtime_ids = [e.ids.tolist() for e in TextTokenizer.from_folder(folder).encode(PROBES)]
    assert runtime_ids != _ids(torch_model.tokenize(PROBES))  # the folder does differ
    with pytest.raises(ParityError, match="gives other token ids than transformers'"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu")


def test_prompt_length_excludes_a_trailing_special_token_typed_in_the_prompt(tmp_path):
    """Torch (and sentence-transformers 6.2) drop a prompt's last token from prompt_length when it is a special id,
    whether the post-processor added it or the prompt spells it."""
    folder = make_tiny_encoder(tmp_path / "q", "qwen3")
    _edit_tokenizer_json(folder, lambda s: s.__setitem__(
        "post_processor", {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}))
    torch_model = SentenceTransformer(str(folder), device="cpu")
    runtime = TextTokenizer.from_folder(folder)
    for prompt in ("query <|endoftext|>", "<|endoftext|>", "query: "):
        assert runtime.prompt_length(prompt) == torch_model[0].prompt_length(prompt), prompt


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tokenize_a_mixed_batch_does_not_split_a_string_into_characters(tmp_path, backend):
    """[pair, str]: the str was read as (str[0], str[1]), i.e. ('a', ' ') for 'a cat', silently."""
    model = SentenceTransformer(str(make_tiny_model(tmp_path / "t")), backend=backend, device="cpu")
    with pytest.raises(InvalidInputError, match="the inputs mix pair and str; allowed: one kind per call"):
        model.tokenize([("the dog", "a cat"), "a cat"])
    with pytest.raises(InvalidInputError, match="mix dict and str"):
        model.tokenize([{"text": "a cat"}, "a dog"])
