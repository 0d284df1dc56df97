"""backend='onnx': the same encode API and results as backend='torch', graph export once, staleness, memory."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil

import numpy as np
import pytest
import torch

from helpers import SENTENCES, make_tiny_model, stsb_sentences
from st_onnx import SentenceTransformer, folders, layout
from st_onnx.errors import GraphFileError, InvalidInputError, ModelFolderError, StaleGraphError

OUTPUT_VALUES = ["sentence_embedding", "token_embeddings", None]


@pytest.fixture(scope="module")
def tiny_folder(tiny_model_dir, tmp_path_factory):
    """A private copy of the tiny model: the onnx backend exports its graph into it once."""
    dest = tmp_path_factory.mktemp("onnx-backend") / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture(scope="module")
def torch_model(tiny_folder):
    return SentenceTransformer(str(tiny_folder), device="cpu")


@pytest.fixture(scope="module")
def onnx_model(tiny_folder):
    return SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu")


@pytest.fixture(scope="module")
def st_model(tiny_folder):
    """sentence-transformers itself on the same folder: the reference both backends are held to."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.SentenceTransformer(str(tiny_folder), device="cpu")


@pytest.fixture(params=["torch", "onnx"])
def model(request, torch_model, onnx_model):
    """One encode test, both backends."""
    return torch_model if request.param == "torch" else onnx_model


def as_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def close(a, b, atol=1e-5):
    if isinstance(a, dict):
        return all(close(a[k], b[k], atol) for k in ("sentence_embedding", "token_embeddings"))
    a, b = as_np(a), as_np(b)
    if a.ndim == 2 and b.ndim == 2 and a.shape != b.shape:  # torch's per-text dicts keep batch padding
        k = min(a.shape[0], b.shape[0])
        a, b = a[:k], b[:k]
    return a.shape == b.shape and np.abs(a - b).max(initial=0) <= atol


# -- one encode test, two backends ---------------------------------------------------------------------
@pytest.mark.parametrize("output_value", OUTPUT_VALUES)
@pytest.mark.parametrize("convert_to_numpy", [True, False])
@pytest.mark.parametrize("convert_to_tensor", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_every_output_combination_matches_sentence_transformers(model, st_model, output_value, convert_to_numpy,
                                                                convert_to_tensor, normalize):
    kwargs = dict(output_value=output_value, convert_to_numpy=convert_to_numpy,
                  convert_to_tensor=convert_to_tensor, normalize_embeddings=normalize, show_progress_bar=False)
    got = model.encode(SENTENCES, **kwargs)
    ref = st_model.encode(SENTENCES, **kwargs)
    if output_value == "sentence_embedding":
        assert type(got) is type(ref)
        if convert_to_tensor:
            assert isinstance(got, torch.Tensor) and got.shape == (len(SENTENCES), 32)
        elif convert_to_numpy:
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
        else:
            assert isinstance(got, list) and all(isinstance(x, torch.Tensor) for x in got)
        assert close(torch.stack(got) if isinstance(got, list) else got,
                     torch.stack(ref) if isinstance(ref, list) else ref)
    else:
        assert isinstance(got, list) and len(got) == len(SENTENCES)
        if convert_to_tensor or not convert_to_numpy:
            first = got[0]["token_embeddings"] if isinstance(got[0], dict) else got[0]
            assert isinstance(first, torch.Tensor)
        assert all(close(g, r) for g, r in zip(got, ref))


def test_single_string_gives_one_vector(model):
    emb = model.encode("A man is playing music.")
    assert isinstance(emb, np.ndarray) and emb.shape == (32,)
    assert np.allclose(emb, model.encode(["A man is playing music."])[0], atol=1e-6)


def test_empty_list_gives_zero_rows(model):
    emb = model.encode([])
    assert isinstance(emb, np.ndarray) and emb.shape == (0, 32)


def test_input_order_is_kept(model):
    forward = model.encode(SENTENCES)
    backward = model.encode(SENTENCES[::-1])
    assert np.allclose(forward, backward[::-1], atol=1e-6)
    alone = np.stack([model.encode(s) for s in SENTENCES])
    assert np.allclose(forward, alone, atol=1e-5)


def test_pairs_and_dicts_match_sentence_transformers(model, st_model):
    pairs = [(SENTENCES[i], SENTENCES[i + 1]) for i in range(len(SENTENCES) - 1)]
    assert close(model.encode(pairs), st_model.encode(pairs))
    dicts = [{"text": s} for s in SENTENCES]
    assert close(model.encode(dicts), st_model.encode(SENTENCES))
    assert close(model.encode({"text": SENTENCES[0]}), st_model.encode(SENTENCES[0]))


@pytest.mark.parametrize("single", [{}, {"title": "the cat", "body": "the dog runs"}, {"text": 5}])
def test_a_single_dict_is_checked_as_a_list_item_is(model, single):
    """A lone dict is one input: two texts in it are refused, not cut to the first (sentence-transformers 6
    refuses these with a ValueError too)."""
    with pytest.raises(InvalidInputError, match=r"sentences is .*allowed: a str, a \(str, str\) pair"):
        model.encode(single)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_text_that_is_not_valid_unicode_is_named(tiny_model_copy, backend):
    """A lone surrogate (bytes decoded with errors='surrogateescape') failed the whole call with the tokenizer's
    TypeError, naming no text: among millions, the user had to bisect for it."""
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    texts = ["the cat sleeps"] * 50
    texts[32] = "caf\udce9 au lait"
    for given, where in ((texts, r"sentences\[32\]"), ([("a", "b"), ("a", "\ud800")], r"sentences\[1\]"),
                         ({"text": "\udfff"}, r"sentences holds")):
        with pytest.raises(InvalidInputError, match=where + r".*not valid Unicode.*errors='replace'"):
            model.encode(given)
    assert model.encode(["café au lait", "emoji 🐈"]).shape[0] == 2  # valid non-ASCII text passes


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -3}, "batch_size"),
    ({"output_value": "pooler"}, "output_value"),
    ({"device": "tpu"}, "device"),
])
def test_bad_arguments_raise_clear_errors(model, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        model.encode(SENTENCES, **kwargs)


def test_none_item_is_refused(model):
    with pytest.raises(InvalidInputError, match=r"sentences\[1\]"):
        model.encode(["a", None])
    with pytest.raises(InvalidInputError, match="None"):
        model.encode(None)


def test_same_facade_api(model, torch_model):
    assert model.get_sentence_embedding_dimension() == 32
    assert model.max_seq_length == torch_model.max_seq_length == 64
    features = model.tokenize(["the cat sleeps", "a dog"])
    assert features["input_ids"].shape == (2, 5)
    assert as_np(features["attention_mask"]).tolist() == [[1] * 5, [1, 1, 1, 1, 0]]


def test_max_seq_length_truncates_like_torch(tiny_folder):
    long = " ".join(["the quick brown fox"] * 40)
    onnx = SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu")
    ref = SentenceTransformer(str(tiny_folder), device="cpu")
    for m in (onnx, ref):
        m.max_seq_length = 16
    assert onnx.encode([long], output_value="token_embeddings")[0].shape == (16, 32)
    assert close(onnx.encode([long, "hi"]), ref.encode([long, "hi"]))


def test_small_token_budget_gives_the_same_embeddings(tiny_folder, onnx_model):
    small = SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu", onnx_options={"token_budget": 7})
    texts = stsb_sentences(200)
    assert close(small.encode(texts, batch_size=64), onnx_model.encode(texts, batch_size=3))


# -- options ---------------------------------------------------------------------------------------------
def test_fp16_on_cpu_is_refused(tiny_folder):
    with pytest.raises(InvalidInputError, match="fp16"):
        SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu", onnx_options={"precision": "fp16"})


@pytest.mark.parametrize("options, match", [
    ({"precison": "fp32"}, "unknown keys"),
    ({"precision": "int4"}, "precision"),
    ({"token_budget": 0}, "token_budget"),
    ({"export": "sometimes"}, "export"),
    ({"file_name": "onnx/missing.onnx"}, "missing.onnx, which is absent; allowed: a fused graph file"),
    ({"file_name": ""}, r"file_name'\] must be a path.*got ''"),
    ({"file_name": 5}, r"file_name'\] must be a path.*got 5"),
    ({"intra_op_num_threads": "2"}, r"intra_op_num_threads'\] must be a positive int; got '2'"),
    ({"intra_op_num_threads": 2.0}, "intra_op_num_threads"),
    ({"providers": "CUDAExecutionProvider"}, r"providers'\] must be a list"),
    ({"providers": ["CUDAExecutionProvidr"]}, r"names 'CUDAExecutionProvidr'; allowed"),
    ({"providers": 5}, r"providers'\] must be a list"),
    ({"providers": [("CPUExecutionProvider", "x")]}, r"holds \('CPUExecutionProvider', 'x'\); allowed: a provider"),
    ({"providers": [("CPUExecutionProvider", None)]}, r"holds \('CPUExecutionProvider', None\)"),
    ({"providers": [("CPUExecutionProvider", {}, "extra")]}, r"holds \('CPUExecutionProvider', \{\}, 'extra'\)"),
    ({"providers": ["CPUExecutionProvider"], "precision": "fp16"}, r"precision 'fp16' (on the CPU|runs on CUDA)"),
    ({"provider_options": 5}, r"provider_options'\] must be a dict or a list of dicts"),
    ({"session_options": 5}, r"session_options'\] must be an onnxruntime.SessionOptions"),
    ({"session_options": {"config_entries": 5}}, r"config_entries'\] must be a dict"),
    ({"session_options": {"log_severity_level": "x"}}, r"\['log_severity_level'\] = 'x' has the wrong type"),
    ({"session_options": {"intra_op_num_threads": "x"}}, r"\['intra_op_num_threads'\] must be an int >= 0; got 'x'"),
    ({3: "x"}, "unknown keys 3"),
    ("fp32", r"onnx_options must be a dict such as"),
])
def test_bad_onnx_options(tiny_folder, options, match):
    with pytest.raises((InvalidInputError, GraphFileError), match=match):
        SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu", onnx_options=options)


def test_device_none_is_cpu_without_a_usable_gpu(tiny_folder):
    from st_onnx.runtime.providers import cuda_usable

    m = SentenceTransformer(str(tiny_folder), backend="onnx")
    assert m.device == ("cuda:0" if cuda_usable() else "cpu")


def test_device_none_is_the_cpu_where_onnxruntime_lists_cuda_but_no_gpu_is_seen(tiny_folder, monkeypatch):
    """onnxruntime-gpu lists the CUDA provider on machines without a GPU: the default device is the CPU, asked as
    such (no CUDA session that falls back with a warning)."""
    import warnings

    import onnxruntime as ort

    from st_onnx.errors import ProviderFallbackWarning
    from st_onnx.runtime import providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 0)
    assert providers.resolve_device(None) == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        assert SentenceTransformer(str(tiny_folder), backend="onnx").device == "cpu"


@pytest.fixture
def cpu_package_on_a_gpu_machine(monkeypatch):
    """ONNX Runtime's CPU package (no CUDA provider) where the CUDA driver sees a GPU: an aarch64 GPU server, or
    onnxruntime installed beside onnxruntime-gpu, its files on top (found by a review of the CPU package)."""
    import onnxruntime as ort

    from st_onnx.runtime import providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 1)
    return providers


@pytest.mark.parametrize("installed", [["onnxruntime"], ["onnxruntime", "onnxruntime-gpu"]])
def test_cuda_asked_of_the_cpu_package_names_the_package_to_install(tiny_folder, cpu_package_on_a_gpu_machine,
                                                                     monkeypatch, capfd, installed):
    """The warning blamed the CUDA libraries and LD_LIBRARY_PATH, and ONNX Runtime printed its own C++ line about
    a missing provider; the cause is the package, which the warning now names with the commands that fix it."""
    from st_onnx.errors import ProviderFallbackWarning

    monkeypatch.setattr(cpu_package_on_a_gpu_machine, "_installed", lambda name: name in installed)
    capfd.readouterr()
    with pytest.warns(ProviderFallbackWarning) as record:
        model = SentenceTransformer(str(tiny_folder), backend="onnx", device="cuda")
    message = " ".join(str(w.message) for w in record if w.category is ProviderFallbackWarning)
    assert "LD_LIBRARY_PATH" not in message and "pip install onnxruntime-gpu" in message
    assert ("both onnxruntime and onnxruntime-gpu are installed" in message) == (len(installed) == 2), message
    assert "onnxruntime" not in capfd.readouterr().err  # no C++ line from ONNX Runtime besides
    assert model.device == "cpu" and model.encode(SENTENCES).shape[0] == len(SENTENCES)
    with pytest.raises(InvalidInputError, match=r"fp16.*has no CUDAExecutionProvider|fp16.*both onnxruntime"):
        SentenceTransformer(str(tiny_folder), backend="onnx", device="cuda", onnx_options={"precision": "fp16"})


def test_both_onnx_runtime_packages_installed_are_named_once_a_process(tiny_folder, monkeypatch):
    """Both packages ship the same files: where the GPU one's won, all runs until either is uninstalled, which
    takes files the other needs (found by a review of the CPU package). A session warns of it, once."""
    import warnings

    from st_onnx.runtime import providers

    monkeypatch.setattr(providers, "_installed", lambda name: name in ("onnxruntime", "onnxruntime-gpu"))
    providers.warn_if_both_packages.cache_clear()
    try:
        with pytest.warns(UserWarning, match=r"both onnxruntime and onnxruntime-gpu are installed.*Keep one"):
            SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu")  # told once
    finally:
        providers.warn_if_both_packages.cache_clear()


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_token_embeddings_hold_each_texts_own_tokens_not_its_batchs_padding(tiny_folder, st_model, backend):
    """One row per token of the text, as sentence-transformers gives (close() below trims to the shorter array,
    so it would not see rows of padding)."""
    model = SentenceTransformer(str(tiny_folder), backend=backend, device="cpu")
    texts = ["hi", "the quick brown fox jumps over the lazy dog and the cat sleeps", "a dog"]
    lengths = [int(np.asarray(model.tokenize([t])["attention_mask"]).sum()) for t in texts]
    got = model.encode(texts, output_value="token_embeddings", batch_size=8)
    assert [t.shape[0] for t in got] == lengths == [t.shape[0] for t in st_model.encode(
        texts, output_value="token_embeddings")]
    assert len(set(lengths)) == 3


def test_a_graph_without_an_attention_mask_input_is_refused(tmp_path):
    """Its pooling could not leave the padding out: a foreign graph with a sentence_embedding output is not run."""
    from onnx import TensorProto, helper, save

    from st_onnx.runtime.session import OrtSession

    node = helper.make_node("Cast", ["input_ids"], ["sentence_embedding"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "no_mask", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                                ["batch", "seq"])],
                              [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                                             ["batch", "seq"])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "g.onnx"))
    with pytest.raises(GraphFileError, match="attention_mask"):
        OrtSession(tmp_path / "g.onnx", "cpu")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_normalize_embeddings_normalizes_a_model_without_normalize(tmp_path_factory, backend):
    folder = make_tiny_model(tmp_path_factory.mktemp("plain") / "model", normalize=False)
    model = SentenceTransformer(str(folder), backend=backend, device="cpu")
    raw, unit = model.encode(SENTENCES), model.encode(SENTENCES, normalize_embeddings=True)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_modules_with_onnx_backend(tiny_folder, torch_model, tmp_path):
    from st_onnx.modules import load_stack

    m = SentenceTransformer(modules=list(load_stack(tiny_folder)), backend="onnx", device="cpu",
                            cache_folder=str(tmp_path))
    assert close(m.encode(SENTENCES), torch_model.encode(SENTENCES))


def test_copies_of_modules_do_not_pile_up_in_the_cache_and_those_in_use_stay(tiny_folder, tmp_path):
    """modules=[...] with new weights each time (a training loop evaluating on the onnx backend) saved a full
    model folder with its graph into the cache every time, for good (143 MB each for MiniLM int8; found by a
    review of a long-running service). Copies beyond the last few go, unless a live model still uses them."""
    import copy
    import gc

    import torch

    from st_onnx.backends.onnx_backend import KEEP_UNUSED_COPIES
    from st_onnx.modules import load_stack

    modules = list(load_stack(tiny_folder))
    root = tmp_path / "st_onnx_graphs" / "modules"

    def new_weights_model():  # a model of its own modules: the next step's change would leave its graph behind
        with torch.no_grad():
            modules[0].auto_model.embeddings.word_embeddings.weight[0, 0] += 0.01  # a training step
        return SentenceTransformer(modules=copy.deepcopy(modules), backend="onnx", device="cpu",
                                   cache_folder=str(tmp_path))

    def copies():
        return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))

    kept = [new_weights_model() for _ in range(2)]  # in use all along
    kept_folders = [m._backend.folder for m in kept]
    for _ in range(6):
        new_weights_model().encode(["a b c"])
        gc.collect()
    assert len(copies()) == len(kept) + 1 + KEEP_UNUSED_COPIES  # was 8: every copy, for good
    assert all(folder.is_dir() for folder in kept_folders)
    for model in kept:  # their copies are whole: sessions for a pool open their graph again
        assert model.encode(["a b c"], device=["cpu", "cpu"]).shape == (1, 32)
    del kept, model
    gc.collect()
    new_weights_model()
    assert len(copies()) == 1 + KEEP_UNUSED_COPIES


def test_a_modules_copy_stays_while_a_shallow_copy_of_its_model_runs_it_and_unused_ones_are_kept(tiny_folder,
                                                                                              tmp_path):
    """The in-use lock lived as long as the facade, not the backend running the copy's graph: copy.copy(model)
    lost its folder once the original went. And copies in use took the slots of the unused ones kept, so two
    live models newer than them removed every unused copy (found by the review of the change). An unpickled
    model takes the lock of its own."""
    import copy
    import gc
    import pickle

    import torch

    from st_onnx.modules import load_stack

    modules = list(load_stack(tiny_folder))

    def new_weights_model():
        with torch.no_grad():
            modules[0].auto_model.embeddings.word_embeddings.weight[0, 0] += 0.01
        return SentenceTransformer(modules=copy.deepcopy(modules), backend="onnx", device="cpu",
                                   cache_folder=str(tmp_path))

    original = new_weights_model()
    twin = copy.copy(original)
    unpickled = pickle.loads(pickle.dumps(original))  # holds the copy in use too (a DataLoader worker's model)
    unused = [new_weights_model()._backend.folder for _ in range(2)]
    del original
    gc.collect()
    live = [new_weights_model() for _ in range(2)]  # in use, newer than the unused two
    new_weights_model()
    gc.collect()
    assert twin._backend.folder.is_dir() and all(folder.is_dir() for folder in unused)
    assert twin.encode(["a b c"], device=["cpu", "cpu"]).shape == (1, 32)
    del twin
    gc.collect()
    new_weights_model()
    gc.collect()
    assert unpickled._backend.folder.is_dir()
    assert unpickled.encode(["a b c"], device=["cpu", "cpu"]).shape == (1, 32)
    assert all(m.encode(["a b c"]).shape == (1, 32) for m in live)


# -- export once, staleness -----------------------------------------------------------------------------
def _exports(caplog) -> int:
    return sum("exporting the fused" in r.getMessage() for r in caplog.records)


def test_graph_is_exported_once(tiny_model_copy, caplog):
    caplog.set_level(logging.INFO, logger="st_onnx")
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    assert graph.is_file() and _exports(caplog) == 1
    mtime = graph.stat().st_mtime_ns
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert _exports(caplog) == 1 and graph.stat().st_mtime_ns == mtime


def _change_weights(folder):
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    name = next(k for k in weights if "word_embeddings" in k)
    weights[name] = weights[name] * 1.5
    save_file(weights, str(path), metadata={"format": "pt"})


def test_stale_graph_is_re_exported(tiny_model_copy, caplog):
    caplog.set_level(logging.INFO, logger="st_onnx")
    before = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu").encode(SENTENCES)
    _change_weights(tiny_model_copy)
    with pytest.raises(StaleGraphError, match="other weights"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    after = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu").encode(SENTENCES)
    assert _exports(caplog) == 2
    assert not np.allclose(before, after, atol=1e-3)
    ref = SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES)
    assert close(after, ref)


def test_graph_of_an_older_layout_is_re_exported_once(tiny_model_copy, caplog):
    # a graph exported by an older st-onnx (every fusion, no "layout" in its manifest) is correct but slower
    caplog.set_level(logging.INFO, logger="st_onnx")
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    manifest = json.loads(layout.manifest_path(graph).read_text())
    assert manifest["layout"] == layout.GRAPH_LAYOUT
    del manifest["layout"]
    layout.manifest_path(graph).write_text(json.dumps(manifest))
    kept = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    assert _exports(caplog) == 1 and "layout" not in kept._backend.manifest  # used as it is, never exported
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert _exports(caplog) == 2 and caplog.text.count("older st-onnx") == 1  # told once, not per look
    assert json.loads(layout.manifest_path(graph).read_text())["layout"] == layout.GRAPH_LAYOUT
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert _exports(caplog) == 2


def _edit_manifest(folder, **changes):
    """Set (or, with None, remove) keys of the fp32 graph's manifest; returns the graph's path."""
    graph = layout.fused_graph_path(folder, "fp32")
    manifest = json.loads(layout.manifest_path(graph).read_text())
    manifest.update(changes)
    layout.manifest_path(graph).write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))
    return graph


@pytest.mark.parametrize("change", [{"format": "st-onnx-fused/2"}, {"layout": layout.GRAPH_LAYOUT + 1}])
def test_graph_of_a_newer_st_onnx_is_refused_by_name_and_left_alone(tiny_model_copy, change):
    """A downgrade, or an older install sharing the folder: the graph's files may mean what this version does not
    know, so it neither runs it nor exports over it (the newer version would export it again, and so on)."""
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    graph = _edit_manifest(tiny_model_copy, **change)
    before = {p: p.stat().st_mtime_ns for p in graph.parent.iterdir()}
    found = str(next(iter(change.values())))
    for export in ("auto", "never"):
        with pytest.raises(GraphFileError, match=f"exported by a newer st-onnx .*{found}.*upgrade st-onnx"):
            SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": export})
    assert {p: p.stat().st_mtime_ns for p in graph.parent.iterdir()} == before


def test_graph_of_a_foreign_format_is_not_run(tiny_model_copy, caplog):
    caplog.set_level(logging.INFO, logger="st_onnx")
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    _edit_manifest(tiny_model_copy, format="optimum/1")
    with pytest.raises(GraphFileError, match="format 'optimum/1', where st-onnx writes 'st-onnx-fused/1'.*never"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert _exports(caplog) == 2


def test_unchecked_graft_of_the_first_layout_is_not_run_with_export_never(tiny_model_copy, caplog):
    """The first st-onnx's grafts took the folder's fingerprint unchecked; one made from a stale onnx/model.onnx
    embedded another model (cosine -0.3 with the torch modules) and ran with export='never' (found by the
    review of folders across st-onnx versions). Such a manifest vouches for nothing: never refuses it, auto
    exports the graph again."""
    caplog.set_level(logging.INFO, logger="st_onnx")
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    _edit_manifest(tiny_model_copy, layout=None, exporter="graft(model.onnx)",
                   parity={"checked": False, "reason": "grafted with onnx alone"})
    with pytest.raises(StaleGraphError, match="grafted by an older st-onnx.*without checking.*'never'"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    assert _exports(caplog) == 1
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert _exports(caplog) == 2
    _edit_manifest(tiny_model_copy, layout=None, exporter="torch.onnx.export(dynamo=False)")  # checked: runs
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})


def test_module_digest_of_another_scheme_is_not_compared(tiny_model_copy):
    """A graph exported by an st-onnx that digested the modules otherwise (the model config's "architectures"
    included) recorded a digest this one cannot reproduce: compared, it called unchanged modules changed after
    any optimizer step in the process. It is read as no digest, as a graft's: the modules as loaded stand in."""
    from st_onnx.errors import BackendError

    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    _edit_manifest(tiny_model_copy,
                   module_digest="sha256:035ac24a298d3126247bd45ea866c123eabf9a1874d5b10fbf0ab6e57e8dad45")
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    model[1].get_sentence_embedding_dimension()  # model[i] links the torch modules to the graph
    before = model.encode(SENTENCES)
    other = torch.nn.Linear(2, 2)
    other(torch.ones(1, 2)).sum().backward()
    torch.optim.SGD(other.parameters(), lr=0.1).step()  # another model's step: these modules are unchanged
    np.testing.assert_array_equal(model.encode(SENTENCES), before)
    with torch.no_grad():
        next(model[0].parameters()).mul_(1.5)  # and a real change is still seen
    with pytest.raises(BackendError, match="changed in memory"):
        model.encode(SENTENCES)


def test_graph_for_a_newer_onnx_runtime_says_so(tiny_model_copy):
    import onnx

    from st_onnx.export.manifest import file_fields

    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    proto = onnx.load(str(graph))
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 99
    onnx.save(proto, str(graph))
    _edit_manifest(tiny_model_copy, **file_fields(graph))
    with pytest.raises(GraphFileError,
                       match=r"(?s)cannot load .*Opset 99.*needs a newer ONNX Runtime than this one \(1\.\d+"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})


def test_export_never_without_a_graph(tiny_model_copy):
    with pytest.raises(GraphFileError, match="never"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})


def test_read_only_folder_exports_into_the_cache(tiny_model_copy, tmp_path, monkeypatch):
    from st_onnx.runtime import graphs

    monkeypatch.setattr(graphs, "is_writable", lambda folder: False)  # root writes anywhere: the modes tell
    for path in [tiny_model_copy, *tiny_model_copy.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # chmod -R a-w
    cache = tmp_path / "cache"
    try:
        m = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache))
    finally:
        for path in [tiny_model_copy, *tiny_model_copy.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert not layout.fused_graph_path(tiny_model_copy, "fp32").exists()
    assert cache in m._backend.graph_path.parents
    copied = [p for p in cache.rglob("*") if p.is_dir()]  # the copy takes graphs, and can be removed
    assert copied and all(p.stat().st_mode & 0o200 for p in copied)
    again = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache))
    assert again._backend.graph_path == m._backend.graph_path
    assert close(m.encode(SENTENCES), again.encode(SENTENCES))
    (tmp_path / "not_a_folder").write_text("x")  # a cache that cannot be made: the error says how to point it
    with pytest.raises(ModelFolderError, match="read-only and the graph cache .* cannot be written.*ST_ONNX_CACHE"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                            cache_folder=str(tmp_path / "not_a_folder"))


def onnx_bundle(folder, dest):
    """The deployable part of a model folder: configs, tokenizer, fused graph; no torch weights."""
    dest.mkdir(parents=True)
    for item in folder.rglob("*"):
        rel = item.relative_to(folder)
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest / rel)
    return dest


def test_onnx_bundle_without_weights(tiny_folder, onnx_model, tmp_path):
    bundle = onnx_bundle(tiny_folder, tmp_path / "bundle")
    m = SentenceTransformer(str(bundle), backend="onnx", device="cpu")
    assert close(m.encode(SENTENCES), onnx_model.encode(SENTENCES), atol=0)
    with pytest.raises(ModelFolderError, match="neither"):
        SentenceTransformer(str(bundle), backend="onnx", device="cpu", onnx_options={"precision": "int8"})


# -- the real model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_onnx(minilm_dir):
    return SentenceTransformer(str(minilm_dir), backend="onnx", device="cpu")


@pytest.mark.slow
def test_minilm_onnx_matches_torch_on_stsb(minilm_dir, minilm_onnx):
    texts = stsb_sentences(1000)
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=32)
    got = minilm_onnx.encode(texts, batch_size=32)
    assert got.shape == ref.shape == (1000, 384)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.slow
def test_rss_stays_flat_over_mixed_length_encodes(minilm_onnx):
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(0)
    words = " ".join(stsb_sentences(400)).split()

    def batch():
        n = int(rng.integers(1, 6))
        return [" ".join(rng.choice(words, int(rng.integers(2, 160)))) for _ in range(n)]

    for _ in range(5):  # warm-up: kernels, thread pools, first allocations
        minilm_onnx.encode(batch())
    proc = psutil.Process(os.getpid())
    start = proc.memory_info().rss
    for _ in range(50):
        minilm_onnx.encode(batch())
    growth_mb = (proc.memory_info().rss - start) / 2**20
    assert growth_mb < 60, f"RSS grew {growth_mb:.1f} MB over 50 mixed-length encodes"


def test_torchs_cpu_0_is_the_cpu(tiny_folder, onnx_model):
    model = SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu:0")
    assert model.device == "cpu"
    assert close(onnx_model.encode(SENTENCES, device="cpu:0"), onnx_model.encode(SENTENCES))


def test_cuda_asked_cpu_bound_warns(tiny_folder, capfd):
    from st_onnx.errors import ProviderFallbackWarning
    from st_onnx.runtime.providers import cuda_usable

    if cuda_usable():
        pytest.skip("a GPU is usable here: CUDA binds (tests/test_gpu.py covers it)")
    capfd.readouterr()
    with pytest.warns(ProviderFallbackWarning, match="no GPU"):
        m = SentenceTransformer(str(tiny_folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
    # told once, as a warning a caller can filter: not besides by ONNX Runtime's C++ logger on the raw stderr
    assert "onnxruntime" not in capfd.readouterr().err
    assert m.device == "cpu"
    assert m.encode(SENTENCES).shape == (len(SENTENCES), 32)
    with pytest.warns(ProviderFallbackWarning):  # no precision: fp32, since the CPU will run it (fp16 is for CUDA)
        default = SentenceTransformer(str(tiny_folder), backend="onnx", device="cuda")
    assert default._backend.manifest["precision"] == "fp32"
    with pytest.raises(InvalidInputError, match="'fp16' runs on CUDA only.*the CUDA driver reports no GPU"):
        SentenceTransformer(str(tiny_folder), backend="onnx", device="cuda", onnx_options={"precision": "fp16"})
    threads = SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu",
                                  onnx_options={"intra_op_num_threads": np.int64(2), "token_budget": np.int32(512)})
    assert threads._backend._encoder.session.threads == 2  # numpy integers, as the other integer options


def test_parallel_runs_and_intra_op_threads_agree(tiny_folder, onnx_model):
    texts = stsb_sentences(300)
    assert onnx_model._backend._encoder.parallel >= 1
    threaded = SentenceTransformer(str(tiny_folder), backend="onnx", device="cpu",
                                   onnx_options={"intra_op_num_threads": 2})
    assert threaded._backend._encoder.parallel == 1 and threaded._backend._encoder.session.threads == 2
    assert close(threaded.encode(texts, batch_size=16), onnx_model.encode(texts, batch_size=16), atol=1e-6)


def test_fp32_on_cuda_asks_for_true_fp32_unless_told_otherwise():
    """use_tf32=0 and the device's id reach the CUDA provider whether or not ``providers`` are listed; what the
    user says about either wins."""
    from st_onnx.backends.onnx_backend import cuda_defaults
    from st_onnx.runtime.providers import CPU, CUDA, providers_for

    fp32 = cuda_defaults("fp32")
    assert fp32 == {"use_tf32": 0} and cuda_defaults("fp16") == {} and cuda_defaults("int8") == {}
    names, opts = providers_for("cuda:1", None, None, fp32)
    assert names == [CUDA, CPU] and opts[0]["use_tf32"] == 0 and opts[0]["device_id"] == 1 and opts[1] == {}
    assert providers_for("cuda:1", None, {"use_tf32": 1}, fp32)[1][0]["use_tf32"] == 1
    for listed in ([CUDA, CPU], [(CUDA, {}), CPU]):
        names, opts = providers_for("cuda:1", listed, None, fp32)
        assert names == [CUDA, CPU] and opts[0]["use_tf32"] == 0 and opts[0]["device_id"] == 1
    names, opts = providers_for("cuda:1", [(CUDA, {"device_id": 0}), CPU], [{"use_tf32": 1}, {}], fp32)
    assert opts[0]["device_id"] == 0 and opts[0]["use_tf32"] == 1
    assert providers_for("cpu", None, None, fp32) == ([CPU], [{}])


def test_max_seq_length_is_shared_with_the_torch_module_and_saved(tiny_model_copy, tmp_path):
    """sentence-transformers users set ``model[0].max_seq_length``; the graph's tokenizer must follow, both ways,
    and ``save`` must write the value in use."""
    st = pytest.importorskip("sentence_transformers")
    texts = ["one two three four five six seven eight nine ten eleven twelve", "a cat"]
    reference = st.SentenceTransformer(str(tiny_model_copy), device="cpu")
    reference[0].max_seq_length = 6
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    model[0].max_seq_length = 6
    assert model.max_seq_length == 6 and model.tokenize(texts)["input_ids"].shape == (2, 6)
    np.testing.assert_allclose(model.encode(texts), reference.encode(texts), atol=1e-5)
    model.max_seq_length = 5
    assert model[0].max_seq_length == 5
    model.save(str(tmp_path / "saved"))
    assert st.SentenceTransformer(str(tmp_path / "saved"), device="cpu").max_seq_length == 5
    fresh = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    fresh.max_seq_length = 7  # set before the torch modules load: they take it over
    assert fresh[0].max_seq_length == 7
    assert model.tokenize([]) == {} == reference.tokenize([])


def _as_if_saved_by_older_transformers(folder):
    """config.json as transformers 4 wrote it (its own version, fewer default keys): same model, other bytes."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(transformers_version="4.8.2", _name_or_path="someone/original")
    for key in ("dtype", "add_cross_attention", "tie_word_embeddings"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=1))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_save_carries_the_graph_when_the_modules_are_unchanged(tiny_model_copy, tmp_path, backend, caplog):
    """Saving re-writes config.json and the weights (new bytes, new fingerprint): the graph still computes the
    saved modules, so it goes along with the new fingerprint, and the saved folder needs no export."""
    caplog.set_level(logging.INFO, logger="st_onnx")
    _as_if_saved_by_older_transformers(tiny_model_copy)
    expected = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu").encode(SENTENCES)
    model = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    model.save(str(tmp_path / "saved"))
    from st_onnx.fingerprint import folder_fingerprint

    assert folder_fingerprint(tmp_path / "saved") != folder_fingerprint(tiny_model_copy)  # the files did change
    assert sorted(p.name for p in (tmp_path / "saved" / layout.FUSED_DIR).iterdir()) == ["fp32.json", "fp32.onnx"]
    kept = SentenceTransformer(str(tmp_path / "saved"), backend="onnx", device="cpu", onnx_options={"export": "never"})
    np.testing.assert_array_equal(kept.encode(SENTENCES), expected)
    assert _exports(caplog) == 1
    # changed modules leave the graph behind: a weight, or the pooling (include_prompt changes the graph)
    with torch.no_grad():
        model[0].auto_model.embeddings.word_embeddings.weight[5] += 0.5
    model.save(str(tmp_path / "weights"))
    model = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    model.set_pooling_include_prompt(False)
    model.save(str(tmp_path / "pooling"))
    for folder in ("weights", "pooling"):
        assert not (tmp_path / folder / layout.FUSED_DIR).exists(), folder
    assert sum("not carrying fp32.onnx" in r.getMessage() for r in caplog.records) == 2


def test_torch_modules_changed_in_memory_are_refused_rather_than_encoded_with_the_old_graph(tiny_model_copy):
    """``model[i]`` are the modules the graph was exported from: once their weights or settings change in memory
    (an optimizer step over ``model.parameters()``, a pooling mode), the graph computes something else, and
    encoding with it would return the old model's embeddings without a word."""
    from st_onnx.errors import BackendError

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    before = model.encode(SENTENCES)
    model[1].pooling_mode = "max"
    with pytest.raises(BackendError, match=r"changed in memory.*model\[1\] \(Pooling\).*pooling_mode_max_tokens"):
        model.encode(SENTENCES)
    with model.start_multi_process_pool(["cpu"]) as pool:  # the pool's sessions run the same graph
        with pytest.raises(BackendError, match="changed in memory"):
            model.encode(SENTENCES, pool=pool)
    model[1].pooling_mode = "mean"  # back to what the graph computes
    np.testing.assert_array_equal(model.encode(SENTENCES), before)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    features = {k: torch.from_numpy(v) for k, v in model.tokenize(SENTENCES).items()}
    model.forward(features)["sentence_embedding"].sum().backward()
    optimizer.step()
    with pytest.raises(BackendError, match=r"model\[0\] \(Transformer\): its tensor 'auto_model\..*Save the model"):
        model.encode(SENTENCES[0])


def test_a_fused_optimizer_step_is_seen_too(tiny_model_copy):
    """A fused AdamW step (transformers' Trainer's default) moves no tensor's version counter: the optimizer steps
    taken are counted as well (found by the review of the in-memory check)."""
    from st_onnx.errors import BackendError

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    features = {k: torch.from_numpy(v) for k, v in model.tokenize(SENTENCES).items()}
    model.forward(features)["sentence_embedding"].sum().backward()
    versions = [p._version for p in model.parameters()]
    optimizer.step()
    assert [p._version for p in model.parameters()] == versions  # what the marks alone did not see
    with pytest.raises(BackendError, match="changed in memory.*after an optimizer step"):
        model.encode(SENTENCES[0])


def test_modules_made_under_inference_mode_link(tiny_model_copy, tmp_path):
    """Tensors made under torch.inference_mode() keep no version counter (reading it raises): such modules were
    refused at construction (found by the review of the in-memory check)."""
    from st_onnx.models import Dense
    from st_onnx.modules import load_stack

    with torch.inference_mode():
        modules = [*load_stack(tiny_model_copy), Dense(32, 8)]
    assert modules[-1].linear.weight.is_inference()
    model = SentenceTransformer(modules=modules, backend="onnx", device="cpu", cache_folder=str(tmp_path))
    assert model.encode(SENTENCES).shape == (len(SENTENCES), 8)


def test_shared_settings_and_the_same_weights_loaded_again_are_no_change(tiny_model_copy):
    """max_seq_length and include_prompt reach the graph; weights written again with the same values (their
    version counters move) are compared by content and pass."""
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    before = model.encode(SENTENCES)
    model[0].auto_model.load_state_dict({k: v.clone() for k, v in model[0].auto_model.state_dict().items()})
    model[1].include_prompt = False
    model[0].max_seq_length = 8
    assert model.encode(SENTENCES).shape == before.shape  # no BackendError
    model[0].max_seq_length, model[1].include_prompt = 128, True
    np.testing.assert_array_equal(model.encode(SENTENCES), before)


def test_a_text_longer_than_the_model_takes_raises_a_runtime_error(tiny_model_copy):
    """As torch does (RuntimeError): ONNX Runtime's own exception types subclass no builtin, so they are wrapped."""
    from st_onnx.errors import GraphRunError

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    model.max_seq_length = 200  # the tiny BERT has 128 position embeddings
    with pytest.raises(RuntimeError, match=r"(?s)input_ids shape \(1, 200\).*lower max_seq_length") as info:
        model.encode(["the " * 300])
    assert isinstance(info.value, GraphRunError)
    model.max_seq_length = 128
    assert model.encode(["the " * 300]).shape == (1, 32)
    session = model._backend.new_session("cpu")
    assert session.max_positions == 128
    feed = {"input_ids": np.array([[2, 10**6, 3]]), "attention_mask": np.ones((1, 3), dtype=np.int64),
            "token_type_ids": np.zeros((1, 3), dtype=np.int64)}  # an id past the vocabulary: not a length problem
    with pytest.raises(GraphRunError, match=r"shape \(1, 3\)") as info:
        session.run(feed, ["sentence_embedding"])
    assert "max_seq_length" not in str(info.value)


def test_a_graph_that_is_not_the_one_its_manifest_describes_is_never_run(tiny_model_copy, tmp_path, caplog):
    """Another model's graph copied over this one's (same size), or a cut-short manifest: re-exported with
    export='auto', refused with export='never'; a broken stat record (a cache) is only checked again."""
    from helpers import make_tiny_model

    caplog.set_level(logging.INFO, logger="st_onnx")
    expected = SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES)
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    other = make_tiny_model(tmp_path / "other", seed=7)
    SentenceTransformer(str(other), backend="onnx", device="cpu")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    shutil.copyfile(layout.fused_graph_path(other, "fp32"), graph)
    with pytest.raises(GraphFileError, match="not the graph its manifest describes.*'never'"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert "exporting the graph again" in caplog.text
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-5)
    stat = graph.with_name("fp32.stat.json")
    stat.write_text('{"fingerp')  # a crash mid-write, or a reader racing a writer: only a cache
    np.testing.assert_allclose(SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                                                   onnx_options={"export": "never"}).encode(SENTENCES), expected,
                               atol=1e-5)
    layout.manifest_path(graph).write_text('{"format": "st-onnx-fu')
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-5)
    layout.manifest_path(graph).unlink()
    with pytest.raises(GraphFileError, match="has no manifest.*'never'"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})


def test_a_module_folder_linked_from_elsewhere_is_watched_too(tiny_model_dir, tmp_path):
    """The stat record covers the files the fingerprint hashes, through symbolic links: weights changed in a
    linked module folder make the graph stale, as the fingerprint says."""
    from helpers import make_tiny_model

    folder = make_tiny_model(tmp_path / "model", dense=8)
    shutil.move(str(folder / "2_Dense"), str(tmp_path / "dense"))
    os.symlink(tmp_path / "dense", folder / "2_Dense")
    SentenceTransformer(str(folder), backend="onnx", device="cpu").encode(SENTENCES)
    from safetensors.torch import load_file, save_file

    weights = {k: -1.5 * v for k, v in load_file(str(tmp_path / "dense" / "model.safetensors")).items()}
    save_file(weights, str(tmp_path / "dense" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StaleGraphError, match="other weights"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"export": "never"})
    got = SentenceTransformer(str(folder), backend="onnx", device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(got, SentenceTransformer(str(folder), device="cpu").encode(SENTENCES), atol=1e-5)


def test_config_args_saved_for_the_transformer_count_in_the_fingerprint(tiny_model_copy):
    """sentence_bert_config.json's config_args shape the loaded model, so changing them makes the graph stale;
    its max_seq_length does not (the graph's sequence axis is dynamic)."""
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu").encode(SENTENCES)
    config_file = tiny_model_copy / layout.SBERT_CONFIG_JSON
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "max_seq_length": 16}))
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    config_file.write_text(json.dumps({**config, "config_args": {"layer_norm_eps": 0.5}}))
    with pytest.raises(StaleGraphError, match="other weights"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    got = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu").encode(SENTENCES)
    want = SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_folder_of_just_the_graph_and_tokenizer_json_keeps_the_exported_settings(tiny_model_copy, tmp_path):
    """Without sentence_bert_config.json and config.json, the manifest's max_seq_length (64 here; the tokenizer
    alone would allow 512 and the position table holds 128) and do_lower_case (True, over a tokenizer.json that
    keeps case) are what the graph was exported with."""
    folder = tiny_model_copy
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((folder / layout.SBERT_CONFIG_JSON).read_text())
    (folder / layout.SBERT_CONFIG_JSON).write_text(json.dumps({**config, "do_lower_case": True}))
    full = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    bare = tmp_path / "bare"
    graphs = bare / "onnx" / "st_onnx"
    graphs.mkdir(parents=True)
    for name in ("fp32.onnx", "fp32.json"):
        shutil.copy(folder / "onnx" / "st_onnx" / name, graphs / name)
    shutil.copy(folder / "tokenizer.json", bare / "tokenizer.json")
    model = SentenceTransformer(str(bare), backend="onnx", device="cpu", onnx_options={"export": "never"})
    assert model.max_seq_length == full.max_seq_length == 64
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)  # 180 tokens
    texts = [long_text, "The Cat RUNS"]
    assert np.allclose(model.encode(texts), full.encode(texts), atol=1e-6)
    assert np.allclose(full.encode(texts), SentenceTransformer(str(folder), device="cpu").encode(texts), atol=1e-5)


def test_a_full_folder_keeps_its_own_max_seq_length_over_the_manifests(tiny_model_copy):
    """The manifest's max_seq_length may be stale (changing it does not re-export the graph): a folder with its
    configs resolves the length as the torch modules do."""
    folder = tiny_model_copy
    SentenceTransformer(str(folder), backend="onnx", device="cpu")  # exported at max_seq_length 64
    config = json.loads((folder / layout.SBERT_CONFIG_JSON).read_text())
    del config["max_seq_length"]
    (folder / layout.SBERT_CONFIG_JSON).write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / layout.TOKENIZER_CONFIG_JSON).read_text())
    tokenizer_config["model_max_length"] = int(1e30)  # transformers' "no limit": the position table (128) rules
    (folder / layout.TOKENIZER_CONFIG_JSON).write_text(json.dumps(tokenizer_config))
    onnx = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"export": "never"})
    assert onnx.max_seq_length == SentenceTransformer(str(folder), device="cpu").max_seq_length == 128


def test_a_model_loaded_from_a_relative_path_keeps_its_folder_when_the_directory_changes(tiny_model_dir, tmp_path,
                                                                                         monkeypatch):
    """The onnx backend reads its folder again after loading (torch modules on first use by save or model[0],
    sessions for a pool): from a relative path, that read the folder of the same name in the new working
    directory (save wrote another model's weights: cosine -0.29), or failed."""
    shutil.copytree(tiny_model_dir, tmp_path / "a" / "model")
    make_tiny_model(tmp_path / "b" / "model", seed=1)  # another model under the same relative name
    monkeypatch.chdir(tmp_path / "a")
    model = SentenceTransformer("model", backend="onnx", device="cpu")
    want = model.encode(SENTENCES)
    monkeypatch.chdir(tmp_path / "b")
    model.save(str(tmp_path / "saved"))
    assert close(SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(SENTENCES), want)
    assert close(model.encode(SENTENCES, device=["cpu", "cpu"]), want)


@pytest.mark.parametrize("stale", [False, True])
def test_refusals_name_the_export_command_of_the_precision_asked(tiny_model_copy, stale):
    """The CLI exports fp32 unless told: a refused int8 load that named `st-onnx export DIR DIR` sent the user
    to export fp32 and be refused again (minutes each, for a 2 GB model; found by the review of a model over 2 GB)."""
    options = {"precision": "int8", "export": "never"}
    if stale:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"precision": "int8"})
        _change_weights(tiny_model_copy)
    with pytest.raises(GraphFileError if not stale else StaleGraphError) as caught:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options=options)
    folder = shlex.quote(str(tiny_model_copy))  # quoted where pytest's base folder has a space
    assert f"`st-onnx export {folder} {folder} --precision int8`" in str(caught.value)
    graph = layout.fused_graph_path(tiny_model_copy, "int8")
    if stale:  # file_name names the graph: its manifest tells the precision
        with pytest.raises(StaleGraphError, match="--precision int8"):
            SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                                onnx_options={"file_name": str(graph)})


def test_export_command_names_the_precision():
    assert layout.export_command("fp32") == "st-onnx export MODEL_DIR MODEL_DIR"
    assert layout.export_command("fp16", "a", "b") == "st-onnx export a b --precision fp16"
    assert layout.export_command(None) == "st-onnx export MODEL_DIR MODEL_DIR"
    assert [layout.graph_precision(n) for n in ("int8.onnx", "fp16-packed.onnx", "model.onnx", "fp32.onnx.data")] \
        == ["int8", "fp16", None, "fp32"]


def test_prepacking_as_the_readme_turns_it_on_reaches_the_session_once(tiny_model_copy, capfd):
    """fp32 weights are not prepacked by default (bulk encoding); the README's setting for one-query servers turns
    it on, and goes in over st-onnx's own entry rather than beside it (ONNX Runtime printed a warning for the key
    added twice on every load)."""
    default = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    capfd.readouterr()
    setting = {"session_options": {"config_entries": {"session.disable_prepacking": "0"}}}
    on = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options=setting)
    assert "already exists" not in capfd.readouterr().err

    def entry(model):
        options = model._backend._encoder.session._session.get_session_options()
        return options.get_session_config_entry("session.disable_prepacking")

    assert (entry(default), entry(on)) == ("1", "0")
    np.testing.assert_allclose(on.encode(SENTENCES), default.encode(SENTENCES), atol=1e-6)


def test_a_newer_graph_in_the_cache_leaves_the_folders_own_graph_running(tiny_model_copy, tmp_path):
    """A newer st-onnx re-exports a read-only folder's graph into the shared cache: this version then still runs
    the folder's own fresh graph (it refused to load the folder at all; found by the review of this change)."""
    from st_onnx.runtime.graphs import cache_dir_for

    cache = tmp_path / "cache"
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache))
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    cached = layout.fused_graph_path(cache_dir_for(tiny_model_copy, str(cache)), "fp32")
    folders.copy_graph(graph, cached.parent)
    manifest = json.loads(layout.manifest_path(graph).read_text())
    layout.manifest_path(cached).write_text(json.dumps({**manifest, "layout": layout.GRAPH_LAYOUT + 1}))
    for export in ("auto", "never"):
        model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache),
                                    onnx_options={"export": export})
        assert model._backend.graph_path == graph
    _change_weights(tiny_model_copy)  # the folder's graph stale: exported again into the folder, the cache's kept
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache))
    assert model._backend.graph_path == graph
    assert json.loads(layout.manifest_path(cached).read_text())["layout"] == layout.GRAPH_LAYOUT + 1


def test_save_carries_a_newer_st_onnx_graph_as_it_is(tiny_model_copy, tmp_path):
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"precision": "int8"})
    newer = layout.fused_graph_path(tiny_model_copy, "int8")
    layout.manifest_path(newer).write_text(json.dumps({**json.loads(layout.manifest_path(newer).read_text()),
                                                      "format": "st-onnx-fused/2"}))
    SentenceTransformer(str(tiny_model_copy), device="cpu").save(str(tmp_path / "copy"))
    copied = tmp_path / "copy" / newer.relative_to(tiny_model_copy)  # dropped before, as "unreadable"
    assert copied.read_bytes() == newer.read_bytes()
    assert layout.manifest_path(copied).read_text() == layout.manifest_path(newer).read_text()
    with pytest.raises(GraphFileError, match=r"newer st-onnx.*--precision int8"):  # the manifest's precision
        SentenceTransformer(str(tmp_path / "copy"), backend="onnx", device="cpu",
                            onnx_options={"file_name": str(newer.relative_to(tiny_model_copy))})


def test_newer_check_reads_only_ascii_format_numbers(tmp_path):
    from st_onnx.export.manifest import refuse_newer

    refuse_newer(tmp_path / "fp32.onnx", {"format": "st-onnx-fused/\u00b2"})  # not a number: no newer format
    with pytest.raises(GraphFileError, match="newer st-onnx"):
        refuse_newer(tmp_path / "fp32.onnx", {"format": "st-onnx-fused/12"})


def test_check_graph_names_a_newer_st_onnx(tiny_model_copy):
    """The public check (export kit, deployments) says the same as a load: it said 'Re-export the graph' of a
    newer format and passed a newer layout."""
    from st_onnx.errors import NewerGraphError
    from st_onnx.export import check_graph

    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    for change in ({"format": "st-onnx-fused/2"}, {"layout": layout.GRAPH_LAYOUT + 1}):
        graph = _edit_manifest(tiny_model_copy, **change)
        with pytest.raises(NewerGraphError, match="exported by a newer st-onnx.*upgrade st-onnx"):
            check_graph(graph)
        _edit_manifest(tiny_model_copy, format="st-onnx-fused/1", layout=layout.GRAPH_LAYOUT)


def test_export_command_quotes_paths_and_names_the_precision_of_a_read_only_folder(tiny_model_copy, tmp_path,
                                                                                    monkeypatch):
    from st_onnx.runtime import graphs

    line = layout.export_command("int8", "/tmp/my models/m", "NEW_DIR")
    assert shlex.split(line) == ["st-onnx", "export", "/tmp/my models/m", "NEW_DIR", "--precision", "int8"]
    monkeypatch.setattr(graphs, "is_writable", lambda folder: False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="MODEL_DIR NEW_DIR --precision int8"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(tmp_path / "file"),
                            onnx_options={"precision": "int8"})


def _mark_newer(graph):
    manifest = json.loads(layout.manifest_path(graph).read_text())
    layout.manifest_path(graph).write_text(json.dumps({**manifest, "layout": layout.GRAPH_LAYOUT + 1}))


def test_save_after_training_leaves_a_newer_graph_of_the_old_weights_behind(tiny_model_copy, tmp_path):
    """Carried, a newer st-onnx's graph of the old weights kept this version from exporting the trained folder's
    own graph (found by the review of carrying such graphs)."""
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    _mark_newer(layout.fused_graph_path(tiny_model_copy, "fp32"))
    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    model.save(str(tmp_path / "trained"))
    assert not layout.fused_graph_path(tmp_path / "trained", "fp32").exists()
    loaded = SentenceTransformer(str(tmp_path / "trained"), backend="onnx", device="cpu")
    assert loaded._backend.graph_path == layout.fused_graph_path(tmp_path / "trained", "fp32")


def test_export_never_names_the_folders_stale_graph_not_the_caches_newer_one(tiny_model_copy, tmp_path):
    from st_onnx.runtime.graphs import cache_dir_for

    cache = tmp_path / "cache"
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache))
    cached = layout.fused_graph_path(cache_dir_for(tiny_model_copy, str(cache)), "fp32")
    folders.copy_graph(layout.fused_graph_path(tiny_model_copy, "fp32"), cached.parent)
    _mark_newer(cached)
    _change_weights(tiny_model_copy)
    with pytest.raises(StaleGraphError, match="exported from other weights"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", cache_folder=str(cache),
                            onnx_options={"export": "never"})


def test_a_newer_packed_graph_leaves_a_usable_one_running(tmp_path):
    import hashlib

    from st_onnx.errors import NewerGraphError
    from st_onnx.export.manifest import FORMAT
    from st_onnx.runtime import graphs

    folder, cache = tmp_path / "m", tmp_path / "cache"
    padded = layout.fused_graph_path(folder, "fp16")
    padded.parent.mkdir(parents=True)
    padded.write_bytes(b"padded")
    choice = graphs.GraphChoice(padded, {"precision": "fp16", "graph_sha256": "abc", "format": FORMAT}, False)

    def put(path, **extra):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"packed")
        layout.manifest_path(path).write_text(json.dumps({
            "format": FORMAT, "precision": "fp16", "graph_bytes": 6, "packing": {"source_sha256": "abc"},
            "graph_sha256": "sha256:" + hashlib.sha256(b"packed").hexdigest(), **extra}))

    put(layout.packed_graph_path(padded), layout=layout.GRAPH_LAYOUT + 1)
    cached = layout.packed_graph_path(layout.fused_graph_path(graphs.cache_dir_for(folder, str(cache)), "fp16"))
    put(cached)
    assert graphs.find_packed(folder, choice, export="never", cache_folder=str(cache)).path == cached
    cached.unlink()  # only the newer one: packing would write over it
    with pytest.raises(NewerGraphError, match="newer st-onnx"):
        graphs.find_packed(folder, choice, cache_folder=str(cache), packer=lambda *a: pytest.fail("packed"))
