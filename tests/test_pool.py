"""SessionPool: encode_multi_process on threads, results as encode's, faults surfacing fast, clean stops."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from helpers import SENTENCES, stsb_sentences
from st_onnx import SentenceTransformer
from st_onnx.errors import InvalidInputError, PoolError
from st_onnx.pool import SessionPool

# Pool chunks are batched differently from one encode call, so rows can differ in the last float bits.
ATOL = 1e-6


@pytest.fixture(scope="module")
def folder(tiny_model_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("pool") / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture(scope="module", params=["onnx", "torch"])
def model(request, folder):
    return SentenceTransformer(str(folder), backend=request.param, device="cpu")


@pytest.fixture
def pool(model):
    with model.start_multi_process_pool(["cpu", "cpu"]) as p:
        yield p


def many_texts(n):
    base = stsb_sentences(1000) + SENTENCES
    return [base[i % len(base)] + (" x" * (i // len(base))) for i in range(n)]


def test_two_cpu_sessions_split_the_cores(folder):
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        assert pool.devices == ["cpu", "cpu"] and len(pool._threads) == 2


def test_empty_and_single_inputs(model, pool):
    assert model.encode_multi_process([], pool).shape == (0, 32)
    one = model.encode_multi_process(["the cat sleeps"], pool)
    assert one.shape == (1, 32)
    assert np.allclose(one, model.encode(["the cat sleeps"]), atol=ATOL)
    assert model.encode_multi_process("the cat sleeps", pool).shape == (32,)


def test_ten_thousand_texts_in_tiny_chunks_match_encode(model, pool):
    texts = many_texts(10_000)
    got = model.encode_multi_process(texts, pool, chunk_size=37)
    ref = model.encode(texts, show_progress_bar=False)
    assert got.shape == ref.shape == (10_000, 32)
    assert np.abs(got - ref).max() <= ATOL
    normalized = model.encode_multi_process(texts[:100], pool, normalize_embeddings=True)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1, atol=1e-5)


def test_failing_worker_surfaces_fast_and_pool_stays_usable(model, pool, monkeypatch, record_property):
    calls = {"n": 0}

    def fail_once(*args):
        calls["n"] += 1
        raise RuntimeError("worker failed on purpose")

    if model.backend == "onnx":
        from st_onnx.runtime.encoder import OrtEncoder

        monkeypatch.setattr(OrtEncoder, "embed_encodings", lambda self, *a, **k: fail_once(*a))
    else:
        from st_onnx.backends.torch_backend import TorchBackend

        monkeypatch.setattr(TorchBackend, "encode", lambda self, *a, **k: fail_once(*a))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="on purpose"):
        model.encode_multi_process(many_texts(2000), pool, chunk_size=50)
    elapsed = time.monotonic() - start
    record_property("error_surfaced_s", round(elapsed, 3))
    assert elapsed < 5, f"the error took {elapsed:.2f}s to surface"
    monkeypatch.undo()
    assert 1 <= calls["n"] < 40  # the call's remaining chunks were skipped
    assert np.allclose(model.encode_multi_process(SENTENCES, pool), model.encode(SENTENCES), atol=ATOL)


def test_dead_worker_is_reported_not_waited_for(model):
    pool = model.start_multi_process_pool(["cpu"])
    pool._jobs.put(None)  # the worker exits as if it had crashed
    pool._threads[0].join(5)
    with pytest.raises(PoolError, match="died"):
        model.encode_multi_process(SENTENCES, pool)
    pool.stop()


def test_stop_twice_and_use_after_stop(model):
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    model.stop_multi_process_pool(pool)
    model.stop_multi_process_pool(pool)
    assert pool.stopped and not any(t.is_alive() for t in pool._threads)
    with pytest.raises(PoolError, match="stopped"):
        model.encode_multi_process(SENTENCES, pool)


def test_concurrent_calls_from_two_threads(model, pool):
    texts = [many_texts(1500), many_texts(900)[::-1]]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(i):
        try:
            results[i] = model.encode_multi_process(texts[i], pool, chunk_size=64)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(2):
        assert np.abs(results[i] - model.encode(texts[i], show_progress_bar=False)).max() <= ATOL


def test_token_embeddings_and_every_output_through_the_pool(model, pool):
    """As encode (and sentence-transformers 6's multi-device encode): per-text outputs in input order."""
    texts = many_texts(50) + ["", "the cat"]
    for kwargs in ({"pool": pool, "chunk_size": 7}, {"device": ["cpu", "cpu"]}):
        tokens = model.encode(texts, output_value="token_embeddings", **kwargs)
        want = model.encode(texts, output_value="token_embeddings")
        assert len(tokens) == len(texts) and all(type(g) is type(w) for g, w in zip(tokens, want))
        assert all(np.allclose(np.asarray(g), np.asarray(w), atol=ATOL) for g, w in zip(tokens, want))
    everything = model.encode(texts[:5], output_value=None, pool=pool, prompt="a red ")
    want = model.encode(texts[:5], output_value=None, prompt="a red ")
    for got, ref in zip(everything, want):
        assert sorted(got) == sorted(ref)
        assert np.allclose(np.asarray(got["sentence_embedding"]), np.asarray(ref["sentence_embedding"]), atol=ATOL)
        n = int(np.asarray(ref["attention_mask"]).sum())  # the torch backend keeps its batch's padding, as 6 does
        assert np.array_equal(np.asarray(got["input_ids"])[:n], np.asarray(ref["input_ids"])[:n])


def test_bad_pool_arguments(model, folder):
    with pytest.raises(InvalidInputError, match="target_devices"):
        SessionPool(model, "cpu")
    with pytest.raises(InvalidInputError, match="device"):
        SessionPool(model, ["gpu0"])
    other = SentenceTransformer(str(folder), backend=model.backend, device="cpu")
    with other.start_multi_process_pool(["cpu"]) as p:
        with pytest.raises(InvalidInputError, match="another model"):
            model.encode_multi_process(SENTENCES, p)
        with pytest.raises(InvalidInputError, match="chunk_size"):
            other.encode_multi_process(SENTENCES, p, chunk_size=0)


def test_stop_while_a_call_runs_drops_its_queued_chunks(model, monkeypatch):
    """The waiting call raises PoolError at once; the workers finish the chunk in hand and exit (they do not
    work through the abandoned call's queue)."""
    import st_onnx.pool as pool_module

    name = "_onnx_runners" if model.backend == "onnx" else "_torch_runners"
    make_runners = getattr(pool_module, name)

    def slow_runners(*args):
        def slow(runner):
            return lambda *a: (time.sleep(0.2), runner(*a))[1]
        return [slow(r) for r in make_runners(*args)]

    monkeypatch.setattr(pool_module, name, slow_runners)
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    errors = []

    def call():
        try:
            model.encode_multi_process(many_texts(2_000), pool, chunk_size=10)  # 200 chunks: 20 s of work
        except PoolError as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 20
    while pool._jobs.qsize() < 100 and time.monotonic() < deadline:  # the call has queued its chunks
        time.sleep(0.01)
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 2  # the chunks in hand, not the queue
    caller.join(30)
    assert not caller.is_alive() and len(errors) == 1 and "stopped while encoding" in str(errors[0])
    assert not any(t.is_alive() for t in pool._threads)
    assert pool._jobs.qsize() <= 1  # the caller stops queuing (one chunk may slip in as it sees the stop)


def test_a_pool_dropped_without_stop_ends_its_threads(model):
    import gc

    pool = model.start_multi_process_pool(["cpu", "cpu"])
    model.encode_multi_process(SENTENCES, pool)
    threads = list(pool._threads)
    del pool
    gc.collect()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
