"""sentence-transformers 5/6 spellings of the 2.x API: renamed arguments, aliases, a device list, contexts.

Each is checked against sentence-transformers itself where it has the same call.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SENTENCES
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError

st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    return (SentenceTransformer(str(tiny_model_dir), device="cpu"),
            st.SentenceTransformer(str(tiny_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def onnx_model(tiny_model_dir, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("newer") / "model"
    shutil.copytree(tiny_model_dir, folder)
    return SentenceTransformer(str(folder), backend="onnx", device="cpu")


def test_inputs_is_the_newer_name_of_sentences(pair, onnx_model):
    ours, theirs = pair
    want = theirs.encode(inputs=SENTENCES)
    for model in (ours, onnx_model):
        np.testing.assert_allclose(model.encode(inputs=SENTENCES), want, atol=1e-5)
        np.testing.assert_allclose(model.encode(sentences=SENTENCES), want, atol=1e-5)
        np.testing.assert_allclose(model.encode_query(inputs=SENTENCES[:2]), want[:2], atol=1e-5)
        with pytest.raises(InvalidInputError, match="sentences and inputs are two names for one argument"):
            model.encode(SENTENCES, inputs=SENTENCES)
        with pytest.raises(InvalidInputError, match="sentences is required.*got None"):
            model.encode()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_list_of_devices_encodes_on_a_pool_for_the_call(pair, onnx_model, backend):
    model = pair[0] if backend == "torch" else onnx_model
    want = pair[1].encode(SENTENCES, normalize_embeddings=True)
    got = model.encode(SENTENCES, device=["cpu", "cpu"], normalize_embeddings=True)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.encode(SENTENCES[0], device=["cpu"]), want[0], atol=1e-5)
    with model.start_multi_process_pool(["cpu"]) as pool, pytest.raises(InvalidInputError, match="not both"):
        model.encode(SENTENCES, device=["cpu"], pool=pool)
    with pytest.raises(InvalidInputError, match="'tpu'"):
        model.encode(SENTENCES, device=["cpu", "tpu"])
    tokens = model.encode(SENTENCES, device=["cpu"], output_value="token_embeddings")  # per text, as 6 gives them
    theirs = pair[1].encode(SENTENCES, device=["cpu"], output_value="token_embeddings")
    for got_tokens, want_tokens in zip(tokens, theirs):
        np.testing.assert_allclose(np.asarray(got_tokens), want_tokens.numpy(), atol=1e-5)


def test_backend_and_dimension_getters(pair, onnx_model):
    ours, theirs = pair
    assert ours.get_backend() == theirs.get_backend() == "torch" and onnx_model.get_backend() == "onnx"
    assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 32
    assert onnx_model.get_embedding_dimension() == 32


def test_truncate_embeddings_is_a_context_that_restores_the_setting(pair, onnx_model):
    ours, theirs = pair
    with theirs.truncate_embeddings(8):
        want = theirs.encode(SENTENCES)
    for model in (ours, onnx_model):
        with model.truncate_embeddings(8):
            np.testing.assert_allclose(model.encode(SENTENCES), want, atol=1e-5)
            assert model.get_embedding_dimension() == 8
        assert model.encode(SENTENCES).shape == (len(SENTENCES), 32) and model.truncate_dim is None
        with pytest.raises(RuntimeError), model.truncate_sentence_embeddings(4):  # the older name
            assert model.encode(SENTENCES[0]).shape == (4,)
            raise RuntimeError("leaving the block by an error restores the setting too")
        assert model.truncate_dim is None
        with pytest.raises(InvalidInputError, match="truncate_dim must be a positive int"), \
                model.truncate_embeddings(0):
            pass


def test_save_pretrained_and_safe_serialization(pair, tmp_path):
    ours, _ = pair
    ours.save_pretrained(str(tmp_path / "saved"), safe_serialization=True)
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(SENTENCES),
                               ours.encode(SENTENCES), atol=1e-6)
    with pytest.raises(InvalidInputError, match="safe_serialization=False .*safetensors only"):
        ours.save(str(tmp_path / "pickled"), safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_processor_kwargs_is_the_newer_name_of_tokenizer_kwargs(tiny_model_dir):
    ours = SentenceTransformer(str(tiny_model_dir), device="cpu", processor_kwargs={"model_max_length": 8})
    theirs = st.SentenceTransformer(str(tiny_model_dir), device="cpu", processor_kwargs={"model_max_length": 8})
    assert ours.max_seq_length == theirs.max_seq_length == 8
    np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)
    with pytest.raises(InvalidInputError, match="tokenizer_kwargs and processor_kwargs are two names"):
        SentenceTransformer(str(tiny_model_dir), device="cpu", tokenizer_kwargs={}, processor_kwargs={})


def test_encode_multi_process_shows_progress_when_asked(pair, capsys):
    ours, _ = pair
    with ours.start_multi_process_pool(["cpu", "cpu"]) as pool:
        quiet = ours.encode_multi_process(SENTENCES, pool, chunk_size=2)
        assert "Chunks" not in capsys.readouterr().err
        shown = ours.encode_multi_process(SENTENCES, pool, chunk_size=2, show_progress_bar=True)
        err = capsys.readouterr().err
    assert "Chunks" in err and f"{-(-len(SENTENCES) // 2)}/{-(-len(SENTENCES) // 2)}" in err
    np.testing.assert_allclose(shown, quiet)


def test_module_keyword_arguments_as_sentence_transformers_6(pair, onnx_model):
    ours, theirs = pair
    np.testing.assert_allclose(ours.encode(SENTENCES, task="query"), theirs.encode(SENTENCES, task="query"),
                               atol=1e-5)  # no Router: no effect, in both
    for model in (ours, onnx_model):
        with pytest.raises(ValueError, match=r"does not use: \['foo'\]"):
            model.encode(SENTENCES, foo=1)
        with pytest.raises(InvalidInputError, match="processing_kwargs.*max_seq_length"):
            model.encode_query(SENTENCES, processing_kwargs={"text": {"max_length": 8}})
    with pytest.raises(ValueError):
        theirs.encode(SENTENCES, foo=1)


def test_module_calls_scripts_make_on_sentence_transformers(tiny_model_dir):
    """nn.Module and sentence-transformers 6 attributes: same answers as its class (torch backend)."""
    import torch

    ours = SentenceTransformer(str(tiny_model_dir), device="cpu")
    theirs = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    for model in (ours, theirs):
        assert model.dtype == torch.float32 and model.modalities == ["text"] and model.get_model_kwargs() == []
        assert type(model.transformers_model).__name__ == "BertModel" and model.processor is model.tokenizer
        assert type(model._first_module()).__name__ == "Transformer"
        assert type(model._last_module()).__name__ == "Normalize"
        assert [n for n, _ in model.named_children()] == ["0", "1", "2"]
        assert model.requires_grad_(False) is model and not any(p.requires_grad for p in model.parameters())
        model.requires_grad_(True)
    assert len(list(ours.modules())) == len(list(theirs.modules()))
    # their state dict (keys say "model" where ours say "auto_model") loads into ours
    theirs_state = {k: v + 1.0 for k, v in theirs.state_dict().items()}
    assert ours.load_state_dict(theirs_state).missing_keys == []
    theirs.load_state_dict(theirs_state)
    np.testing.assert_allclose(ours.encode(SENTENCES), theirs.encode(SENTENCES), atol=1e-5)
    features = ours.tokenize(SENTENCES)
    with torch.no_grad():
        assert ours.forward(dict(features))["sentence_embedding"].shape == (len(SENTENCES), 32)
    assert ours.to(torch.float16) is ours and ours.dtype == torch.float16
    assert ours.to("cpu", torch.float32).dtype == torch.float32
    assert ours.encode(SENTENCES).dtype == np.float32
    from st_onnx.errors import BackendError

    with pytest.raises(BackendError, match=r"to\('float16'\) gives a string; pass the torch dtype itself"):
        ours.to(dtype="float16")


def test_module_calls_on_the_onnx_backend(onnx_model):
    from st_onnx.errors import BackendError

    assert onnx_model.dtype == np.float32 and not onnx_model.training
    with pytest.raises(BackendError, match="load them on backend='torch'"):
        onnx_model.load_state_dict({})
    with pytest.raises(BackendError, match="fp32"):
        onnx_model.to("cpu", type("dtype", (), {"__str__": lambda self: "torch.float16"})())


def test_encode_query_takes_prompt_name_second(pair):
    ours, theirs = pair
    ours.prompts = {**ours.prompts, "q2": "the red "}
    theirs.prompts = {**theirs.prompts, "q2": "the red "}
    try:
        np.testing.assert_allclose(ours.encode_query(SENTENCES, "q2"), theirs.encode_query(SENTENCES, "q2"),
                                   atol=1e-5)
        np.testing.assert_allclose(ours.encode_document(SENTENCES, None, "the "),
                                   theirs.encode_document(SENTENCES, None, "the "), atol=1e-5)
    finally:
        for model in pair:
            del model.prompts["q2"]


@pytest.mark.parametrize("method", ["encode_query", "encode_document"])
def test_encode_query_and_document_take_the_rest_in_the_newer_order(pair, onnx_model, method):
    """After (inputs, prompt_name, prompt) come batch_size, show_progress_bar, output_value, precision, ... as in
    sentence-transformers 5/6 (these methods have no 2.x order); they were refused as too many arguments."""
    ours, theirs = pair
    want = getattr(theirs, method)(SENTENCES, None, None, 2, False, "sentence_embedding", "int8")
    for model in (ours, onnx_model):
        got = getattr(model, method)(SENTENCES, None, None, 2, False, "sentence_embedding", "int8")
        assert got.dtype == want.dtype == np.int8 and got.shape == want.shape
        tokens = getattr(model, method)(SENTENCES[:2], None, None, 1, False, "token_embeddings")
        assert isinstance(tokens, list) and len(tokens) == 2
        with pytest.raises(TypeError, match="multiple values for argument 'batch_size'"):
            getattr(model, method)(SENTENCES, None, None, 2, batch_size=4)
        with pytest.raises(TypeError, match="at most 14 positional arguments"):
            getattr(model, method)(SENTENCES, None, None, *range(12))


def test_device_index_means_that_cuda_device():
    from st_onnx.devices import check_device

    assert check_device(0) == "cuda:0" and check_device(3) == "cuda:3"
    for bad in (-1, True, False):  # a bool is an int to Python: True meant cuda:1
        with pytest.raises(InvalidInputError, match="not recognised"):
            check_device(bad)
