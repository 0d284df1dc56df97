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
