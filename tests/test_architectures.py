"""Encoders other than BERT, exported and run: the graph must compute what the torch modules compute.

Tiny random models built here (helpers.make_tiny_encoder); each architecture brings something BERT has not
(no token types, positions from the padding id, relative attention bias, rotary and sliding-window attention,
a decoder padded on the left and pooled on its last token, disentangled attention with token types the tokenizer
makes and the model ignores, an encoder-decoder's encoder, bidirectional sliding-window masks built with vmap).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ARCHITECTURES, SENTENCES, SEQ2SEQ_ENCODERS, make_tiny_encoder, make_tiny_seq2seq_encoder
from st_onnx import SentenceTransformer, layout

TEXTS = SENTENCES + [" ".join(SENTENCES) * 3]  # the last is cut at max_seq_length (64 tokens)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def encoder(request, tmp_path_factory):
    return request.param, make_tiny_encoder(tmp_path_factory.mktemp(request.param) / "model", request.param)


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_graph_matches_the_torch_modules(encoder):
    arch, folder = encoder
    torch_model = SentenceTransformer(str(folder), device="cpu")
    onnx_model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    manifest = onnx_model._backend.manifest
    assert manifest["inputs"] == ["input_ids", "attention_mask"]  # none of them takes token_type_ids
    if arch == "deberta-v2":  # its tokenizer makes them; the traced graph (type_vocab_size 0) has no such input
        assert "token_type_ids" in torch_model.tokenize(["hi"])
    if arch == "t5":  # sentence-t5's encoder, not T5Model (whose forward asks for decoder inputs)
        assert type(torch_model[0].auto_model).__name__ == "T5EncoderModel"
    assert "left_padding_shift" not in manifest  # Qwen pads on the left, but its rotary positions do not shift
    import onnx  # no control flow (If, Loop), whose subgraphs cost ORT's shape inference a copy of every weight

    graph = onnx.load(str(layout.fused_graph_path(folder, "fp32")), load_external_data=False).graph
    assert not {"If", "Loop"} & {n.op_type for n in graph.node}
    assert max(len(ids) for ids in onnx_model.tokenize(TEXTS)["attention_mask"]) == 64
    # the graph's batches are padded with the model's own padding token (Qwen's is named in its config only)
    assert onnx_model._backend.text_tokenizer.pad_id == torch_model.tokenizer.pad_token_id
    want = torch_model.encode(TEXTS, batch_size=4)  # mixed lengths in every batch: padding must not leak
    assert _cosines(want, onnx_model.encode(TEXTS, batch_size=4)).min() > 0.99999
    left = torch_model.tokenizer.padding_side == "left"
    for r, g in zip(torch_model.encode(TEXTS, output_value="token_embeddings", batch_size=4),
                    onnx_model.encode(TEXTS, output_value="token_embeddings", batch_size=4)):
        if left:  # sentence-transformers (and the torch backend) keep a left-padded text's leading pad rows
            assert r.shape[0] >= g.shape[0]
            r = r[r.shape[0] - g.shape[0]:]
        assert r.shape == g.shape and np.abs(r.numpy() - g).max() < 1e-4


def test_int8_exports_within_its_parity_bounds(encoder):
    arch, folder = encoder
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"precision": "int8"})
    manifest = json.loads(layout.manifest_path(model._backend.graph_path).read_text())
    assert manifest["parity"]["passed"] is True and manifest["quantization"]
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    assert _cosines(reference, model.encode(TEXTS)).min() > 0.96


def test_sentence_transformers_reads_the_folder_alike(encoder):
    st = pytest.importorskip("sentence_transformers")
    arch, folder = encoder
    ours = SentenceTransformer(str(folder), device="cpu")
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    assert ours.max_seq_length == theirs.max_seq_length == 64
    np.testing.assert_allclose(ours.encode(TEXTS), theirs.encode(TEXTS), atol=1e-5)


def test_spaces_and_prompts_are_tokenized_as_sentence_transformers_does(encoder, tmp_path):
    """Texts and prompts go to the tokenizer as given (sentence-transformers 6 does not strip them): on a
    byte-level BPE tokenizer a space is a token, so stripping would change embeddings and prompt lengths."""
    st = pytest.importorskip("sentence_transformers")
    import shutil

    arch, folder = encoder
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    reference = st.SentenceTransformer(str(copy), device="cpu", prompts={"query": "query: "})
    reference.set_pooling_include_prompt(False)
    reference.save(str(copy))
    texts = ["  the cat sleeps \n", "the cat sleeps", " a dog"]
    cases = [{}, {"prompt_name": "query"}]
    want = [reference.encode(texts, **kwargs) for kwargs in cases]
    if arch in ("roberta", "modernbert"):  # byte-level BPE: the spaces are tokens
        assert not np.allclose(want[0][0], want[0][1], atol=1e-4)
    for backend in ("torch", "onnx"):
        model = SentenceTransformer(str(copy), backend=backend, device="cpu")
        for kwargs, expected in zip(cases, want):
            np.testing.assert_allclose(model.encode(texts, **kwargs), expected, atol=1e-5)


def test_the_bundle_tokenizer_pads_with_the_model_pad_token(encoder):
    """export/make_bundle.py's tokenizer.json pads with the id st-onnx and transformers pad with (Qwen's
    '<|endoftext|>' is named in its tokenizer config only), on the right."""
    import importlib.util
    from pathlib import Path

    arch, folder = encoder
    path = Path(__file__).resolve().parents[1] / "export" / "make_bundle.py"
    spec = importlib.util.spec_from_file_location("make_bundle", path)
    make_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_bundle)
    tok, pad_id = make_bundle.bundle_tokenizer(folder, 64, do_lower_case=False)
    assert pad_id == SentenceTransformer(str(folder), device="cpu").tokenizer.pad_token_id
    short, long = tok.encode_batch(["hi", TEXTS[-1]])
    assert len(short.ids) == len(long.ids) == 64 and short.ids[-1] == pad_id and short.attention_mask[-1] == 0


def test_a_model_the_tracer_cannot_follow_fails_naming_it(tiny_model_copy, monkeypatch):
    """torch.onnx.export's own error comes from deep inside the tracer (EmbeddingGemma's vmap masks gave
    'RuntimeError: unordered_map::at' before they were built by broadcasting) and names no model."""
    import torch

    from st_onnx.errors import BackendError

    def untraceable(*args, **kwargs):
        raise RuntimeError("unordered_map::at")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    with pytest.raises(BackendError, match=r"BertModel \(model_type 'bert'\) cannot be traced into an ONNX graph "
                                           r"by torch.onnx.export: RuntimeError: unordered_map::at; backend='torch'"):
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert not (tiny_model_copy / "onnx").exists()  # no empty onnx/st_onnx/ left behind
    assert SentenceTransformer(str(tiny_model_copy), device="cpu").encode(["a cat"]).shape[0] == 1


@pytest.mark.parametrize("error", ["CUDA out of memory. Tried to allocate 2.00 GiB",
                                   "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory",
                                   "Could not allocate bytes object!"])
def test_running_out_of_memory_while_tracing_is_not_called_an_untraceable_model(tiny_model_copy, monkeypatch, error):
    """torch's allocators raise RuntimeError: measured on all-MiniLM-L6-v2 with RLIMIT_AS 200 MB above the process,
    the export said 'BertModel ... cannot be traced ... Could not allocate bytes object!'."""
    import torch

    def out_of_memory(*args, **kwargs):
        raise (torch.OutOfMemoryError if error.startswith("CUDA") else RuntimeError)(error)

    monkeypatch.setattr(torch.onnx, "export", out_of_memory)
    with pytest.raises(RuntimeError, match="allocate") as info:
        SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    assert "cannot be traced" not in str(info.value)


@pytest.mark.parametrize("model_type", ["mt5", "umt5"])
def test_a_full_mt5_checkpoint_loads_its_encoder_quietly_as_sentence_transformers(tmp_path, model_type):
    """sentence-transformers loads the encoder of a checkpoint saved whole (encoder and decoder) and says nothing;
    MT5EncoderModel and UMT5EncoderModel listed every decoder weight as UNEXPECTED (a subprocess: pytest's capture
    of transformers' report depends on the tests before)."""
    import subprocess
    import sys

    import transformers as tf

    folder = make_tiny_encoder(tmp_path / "t5", "t5")
    config = json.loads((folder / "config.json").read_text())
    for key in ("architectures", "model_type", "transformers_version"):
        config.pop(key, None)
    config_class, full = {"mt5": (tf.MT5Config, tf.MT5Model), "umt5": (tf.UMT5Config, tf.UMT5Model)}[model_type]
    (folder / "model.safetensors").unlink()
    full(config_class(**config)).save_pretrained(folder)
    code = ("import sys; from st_onnx import SentenceTransformer; m = SentenceTransformer(sys.argv[1], device='cpu'); "
            "cls = type(m[0].auto_model); print(cls.__name__, cls.__dict__.get('_keys_to_ignore_on_load_unexpected'))")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    name = {"mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}[model_type]
    assert run.stdout.split()[0] == name and "decoder" not in run.stdout  # the class is left as it was
    assert "UNEXPECTED" not in run.stderr


@pytest.mark.parametrize("model_type", sorted(set(SEQ2SEQ_ENCODERS) - {"pegasus_x", "switch_transformers"}))
def test_the_encoder_of_an_encoder_decoder_family_loads_and_exports_as_sentence_transformers_loads_it(
        tmp_path, model_type):
    """sentence-transformers 6 loads these families' encoders alone (MarianEncoder, ...), and saves them so: their
    folders failed here, AutoModel building the whole model, whose forward asks for decoder inputs ('You cannot
    specify both decoder_input_ids and decoder_inputs_embeds')."""
    import sentence_transformers as st

    folder = make_tiny_seq2seq_encoder(tmp_path / "m", model_type)
    theirs = st.SentenceTransformer(str(folder), device="cpu")
    ours = SentenceTransformer(str(folder), device="cpu")
    assert type(ours[0].auto_model) is type(theirs[0].auto_model)
    expected = theirs.encode(TEXTS)
    np.testing.assert_allclose(ours.encode(TEXTS), expected, atol=1e-6)
    onnx = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    np.testing.assert_allclose(onnx.encode(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize("model_type, why", [("switch_transformers", "mixture-of-experts"),
                                             ("pegasus_x", "block-local attention")])
def test_a_model_whose_graph_a_trace_cannot_capture_is_refused_naming_why(tmp_path, model_type, why):
    """Their traced graphs fix what depends on the texts to the tracing batch's: ONNX Runtime failed on other texts
    ('Cannot split using values in split attribute', 'cannot be reshaped'), or could run them wrongly."""
    from st_onnx.errors import BackendError

    folder = make_tiny_seq2seq_encoder(tmp_path / "m", model_type)
    assert SentenceTransformer(str(folder), device="cpu").encode(TEXTS).shape == (len(TEXTS), 32)
    with pytest.raises(BackendError, match=rf"\(model_type '{model_type}'\) has no fused graph: its {why}.*"
                                           r"backend='torch' runs it"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert not (folder / "onnx").exists()


def test_a_graph_onnx_runtime_cannot_run_on_the_parity_texts_fails_naming_the_model(tmp_path, monkeypatch):
    """Pegasus-X's graph, let through: ONNX Runtime failed on the parity texts with a bare 'Fail:
    [ONNXRuntimeError] ... Reshape ...' naming no model."""
    from st_onnx.errors import BackendError
    from st_onnx.export import exporter

    monkeypatch.setattr(exporter, "_UNTRACEABLE_MODELS", {})
    folder = make_tiny_seq2seq_encoder(tmp_path / "m", "pegasus_x")
    with pytest.raises(BackendError, match=r"graph traced from PegasusXEncoder \(model_type 'pegasus_x'\) does "
                                           r"not run in ONNX Runtime on the parity texts: .*backend='torch' runs it"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert not (folder / "onnx").exists()


@pytest.mark.parametrize("arch", ["t5", "gemma3"])
def test_an_int8_export_logs_no_quantizer_type_inference_warnings(tmp_path, arch, caplog):
    """The quantizer warned 'Failed to infer data type of tensor ... Please add data type info for this tensor if
    your model has customized operators' four times per layer (the attention's activation-by-activation MatMuls,
    which are never quantized anyway): 8 WARNING lines on the tiny models, ~96 on EmbeddingGemma, printed by
    `st-onnx export --precision int8` and every int8 load that exports."""
    import logging

    from st_onnx.export import export_model_folder

    folder = make_tiny_encoder(tmp_path / "m", arch)
    with caplog.at_level(logging.WARNING):
        export_model_folder(folder, "int8")
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("onnxruntime")]
    assert not noise, noise[:2]


@pytest.mark.parametrize("build", ["t5-full-checkpoint", "bert-for-masked-lm"])
def test_a_save_carries_the_graph_of_a_checkpoint_whose_config_names_another_class(tmp_path, build, caplog):
    """save_pretrained rewrites config.architectures in memory (T5ForConditionalGeneration -> T5EncoderModel,
    BertForMaskedLM -> BertModel, as all-mpnet-base-v2's MPNetForMaskedLM), which changed content_digest: the
    fused graph of the very same modules was 'exported from other weights', left behind, exported again."""
    import logging

    import transformers as tf

    from helpers import make_tiny_model

    if build == "t5-full-checkpoint":
        folder = make_tiny_encoder(tmp_path / "m", "t5")
        config = json.loads((folder / "config.json").read_text())
        for key in ("architectures", "model_type", "transformers_version"):
            config.pop(key, None)
        encoder = tf.T5EncoderModel.from_pretrained(str(folder))
        full = tf.T5ForConditionalGeneration(tf.T5Config(**config))
        full.load_state_dict(encoder.state_dict(), strict=False)
        (folder / "model.safetensors").unlink()
        full.save_pretrained(str(folder))
    else:
        folder = make_tiny_model(tmp_path / "m")
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["BertForMaskedLM"]
        (folder / "config.json").write_text(json.dumps(config))
    SentenceTransformer(str(folder), backend="onnx", device="cpu")  # exports fp32 into the folder
    model = SentenceTransformer(str(folder), device="cpu")
    with caplog.at_level(logging.INFO, logger="st_onnx"):
        model.save(str(tmp_path / "saved"))
    assert layout.fused_graph_path(tmp_path / "saved", "fp32").exists(), [r.getMessage() for r in caplog.records]
