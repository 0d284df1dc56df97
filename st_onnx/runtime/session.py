"""OrtSession: one ONNX Runtime InferenceSession over a fused graph, set up for many mixed-length calls.

Choices, each measured on the 2-core development machine (see benchmarks/bench_encode.py):
- threads: ``intra_op_num_threads`` = the cores this process may use unless told (the onnx backend on the CPU
  asks for 1 and runs that many batches at once instead: runtime/encoder.py), one inter-op thread, sequential
  execution (the fused encoder is one chain of nodes: parallel execution only adds scheduling).
- memory: every batch has another shape, so ORT's memory patterns (planned per shape) are off. ORT's CPU arena
  only grows (fastembed #222/#483/#570), so what bounds it is the token budget: no run holds more than
  ``encode.batching.DEFAULT_TOKEN_BUDGET`` padded tokens (runtime/encoder.py runs 'cores' of them at once), so
  the arena stops growing after the first full batches. Kept on, it spares every run the page faults of fresh
  buffers and pools the runs' memory; off, each executor thread's malloc arena keeps its own high-water mark, and
  runs are 8-18% slower. Measured when the budget was 1024 (all-MiniLM-L6-v2, 2 runs of 1024 tokens at once):
  60 mixed batches (1-32 texts x 2-300 words) flat at 272 MB with the arena, 288 -> 313 MB creeping without; peak
  RSS 244 MB (1000 short texts) and 323 MB (1000 long) against 277 MB and 364 MB without. ORT's kSameAsRequested
  extension strategy fragments on the CPU (+100 MB on short texts); the CUDA arena uses it.
- fusions: on the CPU, ORT's load-time SkipLayerNormFusion and BiasGeluFusion are switched off: its CPU kernels
  for those fused ops are slower than the ops they replace (numbers in export/optimize.py), and CPU graphs are
  exported without them. A CUDA session keeps them.
- prepacking: off by default (a second copy of every fp32 GEMM weight, +17-28 MB RSS for MiniLM, for 0-6% speed
  on bulk fp32; one-text calls, which repack every weight for a few tokens, ran 1.43x faster with it: README says
  how to turn it on), on for int8 graphs, which run 7-15% faster on prepacked weights for a few MB.
- outputs: only the outputs asked for are fetched (token embeddings are (batch, seq, hidden): copying them for
  a sentence embedding would be waste). On CUDA, inputs and outputs go through IO binding, the outputs copied
  to the host once.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import layout
from ..errors import GraphFileError, GraphRunError, InvalidInputError, non_negative_int, positive_int, warn
from .providers import CPU, CUDA, check_bound, cuda_unusable_reason, providers_for, warn_if_both_packages

logger = logging.getLogger(__name__)

_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion", "BiasGeluFusion")


_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has an int8 dot-product instruction (VNNI or AMX); None where that cannot be read.

    Without one, ONNX Runtime's u8s8 int8 kernels use VPMADDUBSW, whose 16-bit sums can saturate with full-range
    (8-bit) weights; int8 graphs for such CPUs are quantized with ``reduce_range`` (7-bit weights) instead.
    """
    if not is_x86():
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _VNNI_FLAGS)
    except OSError:
        pass
    return None


def available_cores() -> int:
    """Cores this process may use: its affinity mask where the OS has one, capped by a container's CPU quota.

    A container limited to 2 CPUs (``docker run --cpus=2``, a Kubernetes CPU limit) on a 64-core host still sees
    64 cores in its affinity mask; sizing thread pools or parallel runs by that oversubscribes the quota (threads
    wait throttled, each run holds its own buffers). ONNX Runtime's own default reads the host too.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, int(quota)) if quota is not None else cores)  # 1.5 CPUs: 1 thread, never throttled


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> float | None:
    """CPUs this process's cgroups allow it (the smallest CFS quota on its cgroup path); None when unlimited.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000") and cgroup v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us`` (a quota of -1 is unlimited) in the process's cgroup (``membership`` lines are
    "id:controllers:path") and each parent up to the mount point: a parent's quota binds its children.
    """
    root = Path(root)
    try:
        lines = Path(membership).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if controllers == "":  # cgroup v2's one hierarchy
            mount, v2 = root, True
        elif "cpu" in controllers.split(","):
            mount, v2 = next((m for m in (root / controllers, root / "cpu") if m.is_dir()), root / "cpu"), False
        else:
            continue
        folder = mount.joinpath(*[part for part in path.split("/") if part not in ("", ".", "..")])
        while True:
            limit = _read_quota(folder, v2)
            if limit is not None:
                limits.append(limit)
            if folder == mount:
                break
            folder = folder.parent
    return min(limits) if limits else None


def _read_quota(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, _, period = (folder / "cpu.max").read_text(encoding="ascii").strip().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (folder / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def check_thread_count(value: object, name: str, least: int = 1) -> int:
    """A thread count ONNX Runtime may start: an int from ``least`` (0 is ORT's "pick for me"), at most 4 threads
    a core: more (a count such as 10**6 made ORT start threads until memory ran out; a setting tuned on a large
    machine, loaded on a small one) is lowered to that, with a warning."""
    count = non_negative_int(value, name) if least == 0 else positive_int(value, name)
    most = 4 * (os.cpu_count() or 1)
    if count > most:
        warn(f"{name} is {count}, more than 4 threads for each of the {most // 4} cores here (ONNX Runtime "
             f"starts every one, and threads beyond the cores only wait): using {most}", UserWarning)
        return most
    return count


def default_session_options(threads: int | None = None, prepack: bool = False,
                            config_entries: dict[str, str] | None = None) -> Any:
    """st-onnx's SessionOptions; ``config_entries`` (``add_session_config_entry``) go in over its own, each key
    added once (ONNX Runtime prints a warning for a key added twice)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or available_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    # Prepacked weights are a second copy of every fp32 GEMM weight (+17-28 MB RSS for MiniLM); packing per run
    # instead costs O(K x N) against the run's O(M x K x N), M >= hundreds of tokens: 0-6% in fp32 (where M is a
    # one-query call's few tokens: 1.43x, README). int8 graphs run 7-15% faster on prepacked weights, which are a
    # quarter the size: ``prepack=True`` for int8 graphs.
    entries = {"session.disable_prepacking": "0" if prepack else "1", **(config_entries or {})}
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    return so


def disabled_optimizers(providers: Sequence[str]) -> list[str]:
    """The load-time fusions st-onnx's sessions turn off: on the CPU those its export leaves apart on purpose
    (``CPU_DISABLED_OPTIMIZERS``), none where CUDA runs. The export's parity check loads its graph so too."""
    return [] if CUDA in providers else list(CPU_DISABLED_OPTIMIZERS)


def is_ort_error(error: BaseException) -> bool:
    """An error ONNX Runtime raised (its pybind11 types, or a C++ exception pybind11 translated), as opposed to
    one raised into the call from outside: a signal handler's TimeoutError, Celery's SoftTimeLimitExceeded."""
    return type(error).__module__.startswith("onnxruntime") or type(error) in (RuntimeError, ValueError, TypeError)


# How long a fork waits for the runs under way in other threads (a batch takes milliseconds to a few seconds)
FORK_WAIT_S = 30.0


class _RunGate:
    """The runs under way in this process, and a fork waiting for them: a fork during a run copies the lock
    ONNX Runtime's session holds while running into the child, where nothing releases it, so the child's first
    run on that session waited forever (6 of 460 forks while another thread encoded). fork() waits for the runs
    of other threads to end (at most FORK_WAIT_S) and holds new ones back until it returned.

    Runs are noted per thread, and a fork waits only for threads that are inside ``OrtSession.run`` now: a fork
    from a signal handler does not wait for the run its own thread is in, and a note left behind by an exception
    a signal handler raised between the note and the run (a time limit) holds no fork up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, bool] = {}  # thread ident -> a run under way
        self._forking = 0  # forks waiting or under way: two threads may fork at once

    def __enter__(self) -> None:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._running[threading.get_ident()] = True

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._running.pop(threading.get_ident(), None)
            if self._forking:
                self._cond.notify_all()

    def _others_running(self) -> bool:
        me, frames = threading.get_ident(), sys._current_frames()
        return any(ident != me and _inside_run(frames.get(ident)) for ident in self._running)

    def before_fork(self) -> None:  # holds the lock through fork(): no run starts meanwhile
        self._cond.acquire()
        self._forking += 1
        if not self._cond.wait_for(lambda: not self._others_running(), timeout=FORK_WAIT_S):
            logger.warning("fork() went ahead after waiting %.0f s for the ONNX Runtime runs of other threads: the "
                           "child may hang in its first encode", FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:  # runs stay held back while another thread's fork waits
        self._forking -= 1
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:  # the child has none of the parent's other threads, nor their runs
        self.__init__()


def _inside_run(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code is OrtSession.run.__code__:
            return True
        frame = frame.f_back
    return False


_RUNS = _RunGate()
if hasattr(os, "register_at_fork"):
    # registered after concurrent.futures' own hook, so it runs before it (before-hooks run last registered
    # first): a fork waiting for runs must not hold the lock every ThreadPoolExecutor.submit takes
    importlib.import_module("concurrent.futures.thread")
    os.register_at_fork(before=_RUNS.before_fork, after_in_parent=_RUNS.after_fork_in_parent,
                        after_in_child=_RUNS.after_fork_in_child)


class OrtSession:
    """Run the fused graph: numpy features in, numpy outputs out, on the device it was created for."""

    def __init__(self, graph_path: str | os.PathLike, device: str = "cpu", *, threads: int | None = None,
                 session_options: Any = None, providers: Sequence[Any] | None = None,
                 provider_options: Sequence[dict] | dict | None = None, max_positions: int | None = None,
                 cuda_defaults: dict | None = None) -> None:
        """``max_positions``: the model's position embeddings, if known; a failed run wider than that says so.
        ``cuda_defaults``: CUDA provider options that the caller's ``providers``/``provider_options`` override."""
        import onnxruntime as ort

        self.graph_path = Path(graph_path)
        if not self.graph_path.is_file():
            raise GraphFileError(f"fused graph {self.graph_path} does not exist; export it first")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
            raise InvalidInputError(f"intra_op_num_threads must be a positive int; got {threads!r}")
        if session_options is not None and threads is not None:  # setting it would change the caller's object
            raise InvalidInputError(f"OrtSession takes threads ({threads!r}) or session_options, not both: set "
                                    "intra_op_num_threads on the SessionOptions")
        so = session_options if session_options is not None else default_session_options(threads)
        asked, opts = providers_for(device, providers, provider_options, cuda_defaults)
        names = asked
        if CUDA in asked and cuda_unusable_reason():
            # CUDA cannot bind without a GPU or without ONNX Runtime's CUDA provider: asking anyway prints ONNX
            # Runtime's own C++ lines before check_bound's warning tells the same in Python, where a caller can
            # filter it
            kept = [i for i, name in enumerate(asked) if name != CUDA]
            names, opts = [asked[i] for i in kept] or [CPU], [opts[i] for i in kept] or [{}]
        disabled = disabled_optimizers(names)
        try:
            self._session = ort.InferenceSession(str(self.graph_path), sess_options=so, providers=names,
                                                 provider_options=opts, disabled_optimizers=disabled)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            if not is_ort_error(e):
                raise
            newer = re.search(r"opset|ir version", str(e), re.IGNORECASE) is not None
            hint = (f"; the graph needs a newer ONNX Runtime than this one ({ort.__version__}): upgrade "
                    "onnxruntime, or export the graph again beside this one "
                    f"(`{layout.export_command(layout.graph_precision(self.graph_path), out_dir='OUT_DIR')}`)"
                    if newer else "")
            raise GraphFileError(f"ONNX Runtime cannot load {self.graph_path}: {str(e).strip()}{hint}") from e
        self.provider = check_bound(self._session, asked)
        warn_if_both_packages()
        # a failed run raises GraphRunError with ORT's message: its own "[E:onnxruntime:...]" stderr line besides
        # would tell it twice, and uncatchably for a caller that handles the error
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self.max_positions = max_positions
        self.device = device if self.provider == CUDA else "cpu"
        self.threads = so.intra_op_num_threads
        self.input_names = [i.name for i in self._session.get_inputs()]  # required: the token features
        # inputs with a default (an overridable initializer): fed only when the caller's features name them
        self.optional_input_names = [i.name for i in self._session.get_overridable_initializers()]
        self.input_types = {i.name: _ORT_INT_TYPES.get(i.type, np.int64) for i in self._session.get_inputs()}
        self.output_names = [o.name for o in self._session.get_outputs()]
        if "sentence_embedding" not in self.output_names or "attention_mask" not in self.input_names:
            raise GraphFileError(
                f"{self.graph_path} has inputs {self.input_names} and outputs {self.output_names}: not a fused "
                "graph, which takes token ids and an attention_mask and gives 'sentence_embedding' (a "
                "transformer-only graph, such as sentence-transformers' onnx/model.onnx, lacks the pooling); "
                f"export one (`{layout.export_command(layout.graph_precision(self.graph_path))}`) or graft the "
                "pooling onto it (st_onnx.export.graft_pooling)"
            )
        logger.debug("session on %s (%s, %d threads) over %s", self.device, self.provider, self.threads,
                     self.graph_path)

    @property
    def input_dtype(self) -> Any:
        """The integer type the graph's inputs take (int64 unless exported with int32 inputs)."""
        return self.input_types.get("input_ids", np.int64)

    def output_dim(self, name: str = "sentence_embedding") -> int | None:
        for out in self._session.get_outputs():
            if out.name == name and out.shape and isinstance(out.shape[-1], int):
                return out.shape[-1]
        return None

    def run(self, features: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Outputs ``outputs`` for ``features`` (extra feature names the graph does not take are ignored)."""
        feed = {name: self._as_input(name, features[name]) for name in self.input_names}
        feed.update((name, np.asarray(features[name], dtype=np.int64)) for name in self.optional_input_names
                    if name in features)
        try:
            with _RUNS:
                if self.provider == CUDA:
                    return self._run_bound(feed, outputs)
                return self._session.run(list(outputs), feed, self._run_options)
        except Exception as e:  # ORT's own Fail/InvalidArgument/RuntimeException types subclass no builtin error
            if not is_ort_error(e):  # a signal handler's TimeoutError, a task's time limit: the caller's own
                raise
            shape = tuple(feed["input_ids"].shape) if "input_ids" in feed else None
            width, limit = (shape[-1] if shape else None), self.max_positions
            # RoBERTa-style models number positions from padding_idx + 1: two fewer than the table holds
            too_long = width is not None and limit is not None and width > limit - 2
            hint = (f"; texts of {width} tokens are more than the model's {limit} position embeddings take: lower "
                    "max_seq_length to the model's limit" if too_long else "")
            raise GraphRunError(f"ONNX Runtime failed on a batch of input_ids shape {shape} "
                                f"({type(e).__name__}: {str(e).strip()}){hint}") from e

    def _as_input(self, name: str, value: np.ndarray) -> np.ndarray:
        dtype = self.input_types[name]
        return value if value.dtype == dtype else value.astype(dtype)

    def _run_bound(self, feed: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """CUDA: inputs copied to the device once, outputs left there by the run and copied back once."""
        binding = self._session.io_binding()
        device_id = int(self.device.partition(":")[2] or 0)
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            binding.bind_output(name, "cuda", device_id)
        self._session.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()

    def __repr__(self) -> str:
        return f"OrtSession({str(self.graph_path)!r}, device={self.device!r}, threads={self.threads})"
