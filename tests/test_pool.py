"""SessionPool: encode_multi_process on threads, results as encode's, faults surfacing fast, clean stops."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from helpers import SENTENCES, stsb_sentences
from st_onnx import SentenceTransformer
from st_onnx.errors import BackendError, InvalidInputError, PoolError
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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_worker_is_reported_not_waited_for(model):
    pool = model.start_multi_process_pool(["cpu"])
    pool._jobs.put(None)  # a job the worker cannot unpack: its thread dies, as on a crash
    pool._threads[0].join(5)
    with pytest.raises(PoolError, match="died"):
        model.encode_multi_process(SENTENCES, pool)
    pool.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_pool_used_in_a_forked_child_names_the_fork(folder):
    """fork copies none of a pool's worker threads: the child was told its workers died (found by a start-method
    review), not why. (The child leaves through os._exit: ONNX Runtime 1.29+ hangs a child's sys.exit.)"""
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    with model.start_multi_process_pool(["cpu"]) as pool:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what the pool says, then leave at once
            try:
                model.encode_multi_process(SENTENCES, pool)
                message = b"no error"
            except BaseException as e:
                message = f"{type(e).__name__}: {e}".encode()
            os.write(write, message[:4000])
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            said = f.read().decode()
        os.waitpid(pid, 0)
        assert said.startswith("PoolError: this pool was started in process ") and "fork" in said
        np.testing.assert_allclose(model.encode_multi_process(SENTENCES, pool), model.encode(SENTENCES), atol=ATOL)


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
    while not pool._jobs.full() and time.monotonic() < deadline:  # the call has queued what the queue holds
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


def _count_batches(model, monkeypatch, delay_s=0.0):
    """Count the batches the workers run (each delayed by ``delay_s``); returns the live count dict."""
    runs = {"n": 0}
    if model.backend == "onnx":
        from st_onnx.runtime.session import OrtSession

        real = OrtSession.run

        def run(self, *a, **k):
            runs["n"] += 1
            time.sleep(delay_s)
            return real(self, *a, **k)

        monkeypatch.setattr(OrtSession, "run", run)
    else:
        from st_onnx.backends.torch_backend import TorchBackend

        real = TorchBackend.encode

        def run(self, texts, opts):
            runs["n"] += 1
            time.sleep(delay_s)
            return real(self, texts, opts)

        monkeypatch.setattr(TorchBackend, "encode", run)
    return runs


def test_stop_leaves_a_running_chunk_at_its_next_batch(model, monkeypatch):
    """A chunk of 200 one-text batches is not run to its end after stop(): the workers check between batches."""
    pool = model.start_multi_process_pool(["cpu"])
    runs = _count_batches(model, monkeypatch, delay_s=0.02)
    errors = []
    caller = threading.Thread(target=lambda: errors.append(pytest.raises(
        PoolError, model.encode_multi_process, many_texts(200), pool, batch_size=1, chunk_size=200)))
    caller.start()
    deadline = time.monotonic() + 20
    while runs["n"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.stop()
    caller.join(30)
    assert not caller.is_alive() and len(errors) == 1
    assert not pool._threads[0].is_alive()
    assert runs["n"] < 100, f"the worker ran {runs['n']} of the chunk's 200 batches after the stop"


def test_an_interrupted_call_leaves_no_work_behind(model, pool, monkeypatch):
    """Ctrl-C while waiting: the abandoned call's queued and running chunks are dropped, so the next call on the
    pool runs only its own batches."""
    import _thread
    import signal

    runs = _count_batches(model, monkeypatch, delay_s=0.02)
    # a shell that starts the suite in the background (no job control) leaves SIGINT ignored, and interrupt_main
    # then does nothing: Ctrl-C's Python handler for this test
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            model.encode_multi_process(many_texts(2_000), pool, batch_size=1, chunk_size=20)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    before = runs["n"]
    got = model.encode_multi_process(SENTENCES, pool, batch_size=1, chunk_size=1)
    # the next call's own batches, plus at most the batch each worker had in hand at the interrupt
    assert runs["n"] - before <= len(SENTENCES) + 2
    assert np.allclose(got, model.encode(SENTENCES), atol=ATOL)


def test_the_caller_tokenizes_only_a_few_chunks_ahead(model, monkeypatch):
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    runs = _count_batches(model, monkeypatch, delay_s=0.02)
    queued = {"n": 0}
    real = SessionPool._payload

    def payload(self, texts):
        queued["n"] += 1
        return real(self, texts)

    monkeypatch.setattr(SessionPool, "_payload", payload)
    caller = threading.Thread(target=lambda: pytest.raises(
        PoolError, model.encode_multi_process, many_texts(2_000), pool, batch_size=10, chunk_size=10))
    caller.start()
    time.sleep(1.0)
    made, done = queued["n"], runs["n"]
    pool.stop()
    caller.join(30)
    # chunks run or running (one batch each), at most two queued per worker, one being made
    assert made <= done + 2 + 4 + 1, f"{made} chunks tokenized while {done} ran"


def test_pool_devices_are_read_as_the_backend_reads_them(model):
    with model.start_multi_process_pool(["cpu:0", "cpu:1"]) as pool:
        assert pool.devices == ["cpu", "cpu"]  # one CPU: split cores (onnx), one shared stack (torch)
        assert np.allclose(model.encode_multi_process(SENTENCES, pool), model.encode(SENTENCES), atol=ATOL)
    if model.backend == "onnx":
        with pytest.raises(InvalidInputError, match="'mps' is not supported by the onnx backend"):
            model.start_multi_process_pool(["mps"])


@pytest.mark.parametrize("ending", ["no stop", "stop(timeout_s=0.01)"])
def test_a_pool_left_running_at_exit_does_not_abort_the_process(minilm_dir, tmp_path, ending):
    """A script that ends while a pool call runs in a daemon thread exits cleanly (a worker left inside an ONNX
    Runtime run at interpreter shutdown aborts the process: 'terminate called without an active exception'; with
    all-MiniLM-L6-v2's runs of tens of ms, the code before the fix aborted every time)."""
    folder = minilm_dir
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "leave_running.py"
    script.write_text(textwrap.dedent(f"""
        import threading, time
        from st_onnx import SentenceTransformer
        model = SentenceTransformer({str(folder)!r}, backend="onnx", device="cpu")
        pool = model.start_multi_process_pool(["cpu", "cpu"])
        texts = ["the quick brown fox jumps over the lazy dog " * 6 + str(i) for i in range(50_000)]
        threading.Thread(target=model.encode_multi_process, args=(texts, pool), daemon=True).start()
        time.sleep(1.0)
        if {ending!r} != "no stop":
            pool.stop(timeout_s=0.01)  # returns with the worker still in a run: it is joined at exit
        print("leaving")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaving" in done.stdout and "terminate called" not in done.stderr


# -- found by the pool review ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["no_dimension", "reshaping"])
def test_the_torch_pool_takes_the_width_of_what_the_modules_compute(folder, extra):
    """A custom pooling module without get_sentence_embedding_dimension, or a last module that changes the width:
    encode worked and the pool failed (an array of the reported width: 0, or the old one)."""
    import torch

    from st_onnx.models import Pooling, Transformer

    class MeanPoolNoDimension(torch.nn.Module):
        def forward(self, features):
            mask = features["attention_mask"].unsqueeze(-1).float()
            features["sentence_embedding"] = (features["token_embeddings"] * mask).sum(1) / mask.sum(1)
            return features

    class KeepEvenDimensions(torch.nn.Module):
        def forward(self, features):
            features["sentence_embedding"] = features["sentence_embedding"][:, ::2]
            return features

    transformer = Transformer(str(folder), max_seq_length=64)
    modules = [transformer, MeanPoolNoDimension()] if extra == "no_dimension" else [
        transformer, Pooling(32), KeepEvenDimensions()]
    model = SentenceTransformer(modules=modules, device="cpu")
    want = model.encode(SENTENCES * 3)
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        got = model.encode_multi_process(SENTENCES * 3, pool, chunk_size=3)
        empty = model.encode_multi_process([], pool)
    assert got.shape == want.shape and np.allclose(got, want, atol=ATOL)
    assert empty.shape[0] == 0


def _session_threads(monkeypatch, model) -> list:
    """The intra-op threads of every session the onnx backend makes from now on."""
    made = []
    original = type(model._backend).new_session

    def recording(self, device, threads=None):
        session = original(self, device, threads)
        made.append((session.device, session.threads))
        return session

    monkeypatch.setattr(type(model._backend), "new_session", recording)
    return made


def test_the_onnx_pool_keeps_the_users_thread_cap(folder, monkeypatch):
    """onnx_options' intra_op_num_threads bounds the pool's CPU sessions too (they took every core)."""
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"intra_op_num_threads": 1})
    made = _session_threads(monkeypatch, model)
    with model.start_multi_process_pool(["cpu"]) as pool:
        assert model.encode_multi_process(SENTENCES, pool).shape == (len(SENTENCES), 32)
    assert made == [("cpu", 1)]


@pytest.mark.parametrize("form", ["dict", "object"])
def test_the_onnx_pool_keeps_the_threads_session_options_set(folder, monkeypatch, form):
    """Threads set in session_options are each session's: the pool overwrote them with its share of the cores
    (2 here), and wrote that share into the caller's SessionOptions object, which later models then took."""
    import onnxruntime as ort

    if form == "dict":
        options = {"intra_op_num_threads": 1}
    else:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
    monkeypatch.setattr("st_onnx.runtime.session.available_cores", lambda: 2)
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"session_options": options})
    made = _session_threads(monkeypatch, model)
    with model.start_multi_process_pool(["cpu"]) as pool:
        assert model.encode_multi_process(SENTENCES, pool).shape == (len(SENTENCES), 32)
    assert made == [("cpu", 1)]
    if form == "object":
        assert options.intra_op_num_threads == 1


def test_a_pool_says_when_a_session_options_object_gives_every_session_every_core(folder, monkeypatch):
    """A SessionOptions object is used as it is: with its threads at 0 each CPU session takes every core, where
    the pool divided them before (by writing into the caller's object)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"session_options": options})
    with pytest.warns(UserWarning, match="the pool's 2 CPU sessions each take every core"):
        pool = model.start_multi_process_pool(["cpu", "cpu"])
    with pool:
        assert model.encode_multi_process(SENTENCES, pool).shape == (len(SENTENCES), 32)
    assert options.intra_op_num_threads == 0


def test_threads_set_twice_are_refused_by_name(folder):
    with pytest.raises(InvalidInputError, match=r"sets the threads twice: intra_op_num_threads=2"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu",
                            onnx_options={"intra_op_num_threads": 2, "session_options": {"intra_op_num_threads": 1}})


def test_a_pools_own_encode_refuses_modules_changed_since_the_export(folder):
    """SessionPool.encode is public: it ran the graph of the old modules where encode_multi_process refused."""
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    with model.start_multi_process_pool(["cpu"]) as pool:
        model[1].pooling_mode = "cls"
        with pytest.raises(BackendError, match="changed"):
            pool.encode(SENTENCES)
        with pytest.raises(BackendError, match="changed"):
            model.encode_multi_process(SENTENCES, pool)


def test_an_onnx_pool_on_devices_it_cannot_use_is_refused(folder):
    """['cuda:0', 'cuda:1'] without usable CUDA ran two CPU sessions labelled cuda, each with every core."""
    from st_onnx.runtime.providers import cuda_usable

    if cuda_usable():
        pytest.skip("CUDA is usable here: the pool's CUDA sessions are checked in tests/test_gpu.py")
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    with pytest.warns(Warning), pytest.raises(InvalidInputError, match="target device 'cuda:0' is not usable"):
        model.start_multi_process_pool(["cuda:0", "cuda:1"])


def test_encode_multi_process_says_where_sentence_transformers_6_puts_the_prompt(model):
    """encode_multi_process(texts, pool, "query") as sentence-transformers 6 orders it named batch_size only."""
    with model.start_multi_process_pool(["cpu"]) as pool:
        with pytest.raises(InvalidInputError, match="prompt_name and prompt third and fourth"):
            model.encode_multi_process(SENTENCES, pool, "query")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_an_idle_pool_keeps_nothing_of_a_finished_call(tiny_model_copy, backend):
    """The workers' loop variables kept the last call alive, and with it its whole (n, dim) output (or its error
    and traceback): 146 MiB for 100k MiniLM texts, held after the caller dropped it until a later call reached
    every worker or the pool stopped (found by a review of a long-running service)."""
    import gc
    import weakref

    model = SentenceTransformer(str(tiny_model_copy), backend=backend, device="cpu")
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        out = model.encode_multi_process([f"the dog {i}" for i in range(200)], pool)
        result = weakref.ref(out)
        del out
        for _ in range(100):  # the workers finish their loop turn; only whether it goes is asserted, not when
            gc.collect()
            if result() is None:
                break
            time.sleep(0.05)
        assert result() is None, "the pool's idle workers still hold the last call's result"
