"""SessionPool: ``encode_multi_process`` over several devices with threads, not processes.

onnx backend: one ORT session per target device ('cuda:0', ... or 'cpu'; several 'cpu' entries split the cores
between their sessions), each fed by one thread. ``InferenceSession.run`` releases the GIL, so threads run the
sessions in parallel; nothing is pickled or spawned, which is why the pool works in notebooks. GPU sessions are
created one device at a time (session creation holds the GIL anyway) and each is checked on its provider.

torch backend: the same threads, one module replica per CUDA device. 'cpu' workers share the one CPU stack
(inference forward passes do not mutate modules, and torch ops release the GIL), since copying it would only
double memory: torch's intra-op thread pool is process-wide and cannot be split per worker anyway.

The caller tokenizes each chunk once (onnx) and queues it while workers run earlier chunks; the queue holds at
most two chunks per worker, so a huge input is not tokenized far ahead of the workers. Chunks are cut from texts
sorted by length, each worker re-sorts its chunk by token length; results land at their input positions.
A failing chunk makes the caller raise that error (the pool stays usable); a worker thread that died makes it
raise PoolError. Waits poll every 50 ms, so neither ever hangs.

Cancelling: a call that fails or is interrupted (Ctrl-C) drops its queued chunks, and the workers leave its
running chunks at their next batch; ``stop`` does the same for every call. A pool still running when Python
exits is stopped and its workers joined first: a daemon thread left inside an ONNX Runtime run aborts the process.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import weakref
from typing import Any, Callable

import numpy as np

from .encode.batching import chunks, longest_first
from .encode.options import EncodeOptions, as_input_list, text_length
from .errors import InvalidInputError, PoolError, positive_int, warn

logger = logging.getLogger(__name__)

_POLL_S = 0.05


class _Call:
    """One encode_multi_process call: its output (an (n, dim) array, or a list of per-text outputs when ``dim``
    is None), chunks left, and the first error of its chunks."""

    def __init__(self, n: int, dim: int | None, n_chunks: int) -> None:
        # the width comes from the first chunk's result (the reported dimension can be None or differ from what
        # the modules compute); ``dim`` only shapes an empty result
        self.n = n
        self.per_text = dim is None
        self.out: Any = [None] * n if dim is None else (np.zeros((0, dim), dtype=np.float32) if n == 0 else None)
        self.left = n_chunks
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        if n_chunks == 0:
            self.done.set()

    def finish(self, idx: np.ndarray, emb: Any) -> None:
        with self._lock:
            if self.per_text:
                for i, item in zip(idx, emb):
                    self.out[i] = item
            else:
                if self.out is None:
                    self.out = np.zeros((self.n, np.shape(emb)[1]), dtype=np.float32)
                self.out[idx] = emb
            self.left -= 1
            if self.left == 0:
                self.done.set()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self.done.set()


class SessionPool:
    """Worker threads, one per target device, each owning a session (onnx) or a module replica (torch)."""

    def __init__(self, model: Any, target_devices: list[str] | None = None) -> None:
        self.model = model
        self.backend_name = model.backend
        self.devices = _check_devices(target_devices, self.backend_name)
        self._jobs: queue.Queue = queue.Queue(maxsize=2 * len(self.devices))
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()  # fork copies none of the worker threads
        runners = self._make_runners()
        for i, (device, runner) in enumerate(zip(self.devices, runners)):
            # the threads hold the queue and the stop event, not the pool: a pool dropped without stop() is
            # collected, and its finalizer stops them (sessions and threads are not kept for the process's life)
            thread = threading.Thread(target=_work, args=(self._jobs, self._stop_event, runner),
                                      name=f"st-onnx-pool-{i}-{device}", daemon=True)
            thread.start()
            self._threads.append(thread)
        # also runs at exit (weakref.finalize's atexit) for a pool never stopped, or whose workers outlived stop()
        self._finalizer = weakref.finalize(self, _shut_down, self._jobs, self._stop_event, self._threads)
        logger.info("session pool started on %s", ", ".join(self.devices))

    # -- workers --------------------------------------------------------------------------------------
    def _make_runners(self) -> list[Callable]:
        if self.backend_name == "onnx":
            return _onnx_runners(self.model._backend, self.devices)
        return _torch_runners(self.model._backend, self.devices)

    def _check_alive(self) -> None:
        dead = [t.name for t in self._threads if not t.is_alive()]
        if dead and not self.stopped and os.getpid() != self._pid:
            raise PoolError(f"this pool was started in process {self._pid}, and fork copies none of its worker "
                            "threads: start a pool in this process (the model's own encode works here)")
        if dead and not self.stopped:
            raise PoolError(f"pool worker(s) {dead} died; stop the pool and start a new one")

    def _check(self, call: _Call) -> None:
        """Raise when ``call`` cannot go on: a worker died, the pool stopped, or one of its chunks failed."""
        self._check_alive()
        if self.stopped:
            raise PoolError(_STOPPED)
        if call.error is not None:
            raise call.error

    # -- public ---------------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def encode(self, sentences: Any, batch_size: int = 32, chunk_size: int | None = None,
               show_progress_bar: bool = False, prompt_length: int | None = None,
               output_value: str | None = "sentence_embedding") -> Any:
        """(n, dim) embeddings in input order, computed by the workers chunk by chunk (the facade truncates,
        normalizes and quantizes them as ``encode`` does: ``format_sentence_embeddings``), or for another
        ``output_value`` a list of the backend's per-text outputs; ``prompt_length``: leading tokens pooling
        leaves out (a prompt, on models with include_prompt=False)."""
        if self.stopped:
            raise PoolError("this pool is stopped; start a new one with model.start_multi_process_pool()")
        self._check_alive()
        if self.backend_name == "onnx":  # the sessions run the graph: refused once the modules changed since
            self.model._backend.check_modules()
        EncodeOptions.from_args(batch_size=batch_size)
        inputs, single = as_input_list(sentences)
        size = _chunk_size(chunk_size, len(inputs), len(self.devices))
        order = longest_first([text_length(x) for x in inputs])
        pieces = list(chunks(len(inputs), size))
        dim = self.model._backend.sentence_embedding_dimension() or 0  # untruncated
        call = _Call(len(inputs), dim if output_value == "sentence_embedding" else None, len(pieces))
        progress = _chunk_progress(len(pieces), show_progress_bar)
        try:
            for start, stop in pieces:
                self._check(call)
                idx = order[start:stop]
                job = (call, idx, self._payload([inputs[i] for i in idx]), (batch_size, prompt_length, output_value))
                while True:  # the queue is bounded: wait for room, watching the call and the workers
                    try:
                        self._jobs.put(job, timeout=_POLL_S)
                        break
                    except queue.Full:
                        self._check(call)
                        _show(progress, call)
            self._wait(call, progress)
        except BaseException as e:
            # failed or interrupted (KeyboardInterrupt): the workers drop this call's queued chunks and leave its
            # running ones at their next batch, so the pool is free for the next call at once
            call.fail(PoolError(f"the call was abandoned ({type(e).__name__})"))
            raise
        finally:
            if progress is not None:
                _show(progress, call)
                progress.close()
        return call.out[0] if single else call.out

    def _payload(self, texts: list) -> Any:
        """What a worker runs: encodings tokenized here, once (onnx), or the texts (torch tokenizes itself)."""
        if self.backend_name == "onnx":
            return self.model._backend.text_tokenizer.encode(texts)
        return texts

    def _wait(self, call: _Call, progress: Any = None) -> None:
        while not call.done.wait(_POLL_S):
            self._check(call)
            _show(progress, call)
        if call.error is not None:
            raise call.error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the workers (idempotent): chunks still queued are dropped and running ones left at their next
        batch (a call waiting on them raises PoolError), and the workers are joined (up to ``timeout_s`` each)."""
        if self.stopped:
            return
        _shut_down(self._jobs, self._stop_event, self._threads, timeout_s)
        if not any(thread.is_alive() for thread in self._threads):
            self._finalizer.detach()  # all joined; a worker still in a run past timeout_s is joined at exit
        logger.info("session pool stopped")

    def __enter__(self) -> "SessionPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"SessionPool({self.backend_name}, devices={self.devices}, {state})"


_STOPPED = "the pool was stopped while encoding"


def _work(jobs: queue.Queue, stop: threading.Event, runner: Callable) -> None:
    """A worker thread: run queued chunks until the pool stops (and its queue is empty)."""
    while True:
        try:
            job = jobs.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                return
            continue
        _run_job(job, stop, runner)
        # an idle worker keeps nothing of the last call (its whole result, or its error and traceback), as
        # ThreadPoolExecutor's workers drop their work item
        del job


def _run_job(job: tuple, stop: threading.Event, runner: Callable) -> None:
    call, idx, payload, settings = job
    if stop.is_set():
        call.fail(PoolError(_STOPPED))
        return
    if call.error is not None:
        return  # a chunk of this call failed already, or the call was abandoned: skip it

    def check(call: _Call = call) -> None:  # between batches: leave a chunk nobody waits for
        if stop.is_set():
            raise PoolError(_STOPPED)
        if call.error is not None:
            raise PoolError("the call was abandoned")

    try:
        call.finish(idx, runner(payload, *settings, check))
    except BaseException as e:  # noqa: BLE001 - handed to the caller, which re-raises it
        call.fail(e)


def _shut_down(jobs: queue.Queue, stop: threading.Event, threads: list[threading.Thread],
               timeout_s: float = 10.0) -> None:
    """Stop a pool's workers: set the event, drop the queued chunks (their calls fail), and join the workers
    (each leaves its running chunk at the next batch, and exits once the queue is empty)."""
    stop.set()
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        job[0].fail(PoolError(_STOPPED))
    current = threading.current_thread()
    for thread in threads:
        if thread is not current:
            thread.join(timeout_s)


def _show(progress: Any, call: _Call) -> None:
    if progress is not None:
        progress.update(progress.total - call.left - progress.n)


def _chunk_progress(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Chunks", unit="chunk")


def _check_devices(target_devices: list[str] | None, backend: str) -> list[str]:
    from .devices import check_device

    if target_devices is None:
        return _default_devices(backend)
    if not isinstance(target_devices, (list, tuple)) or not target_devices or any(d is None for d in target_devices):
        raise InvalidInputError(f"target_devices must be a non-empty list like ['cpu', 'cpu'] or ['cuda:0']; "
                                f"got {target_devices!r}")
    if backend == "onnx":  # as the onnx backend takes them: 'cpu:0' is the CPU, 'mps' is refused
        from .runtime.providers import resolve_device

        return [resolve_device(d) for d in target_devices]
    devices = [check_device(d) for d in target_devices]
    # 'cpu:N' is the one CPU: its workers share the CPU stack rather than each copying it
    return [f"cuda:{d.partition(':')[2] or 0}" if d.startswith("cuda") else d.partition(":")[0] for d in devices]


def _default_devices(backend: str) -> list[str]:
    if backend == "onnx":
        from .runtime.providers import cuda_device_count, cuda_usable

        return [f"cuda:{i}" for i in range(cuda_device_count())] if cuda_usable() else ["cpu"]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def _chunk_size(chunk_size: int | None, n: int, workers: int) -> int:
    if chunk_size is None:
        return max(1, min(math.ceil(n / workers / 10), 5000))
    return positive_int(chunk_size, "chunk_size", or_none=True)


def _onnx_runners(backend: Any, devices: list[str]) -> list[Callable]:
    from .runtime.session import available_cores

    n_cpu = sum(d == "cpu" for d in devices)
    budget = backend.options.intra_op_num_threads or available_cores()  # the user's cap, if set
    # session_options setting the threads are the user's for each session, not a budget to divide
    cpu_threads = max(1, budget // n_cpu) if n_cpu and not backend.options.fixed_threads else None
    given = backend.options.session_options
    if n_cpu > 1 and given is not None and not isinstance(given, dict) and not given.intra_op_num_threads:
        # an onnxruntime.SessionOptions is used as it is (setting threads on it would change the caller's object)
        warn(f"the pool's {n_cpu} CPU sessions each take every core: onnx_options['session_options'] is a "
             "SessionOptions whose intra_op_num_threads is 0 (ONNX Runtime's default); set its threads, or pass "
             "session_options as a dict, whose sessions share the cores", UserWarning)
    runners = []
    for device in devices:  # one device at a time: each session is checked on its provider as it is made
        session = backend.new_session(device, cpu_threads if device == "cpu" else None)
        if device != "cpu" and session.device == "cpu":
            raise InvalidInputError(f"target device {device!r} is not usable here (its session runs on "
                                    f"{session.provider}, see the warning above): fix the CUDA setup, or pass "
                                    "'cpu' entries")
        encoder = backend.encoder_for(session)
        runners.append(lambda encodings, batch_size, prompt_length, output_value, check, enc=encoder:
                       enc.embed_encodings(encodings, batch_size, output_value, prompt_length=prompt_length,
                                           check=check))
    return runners


def _torch_runners(backend: Any, devices: list[str]) -> list[Callable]:
    import copy

    from .backends.torch_backend import TorchBackend

    replicas: dict[str, Any] = {}
    runners = []
    for device in devices:
        if device not in replicas:
            stack = backend.stack if str(backend.device) == device else copy.deepcopy(backend.stack)
            replicas[device] = TorchBackend(stack, device)
        replica = replicas[device]

        def run(texts: list, batch_size: int, prompt_length: int | None, output_value: str | None,
                check: Callable[[], None], rep=replica) -> Any:
            options = EncodeOptions(batch_size=batch_size, output_value=output_value, prompt_length=prompt_length)
            parts = []
            for start in range(0, len(texts), batch_size):  # the chunk is sorted by length: one batch at a time
                check()
                out = rep.encode(texts[start:start + batch_size], options)
                parts.append(out.float().cpu().numpy() if output_value == "sentence_embedding" else out)
            if output_value == "sentence_embedding":
                return np.concatenate(parts)
            return [item for part in parts for item in part]

        runners.append(run)
    return runners


def start_pool(model: Any, target_devices: list[str] | None = None) -> SessionPool:
    return SessionPool(model, target_devices)


def stop_pool(pool: Any) -> None:
    if not isinstance(pool, SessionPool):
        raise InvalidInputError(f"pool must be what start_multi_process_pool returned; got {type(pool).__name__}")
    pool.stop()


def encode_with_pool(model: Any, sentences: Any, pool: Any, batch_size: int = 32, chunk_size: int | None = None,
                     show_progress_bar: bool = False, prompt_length: int | None = None,
                     output_value: str | None = "sentence_embedding") -> Any:
    if not isinstance(pool, SessionPool):
        raise InvalidInputError(f"pool must be what start_multi_process_pool returned; got {type(pool).__name__}")
    if pool.model is not model:
        raise InvalidInputError("this pool was started by another model; start one with this model's "
                                "start_multi_process_pool()")
    return pool.encode(sentences, batch_size=batch_size, chunk_size=chunk_size, show_progress_bar=show_progress_bar,
                       prompt_length=prompt_length, output_value=output_value)
