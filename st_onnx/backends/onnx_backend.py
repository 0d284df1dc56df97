"""OnnxBackend: encode with the fused ONNX graph on ONNX Runtime, mirroring TorchBackend's interface.

Torch is imported only to export a graph (missing or stale, with torch weights in the folder) or to save
``modules=[...]`` into a folder first; a folder holding only the ONNX bundle (graph + manifest + tokenizer +
configs) encodes with tokenizers, numpy and ONNX Runtime alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import folders, layout
from ..encode.batching import DEFAULT_TOKEN_BUDGET, GPU_TOKEN_BUDGET, check_token_budget
from ..encode.options import EncodeOptions
from ..encode.tokenize import TextTokenizer
from ..errors import BackendError, InvalidInputError, ModelFolderError, StaleGraphError, warn
from ..runtime.encoder import PROMPT_LENGTH, OrtEncoder
from ..runtime.graphs import GraphChoice, find_graph, find_packed, graphs_root
from ..runtime.manifest import graph_problem
from ..runtime.providers import (CUDA, check_providers, cuda_unusable_reason, cuda_usable, provider_name,
                                 resolve_device)
from ..runtime.session import OrtSession, available_cores, check_thread_count, default_session_options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxOptions:
    """``onnx_options`` of the facade, validated."""

    precision: str | None = None  # None: fp16 where CUDA will run it, else fp32
    file_name: str | None = None
    providers: Any = None
    provider_options: Any = None
    session_options: Any = None
    intra_op_num_threads: int | None = None
    token_budget: int | None = None  # None: DEFAULT_TOKEN_BUDGET (CPU) or GPU_TOKEN_BUDGET padded tokens
    export: str = "auto"
    packing: bool = False  # CUDA fp16 only: run the packing-mode graph (export/packing.py)

    @classmethod
    def from_dict(cls, options: Any) -> "OnnxOptions":
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidInputError(f"onnx_options must be a dict such as {{'precision': 'int8'}}; got {options!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(map(repr, set(options) - set(known)))
        if unknown:
            raise InvalidInputError(f"onnx_options has unknown keys {', '.join(unknown)}; allowed: {', '.join(known)}")
        opts = cls(**options)
        if opts.precision is not None and opts.precision not in layout.PRECISIONS:
            raise InvalidInputError(
                f"onnx_options['precision'] is {opts.precision!r}; allowed: {', '.join(layout.PRECISIONS)}"
            )
        if opts.token_budget is not None:  # numpy integers become ints, as ONNX Runtime takes them
            opts = dataclasses.replace(opts, token_budget=check_token_budget(opts.token_budget))
        if opts.intra_op_num_threads is not None:
            threads = check_thread_count(opts.intra_op_num_threads, "onnx_options['intra_op_num_threads']")
            opts = dataclasses.replace(opts, intra_op_num_threads=threads)
        if opts.file_name is not None and (not isinstance(opts.file_name, (str, os.PathLike)) or not str(opts.file_name)):
            raise InvalidInputError(f"onnx_options['file_name'] must be a path to a graph file (relative to the model "
                                    f"folder, or absolute); got {opts.file_name!r}")
        check_providers(opts.providers, opts.provider_options)
        if opts.session_options is not None and not isinstance(opts.session_options, dict) \
                and type(opts.session_options).__name__ != "SessionOptions":
            raise InvalidInputError(f"onnx_options['session_options'] must be an onnxruntime.SessionOptions or a "
                                    f"dict of its attributes; got {opts.session_options!r}")
        if opts.intra_op_num_threads is not None and opts.fixed_threads:
            raise InvalidInputError(
                f"onnx_options sets the threads twice: intra_op_num_threads={opts.intra_op_num_threads!r} and "
                "session_options (a SessionOptions object, whose intra_op_num_threads is used as it is, or a dict "
                "naming intra_op_num_threads); pass one of them"
            )
        if not isinstance(opts.packing, bool):
            raise InvalidInputError(f"onnx_options['packing'] must be True or False; got {opts.packing!r}")
        if opts.packing and opts.file_name is not None:
            raise InvalidInputError(
                "onnx_options names both 'file_name' and 'packing': file_name picks the graph file to run "
                f"({opts.file_name!r}), packing derives one from the fp16 graph; pass one of them"
            )
        return opts

    @property
    def fixed_threads(self) -> bool:
        """True when ``session_options`` sets the sessions' threads (a SessionOptions object, used as it is, or a
        dict naming them): st-onnx then neither runs batches side by side nor divides the cores among a pool's
        sessions."""
        so = self.session_options
        return so is not None and (not isinstance(so, dict) or "intra_op_num_threads" in so)

    def precision_for(self, device: str) -> str:
        # default: fp16 where CUDA will run the graph, else fp32 (a CUDA fallback to the CPU warns when bound)
        cuda = _cuda_will_run(device, self.providers)
        precision = self.precision or ("fp16" if cuda else "fp32")
        if precision == "fp16" and device == "cpu":
            raise InvalidInputError(
                "precision 'fp16' on the CPU is refused: ONNX Runtime's CPU kernels run fp16 graphs about 100x "
                "slower than fp32; allowed on 'cpu': 'fp32', 'int8' (use fp16 with device='cuda')"
            )
        if precision == "fp16" and not cuda:
            why = cuda_unusable_reason() or f"CUDA usable: {cuda_usable()}"
            raise InvalidInputError(
                f"precision 'fp16' runs on CUDA only, and CUDA would not run it here (device {device!r}, providers "
                f"{self.providers!r}: {why}); ONNX Runtime's CPU kernels run fp16 graphs about 100x slower than "
                "fp32: use onnx_options={'precision': 'fp32'} (or 'int8'), or fix the CUDA setup"
            )
        if self.packing and (precision != "fp16" or not device.startswith("cuda")):
            raise InvalidInputError(
                f"onnx_options['packing'] needs device 'cuda' and precision 'fp16' (ONNX Runtime has CUDA kernels "
                f"only for packed attention); got device {device!r}, precision {precision!r}"
            )
        return precision


class OnnxBackend:
    name = "onnx"

    def __init__(self, folder: Path, choice: GraphChoice, device: str, options: OnnxOptions,
                 tokenizer: TextTokenizer) -> None:
        self.folder = folder
        self.graph_path = choice.path
        self.manifest = choice.manifest
        self.options = options
        self._text_tokenizer = tokenizer
        self._include_prompt = bool(self.manifest.get("pooling_include_prompt", True))
        self._linked_transformer: Any = None  # the torch Transformer module, once the facade loads it
        self._linked_pooling: Any = None  # and its Pooling module
        self._linked_stack: Any = None  # all of them, and their change marks when linked: see check_modules
        self._linked_marks: Any = None
        self._linked_digest: str | None = None  # the content digest the graph computes
        self.folder_identity = folders.folder_identity(folder)  # (load sets the one from before its reads)
        self._copy_in_use: Path | None = None  # the lock file marking a modules=[...] copy in use
        self._graph_stat = _stat_signature(self.graph_path)  # its files' sizes and times: see graph_changed
        self._device_lock = threading.Lock()  # device changes from several threads: one at a time
        self._encoder = self._make_encoder(device)
        # the graph's own inputs decide whether pairs carry token types (its manifest says so too, unless edited)
        self._text_tokenizer.type_ids = "token_type_ids" in self._encoder.session.input_names

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, model: Any, modules: Any = None, device: str | None = None,
             options: dict[str, Any] | None = None) -> "OnnxBackend":
        opts = OnnxOptions.from_dict(options)
        device = resolve_device(device)
        precision = opts.precision_for(device)
        cache_folder = getattr(model, "cache_folder", None)
        in_use = None
        if modules is not None:
            folder, in_use = _save_modules(model, modules, cache_folder)
        else:
            folder = Path(model.model_path)
        seen = folders.folder_identity(folder)  # the folder this model loads (a save swaps in another)
        try:
            with _folder_lock(folder, precision):  # threads loading one graph at once: one exports, the rest load it
                choice = find_graph(folder, precision, file_name=opts.file_name, export=opts.export,
                                    cache_folder=cache_folder, exporter=_export)
            if opts.packing:
                choice = find_packed(folder, choice, export=opts.export, cache_folder=cache_folder, packer=_pack)
            backend = cls(folder, choice, device, opts, TextTokenizer.from_folder(folder, choice.manifest))
            backend.folder_identity = seen
        except BaseException:
            if in_use is not None:
                os.close(in_use)
            raise
        if in_use is not None:  # the copy is in use while the backend running its graph lives (pools, to())
            weakref.finalize(backend, os.close, in_use)
            backend._copy_in_use = folder.parent / f".{folder.name}.inuse"
        return backend

    # -- pickling: DataLoader workers and process pools under spawn or forkserver (macOS, Windows, Python 3.14)
    def __getstate__(self) -> dict[str, Any]:
        """The graph's path and manifest, the options, the tokenizer and settings travel; ONNX Runtime's session
        does not pickle: the receiving process opens one of its own on the same graph file."""
        if self.options.session_options is not None and not isinstance(self.options.session_options, dict):
            raise InvalidInputError(
                "this model was loaded with onnx_options['session_options'] an onnxruntime.SessionOptions, which "
                "does not pickle (nor can its settings be read back whole); to send the model to another process, "
                "load it with session_options as a dict of its attributes, e.g. {'intra_op_num_threads': 1}"
            )
        state = self.__dict__.copy()
        del state["_encoder"], state["_device_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._device_lock = threading.Lock()
        copy = state.get("_copy_in_use")  # a modules=[...] copy: in use here too, so no eviction removes it
        in_use = _hold_in_use(copy) if copy is not None else None
        if in_use is not None:
            weakref.finalize(self, os.close, in_use)
        problem = self.graph_changed()  # on another machine, or re-exported meanwhile, it is not this model's
        if problem is not None:
            raise StaleGraphError(f"an unpickled onnx model finds its graph changed or missing ({problem}); load "
                                  "the model in this process instead (SentenceTransformer(path, backend='onnx'), "
                                  "for example in a worker's initializer)")
        self._encoder = self._make_encoder(self._requested_device)

    def graph_changed(self) -> str | None:
        """Why the graph file is no longer the one this model loaded (gone, cut short, another one), else None.
        Files of the sizes and times they had at load are taken as unchanged, unhashed; others are checked
        against the manifest's size and sha256, and a graph without a manifest (``file_name=``) has no other
        record than those sizes and times."""
        try:
            if _stat_signature(self.graph_path) == self._graph_stat:
                return None
            problem = graph_problem(self.graph_path, self.manifest)
        except OSError as e:  # a save without graphs, a folder moved: gone
            return f"{self.graph_path}: {e.strerror}"
        if problem is None and not self.manifest.get("graph_sha256"):
            problem = f"{self.graph_path} has another size or modification time than when the model loaded"
        return problem

    def new_session(self, device: str, threads: int | None = None) -> OrtSession:
        """Another session over the same graph (the session pool makes one per device)."""
        now = folders.folder_identity(self.folder)
        if now != self.folder_identity:  # a save swapped another folder in: is the graph there still this one?
            problem = self.graph_changed()
            if problem is not None:
                raise StaleGraphError(f"{self.folder} was replaced by a save since this model loaded, and its graph "
                                      f"is another one now ({problem}): this model's sessions would run another "
                                      "model; load the model again")
            self.folder_identity = now
        opts = self.options
        session_options = _session_options(opts.session_options, threads or opts.intra_op_num_threads,
                                           prepack=self.manifest.get("precision") == "int8")
        session = OrtSession(self.graph_path, device, session_options=session_options, providers=opts.providers,
                             provider_options=opts.provider_options,
                             cuda_defaults=cuda_defaults(self.manifest.get("precision")),
                             max_positions=_max_positions(self.folder))
        if self.manifest.get("precision") == "fp16" and session.provider != CUDA:  # CUDA libraries failed to load
            raise InvalidInputError(
                f"the fp16 graph {self.graph_path.name} would run on {session.provider} (see the warning above): "
                "ONNX Runtime's CPU kernels run fp16 about 100x slower than fp32; fix the CUDA setup, or load with "
                "onnx_options={'precision': 'fp32'} (or 'int8')"
            )
        return session

    def encoder_for(self, session: OrtSession, parallel: int = 1) -> OrtEncoder:
        budget = self.options.token_budget or (
            GPU_TOKEN_BUDGET if session.device.startswith("cuda") else DEFAULT_TOKEN_BUDGET)
        dim = session.output_dim() or self.sentence_embedding_dimension()
        return OrtEncoder(session, self._text_tokenizer, dim, budget, parallel)

    def _make_encoder(self, device: str) -> OrtEncoder:
        if device == "cpu" and self.manifest.get("packing"):
            raise InvalidInputError(
                f"{self.graph_path.name} is a packing-mode graph, which runs on CUDA only (ONNX Runtime has no CPU "
                "kernels for RemovePadding/PackedAttention); use device='cuda', or the padded graph on the CPU"
            )
        if device == "cpu" and self.manifest.get("precision") == "fp16":
            raise InvalidInputError(
                "this model runs the fp16 graph, which is refused on the CPU (ONNX Runtime's CPU kernels run "
                "fp16 about 100x slower); reload it with onnx_options={'precision': 'fp32'} (or 'int8')"
            )
        if device == "cpu":
            _warn_if_quantized_for_vnni(self.graph_path, self.manifest)
        _warn_if_left_padding_shifts(self.graph_path, self.manifest)
        # the old encoder is not closed: a call running on it in another thread finishes there; its executor's
        # threads exit once the last call lets go of it (ThreadPoolExecutor's weakref callback)
        if device == "cpu" and self.options.intra_op_num_threads is None and not self.options.fixed_threads:
            # batch-level parallelism: one thread per run, as many runs at once as cores (see runtime/encoder.py)
            cores = available_cores()
            encoder = self.encoder_for(self.new_session(device, threads=1), parallel=cores)
        else:
            encoder = self.encoder_for(self.new_session(device))
        self._requested_device = device  # recorded once its encoder exists (the caller publishes both)
        return encoder

    # -- TorchBackend's interface ---------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._encoder.session.device

    def to(self, device: str) -> None:
        device = resolve_device(device)
        with self._device_lock:  # two changes at once: the last one wins, encoder and recorded device alike
            if device != self._requested_device:
                self._encoder = self._make_encoder(device)

    def sentence_embedding_dimension(self) -> int | None:
        """The graph's output width where its shape says it, else the manifest's."""
        encoder = getattr(self, "_encoder", None)
        dim = encoder.session.output_dim() if encoder is not None else None
        recorded = self.manifest.get("embedding_dimension")
        return dim if dim is not None else recorded if isinstance(recorded, int) else None

    @property
    def tokenizer(self):
        return self._text_tokenizer.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._text_tokenizer.tokenizer = value
        self.max_seq_length = self._text_tokenizer.max_seq_length  # the new tokenizer's, for the modules too

    @property
    def text_tokenizer(self) -> TextTokenizer:
        self._sync_max_seq_length()
        return self._text_tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.text_tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._text_tokenizer.max_seq_length = value
        if self._linked_transformer is not None:
            self._linked_transformer.max_seq_length = value

    def link_modules(self, stack: Any) -> None:
        """Share ``max_seq_length`` with the torch Transformer module (``model[0]``) and ``include_prompt`` with
        the Pooling module: sentence-transformers users set them on the modules, and ``save`` writes the modules'
        values. This backend's values, possibly set before the modules loaded, are the modules' from now on."""
        recorded, digest = self.manifest.get("module_digest"), None
        if not (isinstance(recorded, str) and recorded.startswith(layout.MODULE_DIGEST_SCHEME)):
            recorded = None  # none (a graft), or of another st-onnx's scheme: not comparable with this one's
        if folders.folder_identity(self.folder) != self.folder_identity:
            digest = stack.content_digest(self._digest_prompt())
            if digest != recorded:
                raise StaleGraphError(f"{self.folder} was replaced by a save of other weights since this model "
                                      "loaded: its torch modules (model[i], save) would no longer be those of the "
                                      "graph it runs; load the model again")
        stack.transformer.max_seq_length = self._text_tokenizer.max_seq_length
        self._linked_transformer = stack.transformer
        pooling = next((m for m in stack if hasattr(m, "include_prompt")), None)
        if pooling is not None:
            pooling.include_prompt = self._include_prompt
            self._linked_pooling = pooling
        self._linked_stack, self._linked_marks = stack, stack.change_marks()
        # the manifest's, else (a grafted graph records none) the modules' as loaded, which the graph computes
        self._linked_digest = recorded or digest or stack.content_digest(self._digest_prompt())

    def _digest_prompt(self) -> Any:
        return self.manifest.get("pooling_include_prompt")

    def check_modules(self) -> None:
        """Refuse to encode once the linked torch modules compute something other than the graph: their weights
        or settings changed in memory (an optimizer step over ``model.parameters()``, ``model[0].auto_model``'s
        ``load_state_dict``, ``model[1].pooling_mode = ...``), which the graph, exported from the saved ones,
        does not follow. Cheap marks tell that nothing changed; where they moved, the modules' content digest
        is compared with the one the graph was exported from (weights loaded again unchanged pass)."""
        stack = self._linked_stack
        if stack is None:
            return
        marks = stack.change_marks()
        if marks == self._linked_marks:
            return
        if stack.content_digest(self._digest_prompt()) == self._linked_digest:
            self._linked_marks = marks
            return
        raise BackendError(
            f"the torch modules changed in memory since the graph {self.graph_path.name} was exported from them "
            f"({_first_change(self._linked_marks, marks)}); the onnx backend would encode with the old weights and "
            "settings. Save the model and load the saved folder with backend='onnx' (its graph is exported again), "
            "or encode with backend='torch'"
        )

    def _sync_max_seq_length(self) -> None:
        linked = self._linked_transformer
        if linked is not None and linked.max_seq_length != self._text_tokenizer.max_seq_length:
            self._text_tokenizer.max_seq_length = linked.max_seq_length

    def tokenize(self, texts: list) -> dict[str, np.ndarray]:
        return self.text_tokenizer(texts)

    def pooling_include_prompt(self) -> bool:
        if self._linked_pooling is not None:  # model[1].include_prompt = ... is how sentence-transformers sets it
            return bool(self._linked_pooling.include_prompt)
        return self._include_prompt

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        self._include_prompt = include_prompt  # checked against the graph when a prompt is used (prompt_length)
        if self._linked_pooling is not None:
            self._linked_pooling.include_prompt = include_prompt

    def prompt_length(self, prompt: str) -> int:
        """The prompt's token count: fed to the graph's ``prompt_length`` input where pooling leaves the prompt
        out, which a graph without that input cannot do (BackendError)."""
        if not self.pooling_include_prompt() and PROMPT_LENGTH not in self._encoder.session.optional_input_names:
            raise BackendError(
                f"pooling is to leave the prompt's tokens out (include_prompt=False), but the graph "
                f"{self.graph_path.name} has no prompt_length input: it pools every token the attention mask "
                "keeps. st-onnx exports that input when the model folder's Pooling config says "
                f"include_prompt=false; encode with prompt {prompt!r} on backend='torch', or without a prompt"
            )
        return self.text_tokenizer.prompt_length(prompt)  # the property: at the max_seq_length in use

    def encode(self, inputs: list, opts: EncodeOptions) -> Any:
        self.check_modules()
        if opts.device is not None:
            self.to(opts.device)
        self._sync_max_seq_length()
        return self._encoder.encode(inputs, opts.batch_size, opts.output_value, opts.show_progress_bar,
                                    opts.prompt_length)

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.graph_path)!r}, device={self.device!r})"


def _first_change(before: dict, after: dict) -> str:
    """Which module changed between two ``change_marks``, and how, in words."""
    for idx, ((kind, settings, tensors), (_, settings_now, tensors_now)) in enumerate(zip(before["modules"],
                                                                                         after["modules"])):
        keys = sorted(k for k in settings.keys() | settings_now.keys() if settings.get(k) != settings_now.get(k))
        if keys:
            return f"model[{idx}] ({kind}): its settings {keys}"
        if tensors != tensors_now:
            names = [a[0] for a, b in zip(tensors, tensors_now) if a != b] or [t[0] for t in tensors_now]
            return f"model[{idx}] ({kind}): its tensor {names[0]!r}"
    if len(before["modules"]) != len(after["modules"]):
        return "the list of modules"
    return "their weights, after an optimizer step"


# (folder, precision) -> [its lock, the threads holding or waiting for it]; an entry goes with its last thread, so
# a process loading ever new folders (modules=[...] copies in a training loop) keeps none of the old ones
_FOLDER_LOCKS: dict[tuple[str, str], list[Any]] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


@contextmanager
def _folder_lock(folder: Path, precision: str) -> Iterator[None]:
    key = (os.path.realpath(folder), precision)
    with _FOLDER_LOCKS_GUARD:
        entry = _FOLDER_LOCKS.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _FOLDER_LOCKS_GUARD:
            entry[1] -= 1
            if entry[1] == 0 and _FOLDER_LOCKS.get(key) is entry:
                del _FOLDER_LOCKS[key]


def _reset_folder_locks() -> None:  # a lock a parent's thread held at fork() stays held in the child: new ones
    global _FOLDER_LOCKS_GUARD
    _FOLDER_LOCKS.clear()
    _FOLDER_LOCKS_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_folder_locks)


def cuda_defaults(precision: str | None) -> dict[str, Any]:
    """CUDA provider options under the caller's: ``use_tf32=0`` for fp32 graphs.

    ONNX Runtime's CUDA provider runs fp32 MatMuls in TF32 by default (10-bit mantissa, like fp16's) on Ampere and
    newer; PyTorch does not (float32_matmul_precision 'highest'). A user who asks for fp32 gets fp32 numerics,
    with ``providers`` listed or not, fp16 being the fast path; ``provider_options={'use_tf32': 1}`` (or the
    option in a ``providers`` entry) brings TF32 back.
    """
    return {"use_tf32": 0} if precision == "fp32" else {}


def _warn_if_quantized_for_vnni(graph: Path, manifest: dict[str, Any]) -> None:
    """An int8 graph with full 8-bit weights, on an x86 CPU without VNNI/AMX: say so (export/optimize.py)."""
    from ..runtime.session import cpu_has_vnni

    quantization = manifest.get("quantization") or {}
    if manifest.get("precision") == "int8" and quantization.get("reduce_range") is False and cpu_has_vnni() is False:
        warn(
            f"{graph} was quantized for CPUs with VNNI (8-bit weights, reduce_range=False); this CPU has no VNNI, "
            "where ONNX Runtime's int8 kernels can saturate and lose accuracy. Re-export the int8 graph on this "
            "machine (st-onnx export MODEL_DIR MODEL_DIR --precision int8), which uses 7-bit weights here",
            RuntimeWarning,
        )


def _warn_if_left_padding_shifts(graph: Path, manifest: dict[str, Any]) -> None:
    """The export measured that the torch modules' embeddings move with left padding (export/verify.py)."""
    shift = manifest.get("left_padding_shift")
    if isinstance(shift, (int, float)) and shift > 0:
        warn(
            f"{graph} was exported from a model whose tokenizer pads on the left while its positions shift with "
            f"padding: its torch embeddings depend on the batch (cosine distance {shift:.3g} measured at export), "
            "where this backend pads on the right and embeds each text as if alone, so the two backends (and "
            "sentence-transformers) differ; set padding_side to 'right' in tokenizer_config.json and re-export",
            UserWarning,
        )


def _session_options(value: Any, threads: int | None, prepack: bool = False) -> Any:
    """A SessionOptions as given, or the defaults with a dict's attributes set on them.

    In a dict, ``config_entries`` ({key: value}) go to ``add_session_config_entry``; other keys are attributes.
    """
    if value is None or isinstance(value, dict):
        entries = (value or {}).get("config_entries", {})
        if not isinstance(entries, dict):
            raise InvalidInputError(f"onnx_options['session_options']['config_entries'] must be a dict of config "
                                    f"key -> value; got {entries!r}")
        so = default_session_options(threads, prepack, {str(k): str(v) for k, v in entries.items()})
        for key, item in (value or {}).items():
            if key == "config_entries":
                continue
            if isinstance(key, str) and not key.startswith("_") and hasattr(so, key):
                if key in ("intra_op_num_threads", "inter_op_num_threads"):  # 0: ONNX Runtime's default
                    item = check_thread_count(item, f"onnx_options['session_options'][{key!r}]", least=0)
                try:
                    setattr(so, key, item)
                except TypeError as e:  # pybind11 names the expected type
                    raise InvalidInputError(f"onnx_options['session_options'][{key!r}] = {item!r} has the wrong "
                                            f"type ({e})") from e
            else:
                raise InvalidInputError(
                    f"onnx_options['session_options'] has {key!r}; allowed: SessionOptions attributes "
                    "(e.g. 'intra_op_num_threads', 'enable_cpu_mem_arena') or 'config_entries'"
                )
        return so
    return value


def _cuda_will_run(device: str, providers: Any) -> bool:
    """Whether a session for ``device`` would bind CUDA: asked for (the device, or first of explicit providers)
    and usable here."""
    if providers:
        return provider_name(providers[0]) == CUDA and cuda_usable()
    return device.startswith("cuda") and cuda_usable()


def _max_positions(folder: Path) -> int | None:
    try:
        config = layout.read_json_if_exists(layout.transformer_folder(folder) / layout.HF_CONFIG_JSON, {}) or {}
    except ModelFolderError:
        return None
    limit = config.get("max_position_embeddings")
    return limit if layout.is_length_limit(limit) else None


def _export(folder: Path, precision: str, out_dir: Path | None) -> Path:
    """Export with the torch exporter (imported here only: exporting needs torch)."""
    from ..export import export_model_folder

    # out_dir, when given, is the graph cache's copy of a read-only folder: st-onnx's own, replaced at will
    return Path(export_model_folder(folder, precision=precision, out_dir=out_dir, replace=out_dir is not None))


def _stat_signature(graph: Path) -> tuple[int, ...]:
    """The sizes and modification times of a graph file and of its weights file, where it has one."""
    info = graph.stat()
    data = layout.graph_data_path(graph)
    extra = data.stat() if data.is_file() else None
    return (info.st_size, info.st_mtime_ns) + ((extra.st_size, extra.st_mtime_ns) if extra else ())


def _pack(graph: Path, target: Path, folder: Path) -> Path:
    """Pack the fp16 graph (onnx and ORT's transformer tools: imported here only)."""
    from ..export.packing import pack_graph

    return pack_graph(graph, target, model_folder=folder)


def _save_modules(model: Any, modules: Any, cache_folder: Any) -> tuple[Path, int | None]:
    """``modules=[...]`` with backend onnx: save them to a cache folder keyed by their weights, once; with the
    descriptor that marks that folder in use (``_hold_in_use``) for the caller to close when done with it."""
    from ..fingerprint import folder_fingerprint
    from ..saving import save_model

    model._load_stack(modules)
    root = graphs_root(cache_folder) / "modules"
    root.mkdir(parents=True, exist_ok=True)
    folders.remove_abandoned(root, ".modules-*")  # a killed process's (a day old)
    staging = Path(tempfile.mkdtemp(prefix=".modules-", dir=root))
    try:
        save_model(model, staging / "model", create_model_card=False)
        key = folder_fingerprint(staging / "model").split(":")[-1][:16]
        target = root / key
        # in use from before it is looked for: an eviction now has to wait, or has removed it already
        in_use = _hold_in_use(root / f".{key}.inuse")
        try:
            if not target.is_dir():
                try:
                    (staging / "model").rename(target)
                except OSError:
                    if not target.is_dir():  # another process put the same modules there first
                        raise
            os.utime(target)  # the most recently used
        except BaseException:
            if in_use is not None:
                os.close(in_use)
            raise
    finally:  # interrupted or failed: no copy of the model stays behind
        shutil.rmtree(staging, ignore_errors=True)
    _evict_unused_copies(root, target)
    logger.info("saved the given modules to %s to export their graph", target)
    return target, in_use


# Copies of modules=[...] kept besides those in use: every new set of weights (a training loop evaluating on the
# onnx backend, tests with random weights) is a full model folder with its graph (143 MB for MiniLM int8)
KEEP_UNUSED_COPIES = 2


def _hold_in_use(path: Path) -> int | None:
    """A descriptor holding a shared ``flock`` on ``path`` (made if missing), which marks a modules copy in use
    while it is open; None where no lock can be taken (then nothing is evicted either)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass  # an eviction removed the lock file while this waited for it: take the new one
        except OSError:
            os.close(fd)
            return None
        os.close(fd)


def _evict_unused_copies(root: Path, current: Path, keep: int = KEEP_UNUSED_COPIES) -> None:
    """Remove the copies under ``root`` that no model uses now (in any process: their lock file can be locked
    exclusively) beyond the ``keep`` most recently used of those."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return

    def last_used(folder: Path) -> float:
        try:
            return folder.stat().st_mtime
        except OSError:
            return 0.0

    copies = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current),
                    key=last_used, reverse=True)
    unused = 0
    for old in copies:
        lock = root / f".{old.name}.inuse"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a model uses it
            except OSError:
                return  # no locks on this file system: nothing tells which copies are in use
            unused += 1
            if unused <= keep:
                continue
            shutil.rmtree(old, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
