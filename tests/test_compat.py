"""The torch backend against sentence-transformers itself: same embeddings, same return types, same folders."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SENTENCES, make_tiny_model, minilm_path, read_stsb, stsb_sentences
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError

pytestmark = pytest.mark.compat
st = pytest.importorskip("sentence_transformers")


def _reference(path):
    return st.SentenceTransformer(str(path), device="cpu")


def _assert_same(ours, theirs, atol=1e-5):
    """Same type, shape and values, recursively."""
    if isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    elif isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            _assert_same(o, t, atol)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict)
        for key in ("sentence_embedding", "token_embeddings", "input_ids", "attention_mask"):
            _assert_same(ours[key], theirs[key], atol)
    else:
        assert ours == theirs


@pytest.fixture(scope="module")
def minilm_pair():
    return SentenceTransformer(str(minilm_path()), device="cpu"), _reference(minilm_path())


def test_minilm_1000_stsb_sentences_match(minilm_pair):
    ours, theirs = minilm_pair
    sentences = stsb_sentences(1000)
    assert len(sentences) == 1000
    a, b = ours.encode(sentences), theirs.encode(sentences)
    assert a.shape == (1000, 384)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "output_value,convert_to_numpy,convert_to_tensor,normalize",
    list(itertools.product(["sentence_embedding", "token_embeddings", None], [True, False], [False, True],
                           [False, True])),
)
def test_every_encode_combination_matches(minilm_pair, output_value, convert_to_numpy, convert_to_tensor,
                                          normalize):
    ours, theirs = minilm_pair
    sentences = stsb_sentences(40)
    kwargs = dict(output_value=output_value, convert_to_numpy=convert_to_numpy,
                  convert_to_tensor=convert_to_tensor, normalize_embeddings=normalize, batch_size=16)
    _assert_same(ours.encode(sentences, **kwargs), theirs.encode(sentences, **kwargs))
    _assert_same(ours.encode(sentences[3], **kwargs), theirs.encode(sentences[3], **kwargs))


def test_folder_saved_by_st_onnx_loads_in_sentence_transformers(minilm_pair, tmp_path):
    ours, _ = minilm_pair
    ours.save(tmp_path / "saved")
    sentences = stsb_sentences(100)
    np.testing.assert_allclose(_reference(tmp_path / "saved").encode(sentences), ours.encode(sentences),
                               atol=1e-6, rtol=0)


def test_folder_saved_by_sentence_transformers_loads_in_st_onnx(minilm_pair, tmp_path):
    _, theirs = minilm_pair
    theirs.save(str(tmp_path / "st6"))
    loaded = SentenceTransformer(str(tmp_path / "st6"), device="cpu")
    assert loaded.max_seq_length == theirs.max_seq_length == 256
    sentences = stsb_sentences(100)
    np.testing.assert_allclose(loaded.encode(sentences), theirs.encode(sentences), atol=1e-6, rtol=0)


POOLINGS = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ("cls", "mean", "max")]


@pytest.mark.parametrize("pooling", POOLINGS, ids=str)
@pytest.mark.parametrize("dense,normalize", [(None, False), (None, True), (24, False), (24, True)])
def test_every_pooling_dense_normalize_matches_on_tiny_model(tmp_path, pooling, dense, normalize):
    folder = make_tiny_model(tmp_path / "m", pooling=pooling, dense=dense, normalize=normalize)
    ours = SentenceTransformer(str(folder), device="cpu")
    theirs = _reference(folder)
    _assert_same(ours.encode(SENTENCES, batch_size=3), theirs.encode(SENTENCES, batch_size=3))
    theirs_dim = getattr(theirs, "get_embedding_dimension", None) or theirs.get_sentence_embedding_dimension  # renamed in 6
    assert ours.get_sentence_embedding_dimension() == theirs_dim()


def test_plain_transformers_folder_gets_mean_pooling_like_sentence_transformers(tiny_model_dir, tmp_path, caplog):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        (plain / name).unlink()
    shutil.rmtree(plain / "1_Pooling")
    with caplog.at_level("INFO", logger="st_onnx"):
        ours = SentenceTransformer(str(plain), device="cpu")
    assert "mean pooling" in caplog.text
    _assert_same(ours.encode(SENTENCES), _reference(plain).encode(SENTENCES))


@pytest.mark.parametrize("is_causal", [None, False])
def test_a_plain_causal_lm_folder_gets_last_token_pooling_like_sentence_transformers(tmp_path, caplog, is_causal):
    """sentence-transformers 6 pools a plain ``*ForCausalLM`` folder on its last token (the only one that has
    seen the whole text), unless its config says ``is_causal: false``; mean pooling differed by cosine 0.3-0.6."""
    from helpers import make_tiny_encoder

    plain = make_tiny_encoder(tmp_path / "decoder", "qwen3")
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "README.md"):
        (plain / name).unlink(missing_ok=True)
    for module in ("1_Pooling", "2_Normalize"):
        shutil.rmtree(plain / module, ignore_errors=True)
    config = json.loads((plain / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    if is_causal is not None:
        config["is_causal"] = is_causal
    (plain / "config.json").write_text(json.dumps(config))
    mode = "lasttoken" if is_causal is None else "mean"
    theirs = _reference(plain)
    assert theirs[1].pooling_mode == mode
    for backend in ("torch", "onnx"):
        with caplog.at_level("INFO", logger="st_onnx"):
            ours = SentenceTransformer(str(plain), device="cpu", backend=backend)
        assert f"{mode} pooling" in caplog.text
        assert ours.encode(SENTENCES).shape == theirs.encode(SENTENCES).shape
        np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)


@pytest.mark.slow
def test_stsb_test_spearman_matches_published(minilm_pair):
    from scipy.stats import spearmanr

    ours, _ = minilm_pair
    rows = read_stsb("test")
    assert len(rows) == 1379
    a = ours.encode([r[0] for r in rows], batch_size=64)
    b = ours.encode([r[1] for r in rows], batch_size=64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rho = spearmanr(cos, [r[2] for r in rows]).statistic
    assert abs(rho - 0.8203247) < 0.001, rho


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_sentence_transformers_evaluators_run_on_st_onnx_models(tiny_model_copy, backend, tmp_path):
    try:  # sentence-transformers 6 moved them; 5 has only the old path
        from sentence_transformers.sentence_transformer.evaluation import (
            EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator, TripletEvaluator,
        )
    except ImportError:
        from sentence_transformers.evaluation import (
            EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator, TripletEvaluator,
        )

    rows = read_stsb("dev")[:100]
    queries = {str(i): a for i, (a, _, _) in enumerate(rows[:20])}
    evaluators = [
        EmbeddingSimilarityEvaluator([a for a, _, _ in rows], [b for _, b, _ in rows], [s / 5 for *_, s in rows],
                                     name="sts-dev"),
        InformationRetrievalEvaluator(queries, {str(i): b for i, (_, b, _) in enumerate(rows)},
                                      {q: {q} for q in queries}, name="ir"),
        TripletEvaluator([a for a, _, _ in rows[:30]], [b for _, b, _ in rows[:30]], [b for _, b, _ in rows[30:60]],
                         name="triplets"),
    ]
    reference = _reference(tiny_model_copy)
    ours = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    for evaluator in evaluators:  # they pass precision=None, truncate_dim, and call model.model_card_data
        got, want = ours.evaluate(evaluator), reference.evaluate(evaluator)
        key = evaluator.primary_metric
        # the tiny model's random embeddings make near-ties: the onnx graph's ~1e-7 differences may swap ranks
        assert got[key] == pytest.approx(want[key], abs=1e-6 if backend == "torch" else 0.02), key
    ours.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "## Evaluation" in card and "### TripletEvaluator: triplets" in card and "| ir_cosine_ndcg@10 |" in card


def test_module_methods_scripts_call_behave_as_sentence_transformers(tiny_model_copy):
    ours, theirs = SentenceTransformer(str(tiny_model_copy), device="cpu"), _reference(tiny_model_copy)
    assert ours.eval() is ours and ours.cpu() is ours and ours.train(False) is ours
    assert len(list(ours.parameters())) == len(list(theirs.parameters()))
    # the same tensors; the Transformer's attribute is 'auto_model' here (2.x's name), 'model' in 6.x
    ours_sd = {k.replace(".auto_model.", ".model."): v for k, v in ours.state_dict().items()}
    assert list(ours_sd) == list(theirs.state_dict())
    assert all(torch.equal(ours_sd[k], v) for k, v in theirs.state_dict().items())
    assert len(list(ours.named_parameters())) == len(list(theirs.named_parameters()))
    assert ours.half() is ours
    theirs.half()
    _assert_same(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=2e-3)  # float16 arrays, both
    assert ours.encode(SENTENCES).dtype == np.float16
    ours.float()
    assert ours.encode(SENTENCES).dtype == np.float32


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
@pytest.mark.parametrize("mode", ["mean", "weightedmean", "mean_sqrt_len_tokens"])
def test_half_precision_pooling_sums_in_fp32_as_sentence_transformers(tmp_path, cast, mode):
    folder = make_tiny_model(tmp_path / "model", pooling=mode, normalize=False)
    ours, theirs = SentenceTransformer(str(folder), device="cpu"), _reference(folder)
    getattr(ours, cast)(), getattr(theirs, cast)()
    texts = SENTENCES + ["the cat " * 30]
    got, want = (m.encode(texts, convert_to_tensor=True) for m in (ours, theirs))
    assert got.dtype == want.dtype == getattr(torch, {"half": "float16"}.get(cast, cast))
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_preprocess_and_the_modules_sentence_transformers_6_names(tiny_model_copy, backend):
    """6 renamed tokenize to preprocess (prompt prepended, its length given) and gave the modules new names."""
    ours, theirs = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend), _reference(tiny_model_copy)
    for prompt in (None, "a red "):
        want = theirs.preprocess(SENTENCES, prompt=prompt)
        for got in (ours.preprocess(SENTENCES, prompt=prompt), ours.tokenize(SENTENCES, prompt=prompt),
                    ours[0].preprocess(SENTENCES, prompt=prompt)):
            assert np.array_equal(np.asarray(got["input_ids"]), want["input_ids"].numpy())
            assert got.get("prompt_length") == want.get("prompt_length")
    assert ours.preprocess(SENTENCES, prompt="a red ")["prompt_length"] == 3
    with pytest.raises(InvalidInputError, match="prompt must be a string"):
        ours.preprocess(SENTENCES, prompt=3)
    for i in range(2):
        assert ours[i].get_embedding_dimension() == theirs[i].get_embedding_dimension() == 32
    assert ours[1].embedding_dimension == theirs[1].embedding_dimension == 32
    assert ours[0].model is ours[0].auto_model and ours[0].processor is ours[0].tokenizer
    assert ours[0].modalities == ["text"]
    for model in (ours, theirs):
        model[1].pooling_mode = "max"
    if backend == "torch":  # on the onnx backend the graph is what runs (max_seq_length aside)
        np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)


def test_module_methods_on_the_onnx_backend(tiny_model_copy):
    from st_onnx.errors import BackendError

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert model.eval() is model and model.train(False) is model
    with pytest.raises(BackendError, match=r"half\(\) casts torch modules.*this one: fp32.*'fp16' \(CUDA\)"):
        model.half()
    assert model.float() is model  # the graph is fp32 already
    int8 = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"precision": "int8"})
    with pytest.raises(BackendError, match=r"float\(\) casts torch modules.*this one: int8"):
        int8.float()
    with pytest.raises(BackendError, match="train mode needs the torch modules"):
        model.train()
    assert len(list(model.parameters())) > 0  # the authoritative torch modules, loaded on first use


def test_model_tokenizer_and_config_kwargs_reach_transformers(tiny_model_copy):
    kwargs = {"model_kwargs": {"attn_implementation": "eager"}, "tokenizer_kwargs": {"model_max_length": 16},
              "config_kwargs": {"hidden_dropout_prob": 0.3}}
    ours, theirs = (SentenceTransformer(str(tiny_model_copy), device="cpu", **kwargs),
                    st.SentenceTransformer(str(tiny_model_copy), device="cpu", **kwargs))
    for model in (ours[0].auto_model, theirs[0].model if hasattr(theirs[0], "model") else theirs[0].auto_model):
        assert model.config.hidden_dropout_prob == 0.3 and model.config._attn_implementation == "eager"
    assert ours.tokenizer.model_max_length == 16 and ours.max_seq_length == theirs.max_seq_length == 16
    _assert_same(ours.encode(SENTENCES), theirs.encode(SENTENCES))  # the long text cut at 16 tokens by both
    ours.save(str(tiny_model_copy.parent / "ours"))  # the config as loaded is saved, by both
    theirs.save(str(tiny_model_copy.parent / "theirs"))
    saved = [json.loads((tiny_model_copy.parent / name / "config.json").read_text())["hidden_dropout_prob"]
             for name in ("ours", "theirs")]
    assert saved[0] == saved[1]
    with pytest.raises(ValueError, match="model_kwargs configure the torch modules.*onnx_options"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", model_kwargs={"file_name": "x"})
    with pytest.raises(ValueError, match="config_kwargs must be a dict"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", config_kwargs=["x"])


def test_trust_remote_code_loads_a_model_with_its_own_code(tiny_model_copy):
    """A folder whose config maps AutoModel to a modeling file inside it (what Hub models with custom code do)."""
    import json as json_mod

    config = json_mod.loads((tiny_model_copy / "config.json").read_text())
    config.update(model_type="tiny-custom-bert", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                           "AutoModel": "modeling_custom.CustomModel"})
    (tiny_model_copy / "config.json").write_text(json_mod.dumps(config))
    (tiny_model_copy / "configuration_custom.py").write_text(
        "from transformers import BertConfig\n\n\n"
        "class CustomConfig(BertConfig):\n    model_type = 'tiny-custom-bert'\n")
    (tiny_model_copy / "modeling_custom.py").write_text(
        "from transformers import BertModel\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomModel(BertModel):\n    config_class = CustomConfig\n")
    with pytest.raises(ValueError, match="custom code"):
        SentenceTransformer(str(tiny_model_copy), device="cpu")
    ours = SentenceTransformer(str(tiny_model_copy), device="cpu", trust_remote_code=True)
    assert type(ours[0].auto_model).__name__ == "CustomModel"
    # transformers copied the model's code into its modules cache: the suite's own, not ~/.cache/huggingface
    copied = Path(sys.modules[type(ours[0].auto_model).__module__].__file__)
    assert copied.is_relative_to(os.environ["HF_MODULES_CACHE"]) and not copied.is_relative_to(Path.home())
    theirs = st.SentenceTransformer(str(tiny_model_copy), device="cpu", trust_remote_code=True)
    _assert_same(ours.encode(SENTENCES), theirs.encode(SENTENCES))
    with pytest.raises(ValueError, match="trust_remote_code configure the torch modules"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", trust_remote_code=True)


def test_model_card_as_sentence_transformers(tiny_model_copy, tmp_path):
    """Its card data class is taken as given; a hand-written card is kept by both on a plain save."""
    card = "---\nlicense: apache-2.0\n---\n\n# Owner's card\n"
    (tiny_model_copy / "README.md").write_text(card)
    for name, cls in (("ours", SentenceTransformer), ("theirs", st.SentenceTransformer)):
        cls(str(tiny_model_copy), device="cpu").save(str(tmp_path / name))
        assert (tmp_path / name / "README.md").read_text() == card, name
    data = st.SentenceTransformerModelCardData(language="en", license="apache-2.0", model_name="Tiny fine-tuned")
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", model_card_data=data)
    assert (model.model_card_data.language, model.model_card_data.license) == (["en"], "apache-2.0")
    model.save(str(tmp_path / "with_data"))
    written = (tmp_path / "with_data" / "README.md").read_text()
    assert written.startswith("---\nlanguage:\n- en\nlicense: apache-2.0\n") and "# Tiny fine-tuned" in written
    assert 'SentenceTransformer("with_data")' in written and 'SentenceTransformer("Tiny' not in written  # loadable
    model.model_card_data.model_id = "someone/tiny-fine-tuned"
    model.save(str(tmp_path / "with_id"))
    assert 'SentenceTransformer("someone/tiny-fine-tuned")' in (tmp_path / "with_id" / "README.md").read_text()


def test_modules_from_sentence_transformers_models_are_adopted(tmp_path):
    """The usual recipe with only SentenceTransformer's import switched: sentence-transformers' modules become
    st-onnx's (same model, tokenizer and weights), on both backends; ones without a counterpart are named."""
    from helpers import make_tiny_transformer

    with warnings.catch_warnings():  # 6 moved them (sentence_transformers.sentence_transformer.modules)
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models
    raw = make_tiny_transformer(tmp_path / "raw")
    transformer = models.Transformer(str(raw), max_seq_length=24, do_lower_case=True)
    pooling = models.Pooling(transformer.get_embedding_dimension(), "cls")
    torch.manual_seed(0)
    dense = models.Dense(pooling.get_embedding_dimension(), 8, activation_function=torch.nn.ReLU())
    modules = [transformer, pooling, dense, models.Normalize()]
    theirs = st.SentenceTransformer(modules=modules, device="cpu")
    texts = SENTENCES + ["The [MASK] " * 40]
    want = theirs.encode(texts)
    for backend in ("torch", "onnx"):
        ours = SentenceTransformer(modules=modules, device="cpu", backend=backend)
        np.testing.assert_allclose(ours.encode(texts), want, atol=1e-5)
        assert ours.max_seq_length == 24
    ours = SentenceTransformer(modules=modules, device="cpu")
    assert ours[0].auto_model is transformer.auto_model  # shared, not copied: training one trains both
    ours.save(str(tmp_path / "saved"))
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(texts), want,
                               atol=1e-5)
    from st_onnx.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="LayerNorm has no st-onnx counterpart"):
        SentenceTransformer(modules=[transformer, pooling, models.LayerNorm(32)], device="cpu")


@pytest.mark.parametrize("kind, kwargs", [
    ("Dense", {"use_residual": True}),
    ("Dense", {"module_input_name": "token_embeddings"}),
    ("Dense", {"module_output_name": "projected"}),
    ("Normalize", {"module_input_name": "token_embeddings"}),
])
def test_modules_routed_off_the_sentence_embedding_are_refused(tmp_path, kind, kwargs):
    """sentence-transformers 6's Dense/Normalize settings st-onnx does not run are refused by name, whether the
    module is handed over or saved in a folder; dropping them would give other embeddings silently."""
    from helpers import make_tiny_transformer
    from st_onnx.errors import ModelFolderError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models
    transformer = models.Transformer(str(make_tiny_transformer(tmp_path / "raw")))
    pooling = models.Pooling(transformer.get_embedding_dimension(), "mean")
    width = pooling.get_embedding_dimension()
    routed = (models.Dense(width, width, **kwargs) if kind == "Dense" else models.Normalize(**kwargs))
    plain = models.Dense(width, width) if kind == "Dense" else models.Normalize()
    if kind == "Dense":
        plain.load_state_dict(routed.state_dict(), strict=False)
    theirs = st.SentenceTransformer(modules=[transformer, pooling, routed], device="cpu")
    baseline = st.SentenceTransformer(modules=[transformer, pooling, plain], device="cpu")
    assert not np.allclose(theirs.encode(SENTENCES), baseline.encode(SENTENCES), atol=1e-4)  # the setting matters
    name = next(iter(kwargs))
    with pytest.raises(ModelFolderError, match=name):
        SentenceTransformer(modules=[transformer, pooling, routed], device="cpu")
    theirs.save(str(tmp_path / "saved"))
    with pytest.raises(ModelFolderError, match=name):
        SentenceTransformer(str(tmp_path / "saved"), device="cpu")


def _with_chat_template(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for message in messages %}the {{ message['content'] }} fish{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("key, kwargs", [
    ("processing_kwargs", {"processing_kwargs": {"text": {"max_length": 8}}}),
    ("query_length", {"query_length": 6}),
    ("document_length", {"document_length": 9}),
    ("modality_config", None),  # a tokenizer with a chat template: texts are rendered through it
])
def test_sentence_transformers_6_settings_that_change_the_tokens_are_refused(tmp_path, key, kwargs):
    """sentence-transformers 6's Transformer settings that change which tokens it embeds (maxdiff 0.49-1.44 from
    what st-onnx embedded without a word, on both backends, and a save dropped them) are refused by name, from a
    folder on both backends and from a handed-over module."""
    from helpers import make_tiny_transformer
    from st_onnx.errors import ModelFolderError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models
    raw = make_tiny_transformer(tmp_path / "raw")
    if kwargs is None:
        _with_chat_template(raw)
    transformer = models.Transformer(str(raw), **(kwargs or {}))
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), "mean")]
    theirs = st.SentenceTransformer(modules=modules, device="cpu")
    plain = st.SentenceTransformer(modules=[models.Transformer(str(make_tiny_transformer(tmp_path / "plain"))),
                                            modules[1]], device="cpu")
    texts = SENTENCES + ["the cat sat on the mat " * 3]
    method = "encode_query" if key == "query_length" else "encode_document" if key == "document_length" else "encode"
    assert not np.allclose(getattr(theirs, method)(texts), plain.encode(texts), atol=1e-4)  # the setting matters
    theirs.save(str(tmp_path / "saved"))
    for backend in ("torch", "onnx"):
        with pytest.raises(ModelFolderError, match=f"sentence_bert_config.json has {key}=.*plain text"):
            SentenceTransformer(str(tmp_path / "saved"), device="cpu", backend=backend)
    with pytest.raises(ModelFolderError, match=f"the given sentence_transformers.*Transformer has {key}="):
        SentenceTransformer(modules=modules, device="cpu")


def test_a_plain_folder_with_a_chat_template_is_refused(tmp_path):
    """sentence-transformers 6 renders every text of such a folder through the template (maxdiff 1.44 from what
    st-onnx embedded); st-onnx names the template and how to embed plain text instead."""
    from helpers import make_tiny_transformer
    from st_onnx.errors import ModelFolderError

    raw = _with_chat_template(make_tiny_transformer(tmp_path / "raw"))
    with pytest.raises(ModelFolderError, match="chat template.*SentenceTransformer\\(modules="):
        SentenceTransformer(str(raw), device="cpu")
    from st_onnx import models

    built = SentenceTransformer(modules=[models.Transformer(str(raw)), models.Pooling(32, "mean")], device="cpu")
    built.save(str(tmp_path / "built"))  # saved without a modality: sentence-transformers 6 embeds plain text too
    _assert_same(SentenceTransformer(str(tmp_path / "built"), device="cpu").encode(SENTENCES),
                 _reference(tmp_path / "built").encode(SENTENCES))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_tokenizers_limit_is_capped_at_the_positions_as_sentence_transformers_6(tmp_path, backend):
    """A sentence-transformers 6 folder keeps its limit only in tokenizer_config.json; one above the model's
    position embeddings (512 over 128) is capped when loaded. It crashed in torch with a shape error."""
    from helpers import make_tiny_transformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models
    raw = make_tiny_transformer(tmp_path / "raw")
    st.SentenceTransformer(modules=[models.Transformer(str(raw)), models.Pooling(32, "mean")],
                           device="cpu").save(str(tmp_path / "m"))
    assert "max_seq_length" not in json.loads((tmp_path / "m" / "sentence_bert_config.json").read_text())
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 512}))
    theirs = _reference(tmp_path / "m")
    ours = SentenceTransformer(str(tmp_path / "m"), device="cpu", backend=backend)
    assert ours.max_seq_length == theirs.max_seq_length == 128
    text = ["the cat " * 100]
    np.testing.assert_allclose(ours.encode(text), theirs.encode(text), atol=1e-5)


def test_none_where_sentence_transformers_takes_none(tiny_model_copy, tmp_path):
    """prompts={'name': None} (the saved prompt of that name, else ''), trust_remote_code=None (False) and
    save(None) (writes nothing, warned), as sentence-transformers 6; each was refused."""
    (tiny_model_copy / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "q: "}}))
    for cls in (SentenceTransformer, st.SentenceTransformer):
        model = cls(str(tiny_model_copy), device="cpu", prompts={"query": None, "a": None, "b": "b: "},
                    trust_remote_code=None)
        assert {k: model.prompts[k] for k in ("query", "a", "b")} == {"query": "q: ", "a": "", "b": "b: "}, cls
    with pytest.warns(UserWarning, match=r"save\(None\) writes nothing"):
        model = SentenceTransformer(str(tiny_model_copy), device="cpu")
        model.save(None)
    with pytest.raises(InvalidInputError, match="trust_remote_code must be True, False or None; got 'yes'"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", trust_remote_code="yes")


def test_a_kept_model_card_names_the_model_as_sentence_transformers(tiny_model_copy, tmp_path):
    """save(path, model_name=...) on a model whose card is kept puts the name in the card's usage line."""
    card = '---\nlicense: apache-2.0\n---\n\nmodel = SentenceTransformer("sentence_transformers_model_id")\n'
    (tiny_model_copy / "README.md").write_text(card)
    for name, cls in (("ours", SentenceTransformer), ("theirs", st.SentenceTransformer)):
        cls(str(tiny_model_copy), device="cpu").save(str(tmp_path / name), model_name="someone/tiny")
        assert 'model = SentenceTransformer("someone/tiny")' in (tmp_path / name / "README.md").read_text(), name


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_new_tokenizer_brings_its_model_max_length(tiny_model_copy, backend):
    """max_seq_length follows a tokenizer set on the model, on both backends, as it follows one set as the
    Transformer's processor in sentence-transformers 6 (whose model.tokenizer has no setter)."""
    from transformers import AutoTokenizer

    ours = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    theirs = _reference(tiny_model_copy)
    assert ours.max_seq_length == theirs.max_seq_length == 64
    ours.tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_copy), model_max_length=12)
    theirs[0].processor = AutoTokenizer.from_pretrained(str(tiny_model_copy), model_max_length=12)
    assert ours.max_seq_length == theirs.max_seq_length == ours[0].max_seq_length == 12
    text = ["the cat sat on the mat " * 12]
    assert ours.tokenize(text)["input_ids"].shape == (1, 12)
    np.testing.assert_allclose(ours.encode(text), theirs.encode(text), atol=1e-5)


def test_max_seq_length_is_the_tokenizers_model_max_length(minilm_pair):
    """As sentence-transformers 6: one value, set from either side (torch backend)."""
    ours, theirs = minilm_pair
    try:
        for model in (ours, theirs):
            assert model.max_seq_length == model.tokenizer.model_max_length == 256
            model.max_seq_length = 128
            assert model.tokenizer.model_max_length == 128
            model.tokenizer.model_max_length = 16
            assert model.max_seq_length == 16
        text = ["a long sentence about the weather " * 10]
        np.testing.assert_allclose(ours.encode(text), theirs.encode(text), atol=1e-5)
    finally:
        for model in (ours, theirs):
            model.max_seq_length = 256


def test_the_default_max_seq_length_is_the_smaller_of_positions_and_tokenizer_limit(tmp_path):
    """As sentence-transformers: min(max_position_embeddings, model_max_length). A tokenizer that allows 512 over a
    position table of 128 would otherwise let texts past the table (an index error, or wrong positions)."""
    st = pytest.importorskip("sentence_transformers")
    from helpers import make_tiny_transformer

    from st_onnx.models import Transformer

    raw = make_tiny_transformer(tmp_path / "raw")
    config = raw / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 512}))
    assert Transformer(str(raw)).max_seq_length == 128 == st.SentenceTransformer(str(raw), device="cpu").max_seq_length


def test_a_dense_without_bias_and_with_given_weights_round_trips_as_sentence_transformers(tmp_path):
    """Dense(bias=False) (sentence-t5, EmbeddingGemma) is saved with bias false, so that it loads without a bias in
    both libraries; init_weight and init_bias are the layer's parameters, as sentence-transformers' Dense takes them."""
    st = pytest.importorskip("sentence_transformers")
    from helpers import make_tiny_transformer

    from st_onnx.models import Dense, Normalize, Pooling, Transformer

    weight, bias = torch.randn(6, 32), torch.randn(6)
    with_bias = Dense(32, 6, init_weight=weight.clone(), init_bias=bias.clone(), activation_function=torch.nn.Identity())
    x = torch.randn(3, 32)
    torch.testing.assert_close(with_bias({"sentence_embedding": x})["sentence_embedding"], x @ weight.T + bias)
    transformer = Transformer(str(make_tiny_transformer(tmp_path / "raw")), max_seq_length=32)
    dense = Dense(32, 6, bias=False, init_weight=weight.clone(), activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, Pooling(32), dense, Normalize()], device="cpu")
    model.save(str(tmp_path / "m"))
    config = json.loads(next((tmp_path / "m").glob("2_Dense/config.json")).read_text())
    assert config["bias"] is False
    ours = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert ours[2].linear.bias is None
    np.testing.assert_allclose(ours.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(SENTENCES),
                               model.encode(SENTENCES), atol=1e-5)
