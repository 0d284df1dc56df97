"""The onnx backend as servers use it: a model encoded once and then forked (gunicorn --preload, Celery
prefork), long documents by the thousand, the model moved while another thread encodes, models built by several
threads at once, a container's CPU quota."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

TEXTS = ["the cat runs", "a dog sleeps", "the quick brown fox", "one two three"] * 16


@pytest.fixture(scope="module")
def folder(tiny_model_dir, tmp_path_factory):
    import shutil

    dest = tmp_path_factory.mktemp("serving") / "tiny"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def _load(folder, monkeypatch):
    from st_onnx import SentenceTransformer
    import st_onnx.backends.onnx_backend as ob

    monkeypatch.setattr(ob, "available_cores", lambda: 2)  # batch-level parallelism even on a 1-core runner
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert model._backend._encoder.parallel == 2
    return model


def _child(model, q):
    q.put(model.encode(TEXTS, show_progress_bar=False))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_encode_in_a_forked_child_after_the_parent_encoded(folder, monkeypatch):
    """fork() copies the encoder's thread pool but not its threads: the child waited forever for them."""
    model = _load(folder, monkeypatch)
    want = model.encode(TEXTS, show_progress_bar=False)  # the parent's warm-up starts the executor
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(model, q))
    p.start()
    p.join(30)
    hung = p.is_alive()
    if hung:
        p.kill()
        p.join()
    assert not hung, "model.encode hung in the forked child"
    assert p.exitcode == 0
    np.testing.assert_allclose(q.get(timeout=5), want, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_fork_waits_for_the_runs_under_way_in_other_threads(folder, monkeypatch):
    """A fork while another thread was inside ONNX Runtime's run copied the session's held lock into the child,
    whose encode then waited forever (6 of 460 forks; found by a start-method review). fork() now waits
    for the runs under way, and the child encodes."""
    model = _load(folder, monkeypatch)
    want = model.encode(TEXTS, show_progress_bar=False)
    session = model._backend._encoder.session
    real, events = session._session, []

    class SlowRun:  # a run long enough for the fork to land in it
        def run(self, *args):
            events.append("run starts")
            time.sleep(1.0)
            out = real.run(*args)
            events.append("run ends")
            return out

    monkeypatch.setattr(session, "_session", SlowRun())
    busy = threading.Thread(target=model.encode, args=(["the cat runs"],))
    busy.start()
    while not events:
        time.sleep(0.01)
    monkeypatch.setattr(session, "_session", real)  # the child runs the real session
    pid = os.fork()
    if pid == 0:  # (SIGALRM's default action ends a child that hangs)
        signal.alarm(60)
        os._exit(0 if np.allclose(model.encode(TEXTS, show_progress_bar=False), want, atol=1e-6) else 3)
    events.append("forked")
    busy.join()
    _, status = os.waitpid(pid, 0)
    assert events == ["run starts", "run ends", "forked"]
    assert os.waitstatus_to_exitcode(status) == 0


class _SlowRun:
    """An ONNX Runtime session whose runs take ``seconds`` and may call ``during`` (a signal handler's work)."""

    def __init__(self, real, seconds, during=None):
        self.real, self.seconds, self.during = real, seconds, during

    def run(self, *args):
        time.sleep(self.seconds)
        if self.during is not None:
            self.during()
        return self.real.run(*args)


def _fork_hooks(gate):
    """What os.fork() does around the fork with st-onnx's gate: (runs of other threads under way, seconds)."""
    start = time.monotonic()
    gate.before_fork()
    try:
        return gate._others_running(), time.monotonic() - start
    finally:
        gate.after_fork_in_parent()


def test_two_threads_forking_at_once_both_wait_for_the_runs(folder, monkeypatch):
    """The first fork's return let runs start again while a second thread's fork still waited: under steady load
    that one waited out FORK_WAIT_S and forked with runs under way (found by the review of the change)."""
    import st_onnx.runtime.session as session_mod

    model = _load(folder, monkeypatch)
    session = model._backend._encoder.session
    features = {k: v for k, v in model.tokenize(["the cat runs"]).items()}
    monkeypatch.setattr(session_mod, "FORK_WAIT_S", 5.0)
    monkeypatch.setattr(session, "_session", _SlowRun(session._session, 0.05))
    stop, seen = threading.Event(), []

    def load():  # three threads running batches back to back
        while not stop.is_set():
            session.run(features, ["sentence_embedding"])

    loaders = [threading.Thread(target=load) for _ in range(3)]
    for t in loaders:
        t.start()
    try:
        for _ in range(3):
            forkers = [threading.Thread(target=lambda: seen.append(_fork_hooks(session_mod._RUNS)[0]))
                       for _ in range(2)]
            forkers[0].start()
            time.sleep(0.01)
            forkers[1].start()
            for t in forkers:
                t.join()
    finally:
        stop.set()
        for t in loaders:
            t.join()
    assert seen == [False] * 6


def test_a_fork_waits_neither_for_its_own_threads_run_nor_for_a_note_an_exception_left(folder, monkeypatch,
                                                                                        caplog):
    """A fork from a signal handler, run while its thread was inside a run, waited out FORK_WAIT_S for that run,
    which could not end before the handler did; and a time limit raised between the gate's note of a run and the
    run left the note, so every later fork waited FORK_WAIT_S (found by the review of the change)."""
    import st_onnx.runtime.session as session_mod

    model = _load(folder, monkeypatch)
    session = model._backend._encoder.session
    features = {k: v for k, v in model.tokenize(["the cat runs"]).items()}
    monkeypatch.setattr(session_mod, "FORK_WAIT_S", 20.0)
    waited = []
    monkeypatch.setattr(session, "_session", _SlowRun(session._session, 0.0,
                                                      during=lambda: waited.append(_fork_hooks(session_mod._RUNS))))
    session.run(features, ["sentence_embedding"])  # the handler forks from inside this thread's run

    noted, release = threading.Event(), threading.Event()

    def interrupted():  # noted as running, then interrupted before the run: the note stays
        session_mod._RUNS.__enter__()
        noted.set()
        release.wait()

    thread = threading.Thread(target=interrupted)
    thread.start()
    noted.wait()
    try:
        waited.append(_fork_hooks(session_mod._RUNS))
    finally:
        release.set()
        thread.join()
        session_mod._RUNS._running.pop(thread.ident, None)
    assert [others for others, _ in waited] == [False, False]
    assert all(seconds < 10 for _, seconds in waited), waited  # not the 20 s FORK_WAIT_S
    assert "went ahead after waiting" not in caplog.text


def test_a_pickled_onnx_model_encodes_in_a_spawned_process(folder, monkeypatch):
    """Spawn and forkserver pickle what they send (macOS' and Windows' default start method, Python 3.14's on
    Linux): a DataLoader worker whose dataset holds the model, or ProcessPoolExecutor.map(model.encode, ...),
    raised "cannot pickle '_thread.RLock' object" (found by a start-method review). The session is opened
    again over the same graph in the receiving process; the settings changed in memory travel."""
    from concurrent.futures import ProcessPoolExecutor

    model = _load(folder, monkeypatch)
    model.max_seq_length, model.prompts = 5, {"q": "query: "}
    want = model.encode(TEXTS[:8], prompt_name="q")
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        got = pool.submit(model.encode, TEXTS[:8], prompt_name="q").result(timeout=120)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_unpickled_onnx_model_refuses_a_graph_changed_meanwhile(folder, monkeypatch, tmp_path):
    import pickle
    import shutil

    from st_onnx.errors import StaleGraphError

    own = tmp_path / "own"
    shutil.copytree(folder, own)
    model = _load(own, monkeypatch)
    model[0]  # the torch modules travel with it, linked to the graph
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.encode(TEXTS[:4]), model.encode(TEXTS[:4]), atol=1e-6)
    data = pickle.dumps(model)
    graph = model._backend.graph_path
    graph.write_bytes(graph.read_bytes() + b"\0")  # another graph in its place, as after a re-export elsewhere
    with pytest.raises(StaleGraphError, match=f"unpickled onnx model finds its graph changed or missing .*{graph}"):
        pickle.loads(data)


def test_pickling_refuses_a_session_options_object_and_checks_a_graph_without_manifest(folder, monkeypatch,
                                                                                         tmp_path):
    """onnxruntime.SessionOptions does not pickle: the error named pybind11's type, not the dict form that does
    (found by the review of the change). A graph named by file_name= has no manifest to check an unpickled model
    against: its size and modification time at load stand in."""
    import pickle
    import shutil

    import onnxruntime as ort

    from st_onnx import SentenceTransformer
    from st_onnx.errors import InvalidInputError, StaleGraphError

    model = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                onnx_options={"session_options": ort.SessionOptions()})
    with pytest.raises(InvalidInputError, match=r"SessionOptions, which does not pickle.*as a dict of its attr"):
        pickle.dumps(model)
    as_dict = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                  onnx_options={"session_options": {"intra_op_num_threads": 1}})
    np.testing.assert_allclose(pickle.loads(pickle.dumps(as_dict)).encode(TEXTS[:4]), as_dict.encode(TEXTS[:4]),
                               atol=1e-6)

    bare = tmp_path / "bare.onnx"
    shutil.copy(_load(folder, monkeypatch)._backend.graph_path, bare)
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"file_name": str(bare)})
    data = pickle.dumps(model)
    np.testing.assert_allclose(pickle.loads(data).encode(TEXTS[:4]), model.encode(TEXTS[:4]), atol=1e-6)
    bare.write_bytes(bare.read_bytes() + b"\0")  # another graph in its place
    with pytest.raises(StaleGraphError, match="another size or modification time than when the model loaded"):
        pickle.loads(data)


class _Recorder:
    """Wraps a tokenizers.Tokenizer, recording the characters of every encode_batch call."""

    def __init__(self, inner):
        self._inner, self.calls = inner, []

    def encode_batch(self, batch, **kwargs):
        self.calls.append(sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in batch))
        return self._inner.encode_batch(batch, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_long_texts_are_tokenized_in_bounded_calls(folder, monkeypatch):
    """tokenizers keeps every token of a truncated text until the call's encodings are dropped: thousands of
    long documents in one call took gigabytes (4,096 texts of 10k characters: +1.5 GB, torch backend +21 MB)."""
    model = _load(folder, monkeypatch)
    docs = [("the cat runs over a lazy dog " * 400)[:10_000] for _ in range(512)]  # 5.1M characters
    want = np.stack([model.encode(d, show_progress_bar=False) for d in docs[:3]])
    tt = model._backend._text_tokenizer
    rec = _Recorder(tt._tokenizer)
    monkeypatch.setattr(tt, "_tokenizer", rec)
    got = model.encode(docs, show_progress_bar=False)
    # tokenizers keeps every token of a truncated text (Encoding.overflowing), ~40 bytes per character
    assert max(rec.calls) <= 2_000_000, f"one tokenizers call took {max(rec.calls):,} characters"
    np.testing.assert_allclose(got[:3], want, atol=1e-6)


def test_a_device_change_does_not_break_a_call_running_in_another_thread(folder, monkeypatch):
    """The old encoder was shut down under the running call ('cannot schedule new futures after shutdown')."""
    model = _load(folder, monkeypatch)
    want = model.encode(TEXTS, batch_size=1, show_progress_bar=False)
    session = model._backend._encoder.session
    started, release = threading.Event(), threading.Event()
    run = session.run

    def slow_run(*args, **kwargs):
        started.set()
        release.wait(10)
        return run(*args, **kwargs)

    monkeypatch.setattr(session, "run", slow_run)
    result = {}

    def call():
        try:
            result["out"] = model.encode(TEXTS, batch_size=1, show_progress_bar=False)
        except BaseException as e:  # noqa: BLE001 - any failure is the finding
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    assert started.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GPU here: CUDA falls back to the CPU with a warning
        model.to("cuda:0")               # on a GPU machine: moves the model, as encode(device='cuda') does
    release.set()
    t.join(30)
    assert "error" not in result, repr(result.get("error"))
    np.testing.assert_allclose(result["out"], want, atol=1e-6)


def _cgroups(root, membership, files):
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / "membership").write_text(membership)
    return root / "membership"


@pytest.mark.parametrize("membership, files, cpus", [
    # cgroup v2: the tightest quota on the path binds, wherever it is set
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/cpu.max": "250000 100000\n",
                                "kubepods/pod1/c1/cpu.max": "max 100000\n"}, 2.5),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # cgroup v1, a container whose cgroup path is its own mount (no cgroup namespace): the path is not there
    ("4:cpu,cpuacct:/docker/abc\n2:memory:/docker/abc\n",
     {"cpu,cpuacct/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1.5),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("0::/\n", {"cpu.max": "garbage\n"}, None),
])
def test_the_cpu_quota_of_a_container_is_read_from_its_cgroups(tmp_path, membership, files, cpus):
    from st_onnx.runtime.session import cgroup_cpu_quota

    assert cgroup_cpu_quota(tmp_path, _cgroups(tmp_path, membership, files)) == cpus
    assert cgroup_cpu_quota(tmp_path, tmp_path / "no such file") is None


def test_a_container_cpu_quota_caps_the_onnx_backends_parallel_runs_and_threads(folder, monkeypatch):
    """A 1-CPU container on a many-core host sees every host core in its affinity mask: runs and threads sized
    by that oversubscribe the quota (throttled threads, a run's buffers each)."""
    import st_onnx.runtime.session as session
    from st_onnx import SentenceTransformer

    monkeypatch.setattr(session.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(session, "cgroup_cpu_quota", lambda: 1.0)
    assert session.available_cores() == 1
    assert session.default_session_options().intra_op_num_threads == 1
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert model._backend._encoder.parallel == 1
    monkeypatch.setattr(session, "cgroup_cpu_quota", lambda: None)
    assert session.available_cores() == 64


# -- many threads on one model, as a server's threadpool runs it --------------------------------------------------
MIXED = ["the cat runs", "a dog sleeps over the lazy fox", "one"] * 4


def _run_fresh(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter: transformers not imported yet, as in a server's first requests."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


_CONSTRUCT = """
    import threading, warnings
    warnings.simplefilter("ignore")
    from st_onnx import SentenceTransformer
    errors = []
    def build():
        try:
            SentenceTransformer({path!r}, device="cpu", {extra}).encode(["a cat"], show_progress_bar=False)
        except Exception as e:
            errors.append(f"{{type(e).__name__}}: {{e}}")
    threads = [threading.Thread(target=build) for _ in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    print("ERRORS", errors)
    assert not errors, errors
"""


def test_threads_constructing_models_at_once_in_a_fresh_process(tiny_model_dir):
    """transformers 5's lazy __init__ hands a half-built module to a second thread importing it at the same time:
    3 of 4 threads failed with "cannot import name 'AutoConfig' from 'transformers'" (sentence-transformers,
    which imports transformers at its own import, does not)."""
    done = _run_fresh(_CONSTRUCT.format(path=str(tiny_model_dir), extra=""))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_threads_loading_one_folder_without_a_graph_with_the_onnx_backend(tiny_model_copy):
    """Each thread exported the graph; torch.onnx.export is not reentrant ('GLOBALS.in_onnx_export must be
    False'), so all but one failed (even with transformers imported first)."""
    code = "import transformers\n" + textwrap.dedent(_CONSTRUCT.format(path=str(tiny_model_copy),
                                                                      extra="backend='onnx'"))
    done = _run_fresh(code)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_tokenizer_swap_never_reaches_a_concurrent_call_half_configured(tiny_model_copy):
    """model.tokenizer = X published X before its padding was switched off and its truncation set: a call in
    another thread tokenized with tokenizer.json's fixed padding (mask 1 over the pads) and got other embeddings."""
    from tokenizers import Tokenizer

    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    want = model.encode(MIXED, show_progress_bar=False)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop, wrong = threading.Event(), []

    def encode():
        while not stop.is_set():
            if not np.allclose(model.encode(MIXED, show_progress_bar=False), want, atol=1e-5):
                wrong.append(1)

    threads = [threading.Thread(target=encode) for _ in range(3)]
    try:
        [t.start() for t in threads]
        for _ in range(300):
            model.tokenizer = Tokenizer.from_file(str(tiny_model_copy / "tokenizer.json"))  # pads to 32
    finally:
        stop.set()
        [t.join() for t in threads]
        sys.setswitchinterval(old)
    assert not wrong, f"{len(wrong)} calls got other embeddings while the tokenizer was being replaced"


class _SlowTruncation:
    """Wraps a tokenizers.Tokenizer; setting truncation at 16 tokens takes a while (a thread switch mid-setter)."""

    def __init__(self, inner):
        self._inner = inner

    def enable_truncation(self, max_length, **kwargs):
        if max_length == 16:
            time.sleep(0.3)
        return self._inner.enable_truncation(max_length, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_concurrent_max_seq_length_setters_leave_one_consistent_limit(tiny_model_copy):
    """Two threads setting max_seq_length at once left max_seq_length at one value and the tokenizer truncating
    at the other, for good."""
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    text_tokenizer = model._backend._text_tokenizer
    text_tokenizer._tokenizer = _SlowTruncation(text_tokenizer._tokenizer)
    first = threading.Thread(target=setattr, args=(model, "max_seq_length", 16))
    first.start()
    time.sleep(0.1)  # the first setter is inside the tokenizer's truncation call
    model.max_seq_length = 32
    first.join()
    assert text_tokenizer.tokenizer.truncation["max_length"] == model.max_seq_length


def test_a_device_change_racing_another_leaves_the_device_it_reports(tiny_model_copy):
    """to('cuda:0') in one thread (a slow session build) and encode(device='cpu') in another: the recorded
    device said 'cpu' while the session built for 'cuda:0' stayed in use, and model.to('cpu') was then a no-op."""
    from st_onnx import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")
    backend, built, real = model._backend, {}, model._backend.new_session

    def slow(device, threads=None):
        if device.startswith("cuda"):
            time.sleep(1.0)
        session = real(device, threads)
        built[id(session)] = device
        return session

    backend.new_session = slow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GPU here: CUDA falls back to the CPU with a warning
        mover = threading.Thread(target=lambda: model.to("cuda:0"))
        mover.start()
        time.sleep(0.3)
        model.encode(["a cat"], device="cpu", show_progress_bar=False)
        mover.join()
        model.to("cpu")
    assert built[id(backend._encoder.session)] == "cpu"


@pytest.fixture()
def exported_copy(tiny_model_copy):
    from st_onnx import SentenceTransformer

    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu")  # its fp32 graph, exported
    return tiny_model_copy


def _held_int8_export(monkeypatch):
    """An int8 export of the folder that waits (inside the load's lock) until released, then fails."""
    import st_onnx.backends.onnx_backend as ob

    started, release = threading.Event(), threading.Event()

    def export(folder, precision, out_dir):
        started.set()
        release.wait(60)
        raise RuntimeError("export abandoned by the test")

    monkeypatch.setattr(ob, "_export", export)
    return started, release


def _load_int8(folder):
    from st_onnx import SentenceTransformer

    with pytest.raises(RuntimeError, match="abandoned by the test"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"precision": "int8"})


def test_a_present_graph_loads_while_another_precision_of_the_folder_exports(exported_copy, monkeypatch):
    """The load lock was the folder's: a load of its fp32 graph, there on disk, waited out the int8 export."""
    from st_onnx import SentenceTransformer

    started, release = _held_int8_export(monkeypatch)
    exporting = threading.Thread(target=_load_int8, args=(exported_copy,))
    exporting.start()
    try:
        assert started.wait(60)
        done = threading.Event()
        threading.Thread(target=lambda: (SentenceTransformer(str(exported_copy), backend="onnx", device="cpu"),
                                         done.set()), daemon=True).start()
        assert done.wait(30), "the fp32 load waited for the int8 export's lock"
    finally:
        release.set()
        exporting.join()


def test_a_folder_lock_goes_with_its_last_load(exported_copy):
    """One lock per folder loaded, kept for good: a training loop evaluating on the onnx backend loads a new
    modules=[...] copy each time, and the process kept a lock for each, the evicted ones too."""
    from st_onnx import SentenceTransformer
    import st_onnx.backends.onnx_backend as ob

    loads = [threading.Thread(target=SentenceTransformer, args=(str(exported_copy),),
                              kwargs={"backend": "onnx", "device": "cpu"}) for _ in range(3)]
    for load in loads:
        load.start()
    for load in loads:
        load.join()
    assert [key for key in ob._FOLDER_LOCKS if key[0] == os.path.realpath(exported_copy)] == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_while_a_thread_exports_loads_the_folder(exported_copy, monkeypatch):
    """A lock a parent's thread held at fork() stays held in the child, for good: its load of the folder hung."""
    from st_onnx import SentenceTransformer
    import st_onnx.backends.onnx_backend as ob

    folder_lock = ob._folder_lock
    monkeypatch.setattr(ob, "_folder_lock", lambda folder, precision: folder_lock(folder, "any"))  # one lock for
    # both precisions: the int8 export's, held at the fork
    started, release = _held_int8_export(monkeypatch)
    exporting = threading.Thread(target=_load_int8, args=(exported_copy,))
    exporting.start()
    try:
        assert started.wait(60)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running
            pid = os.fork()
        if pid == 0:
            import signal

            signal.alarm(30)
            try:
                SentenceTransformer(str(exported_copy), backend="onnx", device="cpu")
                os._exit(0)
            except BaseException:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the forked child's load failed ({status})"
    finally:
        release.set()
        exporting.join()
