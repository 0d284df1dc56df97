"""Export a ModuleStack to ONE ONNX graph (token ids -> finished embedding), optimize it, prove parity, write it.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). ORT's transformer optimizer
matches the subgraphs the TorchScript exporter emits for BERT-style eager attention; measured here on
all-MiniLM-L6-v2 (torch 2.13, transformers 5.24, ORT 1.31.1) it fuses 1 EmbedLayerNormalization, 6 Attention,
12 SkipLayerNormalization and 6 BiasGelu. The dynamo exporter (``dynamo=True``, opset 18) gives ORT's optimizer
patterns it does not match: measured on the same model, only 6 BiasGelu + 13 LayerNormalization fuse (no Attention,
SkipLayerNormalization or EmbedLayerNormalization, with eager or SDPA attention alike), and the project's notes
measured it slower (1.29x/0.71x vs 1.50x/1.01x over sentence-transformers on short/long texts).

Nothing is written unless parity passes: all work happens in a temp folder beside the target, then the graph and
its manifest are renamed into place (the old manifest is removed first, so a crash never leaves a graph whose
manifest describes other bytes). A graph over protobuf's 2 GB keeps its weights in a data file beside it
(``graph_files``).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import folders, layout
from ..errors import BackendError, DiskFullError, InvalidInputError, ModelFolderError, ParityError, int_between
from ..runtime.encoder import PROMPT_LENGTH
from ..runtime.graphs import Snapshot, record_stat
from . import manifest as manifest_mod
from . import optimize as passes
from .graph_files import place_graph, remove_graph, save_graph
from .graph_module import FusedModule, eager_attention, graph_input_names, index_based_masks
from .verify import LEFT_PADDING_TOLERANCE, ParityReport, check_parity, check_tokenizer, left_padding_shift

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False)"


def export_fused_graph(stack, out_dir: str | os.PathLike, precision: str = "fp32", *, fingerprint: str,
                       sentences: Sequence[str] | None = None, optimize: bool = True,
                       opset: int | None = None, source_files: dict[str, str] | None = None) -> Path:
    """Export ``stack`` into ``layout.fused_graph_path(out_dir, precision)`` with its manifest; return the path.

    ``source_files``: ``fingerprint.source_digests`` of the folder the stack was loaded from, recorded so that a
    folder later stripped of its weights is still checked against its configs.

    Raises ParityError (and writes nothing) when the graph's embeddings differ from the torch modules' beyond
    the precision's threshold (``verify.COSINE_THRESHOLDS``).
    """
    target = layout.fused_graph_path(out_dir, precision)  # validates precision
    if not hasattr(stack, "content_digest"):
        raise InvalidInputError(f"stack must be a model's torch modules (model.torch_modules, or load_stack(folder))"
                                f"; got {type(stack).__name__}")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise InvalidInputError(f"fingerprint must be a non-empty string (folder_fingerprint(folder)); got {fingerprint!r}")
    opset = DEFAULT_OPSET if opset is None else int_between(opset, "opset", 14, _max_opset(),  # before the trace
                                                            f" (default {DEFAULT_OPSET})")
    if sentences is not None and (isinstance(sentences, str) or not all(isinstance(t, str) and t for t in sentences)):
        raise InvalidInputError(f"sentences (the texts parity is checked on) must be a list of non-empty strings; "
                                f"got {sentences!r:.80}")
    check_traceable_transformers()
    _check_traceable_model(stack.transformer.auto_model)
    was_training = stack.training
    digest = stack.content_digest()  # of the modules as given (fp16 ones too): what a save compares
    stack = _cpu_eval(stack)
    try:
        with folders.work_folder(target.parent, "export") as tmp:
            _export_into(stack, tmp, target, precision, fingerprint, opset, optimize, sentences, digest,
                         source_files)
    finally:
        stack.train(was_training)  # a model exported mid-training keeps training
    return target


def _max_opset() -> int:
    """The newest opset the installed torch exports (23 for torch 2.13: 24 it refuses after tracing)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError, TypeError, ValueError):
        return 23


# torch.onnx.export keeps process-wide state (GLOBALS.in_onnx_export): one trace at a time per process
_TRACE_LOCK = threading.Lock()


def _reset_trace_lock() -> None:
    global _TRACE_LOCK
    _TRACE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_trace_lock)

# transformers releases whose attention masks cannot be traced by torch.onnx.export: they take a traced size
# (a 0-d tensor) for the cache_position argument they deprecated, and fail with an IndexError in sdpa_mask
_UNTRACEABLE_TRANSFORMERS = ((5, 4), (5, 9))  # 5.4 up to, not including, 5.9 (measured: 5.3 and 5.9 trace)


def check_traceable_transformers(version: str | None = None) -> None:
    """Raise BackendError naming the fix when the installed transformers cannot be traced into a graph."""
    if version is None:
        import transformers

        version = transformers.__version__
    low, high = _UNTRACEABLE_TRANSFORMERS
    if low <= passes.major_minor(version) < high:
        raise BackendError(
            f"transformers {version} cannot be exported: torch.onnx.export fails inside its attention masks "
            "(fixed in 5.9); install transformers>=5.23, this project's floor, to export (graphs exported already "
            "run with any version)"
        )


# model types whose graph a trace cannot capture: it would fix, to the tracing batch's, what depends on the texts
_UNTRACEABLE_MODELS = {
    "switch_transformers": "its mixture-of-experts layers send each token to an expert chosen from the token's "
                           "values, and a trace fixes how many tokens each expert gets",
    "pegasus_x": "its block-local attention splits texts into blocks, and a trace fixes the number of blocks",
}


def _check_traceable_model(model) -> None:
    why = _UNTRACEABLE_MODELS.get(getattr(model.config, "model_type", None))
    if why:
        raise BackendError(f"{type(model).__name__} (model_type {model.config.model_type!r}) has no fused graph: "
                           f"{why}; backend='torch' runs it")


def _export_into(stack, tmp: Path, target: Path, precision: str, fingerprint: str, opset: int, optimize: bool,
                 sentences: Sequence[str] | None, digest: str, source_files: dict[str, str] | None) -> None:
    names = graph_input_names(stack)
    prompt = not stack.includes_prompt
    raw, dim = _trace(stack, names, tmp / "raw.onnx", opset, prompt)
    graph, fusions, extra = _optimize(stack, raw, tmp, precision, optimize)
    if prompt:
        passes.default_input(graph, PROMPT_LENGTH, 0)
        extra["optional_inputs"] = {PROMPT_LENGTH: 0}
    # names: those the graph takes (less what the model never reads: DeBERTa-v3's token_type_ids)
    report, prompt_report, names = _verify(stack, graph, names, precision, sentences, prompt)
    for checked in (report, prompt_report):
        if checked is not None and not checked.passed:
            raise ParityError(f"the exported {precision} graph does not compute what PyTorch computes: {checked}")
    if prompt_report is not None:
        extra["parity_prompt_length"] = prompt_report.to_dict()
    shift = left_padding_shift(stack)
    if shift > LEFT_PADDING_TOLERANCE:
        extra["left_padding_shift"] = shift
        # INFO: a load warns of it (each load, from the manifest), and `st-onnx export` prints it
        logger.info("this model's tokenizer pads on the left (padding_side 'left') and its positions shift "
                    "with it: in torch (and sentence-transformers) a text's embedding depends on its batch "
                    "(cosine distance %.3g alone vs beside a long text). The graph's runtime pads on the right "
                    "and embeds each text as if alone; set padding_side to 'right' in tokenizer_config.json for "
                    "both backends to agree", shift)
    if source_files is not None:
        extra["source_files"] = source_files
    inputs = names + ((PROMPT_LENGTH,) if prompt else ())
    # Graph and manifest are written whole in the work folder, the graph under its own name (a weights file's name
    # is recorded inside the graph), so that what follows is renames: a disk that fills up leaves the folder's
    # graph and manifest as they were. A load meanwhile finds no manifest: it waits for this lock
    # (runtime/graphs.py find_graph), then looks again.
    final = tmp / target.name
    if graph != final:
        place_graph(graph, final)
    manifest_mod.write_manifest(final, _manifest(stack, final, inputs, dim, precision, fingerprint, opset, fusions,
                                                 extra, report, digest))
    with folders.locked(target.parent):
        layout.manifest_path(target).unlink(missing_ok=True)
        place_graph(final, target)  # with its weights file, for a graph over 2 GB
        os.replace(layout.manifest_path(final), layout.manifest_path(target))
    logger.info("exported %s (%s)", target, report)


def export_model_folder(model_folder: str | os.PathLike, precision: str = "fp32",
                        out_dir: str | os.PathLike | None = None, *, replace: bool = False) -> Path:
    """Export a saved model folder; into the folder itself, or into a complete copy of it at ``out_dir``.

    ``out_dir`` may be new or empty (a copy of the model folder is written atomically, the graph added), or an
    earlier export: its model files are replaced by the model folder's as they are now (settings, prompts,
    tokenizer), its graphs of the same weights kept beside the new one, those of older weights dropped, and
    files the model does not own, such as an ``eval/`` folder or notes, kept. Anything else is refused: a folder
    inside the model folder or one holding it, and, unless ``replace``, a model folder of other weights (a
    mistyped OUT_DIR naming a fine-tuned model would lose its weights; a deployment of older weights is
    replaced when asked).

    Exports into one ``out_dir`` at the same time (fp32 and int8 in parallel) keep each other's graphs: each
    builds its graph on its own, then assembles and swaps in the copy under a lock on ``out_dir``'s parent.
    """
    from ..fingerprint import folder_fingerprint, source_digests
    from ..modules import load_stack

    model_folder = Path(model_folder)
    if not model_folder.exists():
        raise ModelFolderError(f"{model_folder} does not exist{folders.interrupted_write_hint(model_folder)}; give a "
                               "model folder (modules.json or config.json)")
    if not _is_model_folder(model_folder):
        raise ModelFolderError(f"{model_folder} is not a model folder (no modules.json or config.json)")
    layout.fused_graph_path(model_folder, precision)  # validate before loading anything
    out_dir = None if out_dir is None else Path(out_dir)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"out_dir {out_dir} is a file; allowed: a folder (new, empty, the model folder "
                                "itself, or an earlier export)")
    if out_dir is not None and out_dir.resolve() in model_folder.resolve().parents:
        raise InvalidInputError(f"out_dir {out_dir} holds the model folder {model_folder}: the copy would replace "
                                "it; allowed: the model folder itself, or a folder outside it")
    if out_dir is not None and out_dir.exists() and any(out_dir.iterdir()) and not _is_model_folder(out_dir):
        raise InvalidInputError(
            f"out_dir {out_dir} exists and is not a model folder; allowed: a new or empty folder, the model "
            "folder itself, or an earlier export (the graph is added to it)"
        )
    if out_dir is not None and model_folder.resolve() in out_dir.resolve().parents:
        raise InvalidInputError(f"out_dir {out_dir} is inside the model folder {model_folder}: the copy would hold "
                                "itself; allowed: the model folder itself, or a folder outside it")
    # the fingerprint is taken before the modules load, and the folder's identity before both: a save swapping in
    # another folder meanwhile (another process's) is refused below, as the modules may then be another save's
    # than the fingerprint (a save of B, then of A again, gives A's fingerprint back)
    seen = folders.folder_identity(model_folder)
    snapshot = Snapshot.take(model_folder)  # before hashing: files changed meanwhile leave no stat record
    fingerprint, sources = folder_fingerprint(model_folder), source_digests(model_folder)
    in_place = out_dir is None or out_dir.resolve() == model_folder.resolve()
    if not (in_place or replace) and _is_model_folder(out_dir) and folder_fingerprint(out_dir) != fingerprint:
        raise InvalidInputError(
            f"out_dir {out_dir} holds a model of other weights than {model_folder}: the copy would delete them; "
            "allowed: a new or empty folder, the model folder itself, or an earlier export of these weights "
            "(replace=True, or --replace, replaces it)"
        )
    stack = load_stack(model_folder)
    if folders.folder_identity(model_folder) != seen:
        raise ModelFolderError(f"{model_folder} was replaced by a save while its modules loaded for the export; "
                               "export again once the process saving into it is done")
    check_tokenizer(model_folder, stack)  # before the export: a graph the runtime would feed other ids is no use
    if in_place:
        try:
            graph = export_fused_graph(stack, model_folder, precision, fingerprint=fingerprint,
                                       source_files=sources)
            record_stat(model_folder, graph, fingerprint, snapshot)  # the next load need not hash them again
            return graph
        except Exception as e:  # its work folder went with the folder a save swapped out: an internal file's error
            if folders.folder_identity(model_folder) == seen:
                raise
            raise ModelFolderError(f"{model_folder} was replaced by a save while its {precision} graph was being "
                                   "exported into it; export again once the process saving into it is done") from e
    from ..saving import keep_foreign_entries

    real = Path(os.path.realpath(out_dir))
    try:
        # named after out_dir, as its tmp folder; inside an existing out_dir whose parent cannot be written
        with folders.work_folder(real.parent, f"{real.name}.export", fallback=real) as work:
            graph = export_fused_graph(stack, work, precision, fingerprint=fingerprint, source_files=sources)
            with folders.locked(real.parent), folders.atomic_folder(out_dir) as tmp:
                folders.copy_model_folder(model_folder, tmp)  # configs, prompts and tokenizer as they are now
                _drop_graphs_of_other_weights(tmp, fingerprint)  # the source's stale graphs: out_dir's fresh ones
                _move_graph(graph, layout.fused_graph_path(tmp, precision).parent)
                if out_dir.is_dir():  # what out_dir holds now, another export's graph of a moment ago included
                    _carry_graphs(out_dir, tmp, fingerprint)
                    keep_foreign_entries(out_dir, tmp)
    except DiskFullError as e:  # named after out_dir, not the work folder beside it (which is gone)
        raise folders.disk_full(e, Path(out_dir)) from e
    logger.info("wrote %s (a copy of %s with its %s graph)", out_dir, model_folder, precision)
    return layout.fused_graph_path(out_dir, precision)


def _move_graph(graph: Path, dest: Path) -> None:
    """Move a graph's files (manifest, external weights) into ``dest``, in place of any graph of that name."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(graph.stem + ".*"):
        old.unlink()
    for f in graph.parent.glob(graph.stem + ".*"):
        os.replace(f, dest / f.name)


def _recorded_fingerprints(folder: Path) -> Iterator[tuple[Path, str | None]]:
    """Each fused graph in ``folder`` with the fingerprint its manifest records: None when it records none (no
    manifest: a graph st-onnx did not export), '' when the manifest is broken (it describes no weights)."""
    for graph in sorted((folder / layout.FUSED_DIR).glob("*.onnx")):
        try:
            manifest = layout.read_json_if_exists(layout.manifest_path(graph), {}) or {}
        except ModelFolderError:
            manifest = None
        yield graph, (manifest.get("fingerprint") if isinstance(manifest, dict) else "")


def _carry_graphs(old: Path, new: Path, fingerprint: str) -> None:
    """Keep the graphs an earlier export of the same weights wrote (other precisions) in the refreshed copy."""
    for graph, recorded in _recorded_fingerprints(old):
        if recorded == fingerprint and not (new / layout.FUSED_DIR / graph.name).exists():
            folders.copy_graph(graph, new / layout.FUSED_DIR)


def _drop_graphs_of_other_weights(folder: Path, fingerprint: str) -> None:
    """Remove the graphs in ``folder`` whose manifest names other weights, or is broken (graphs without a
    fingerprint, which st-onnx did not export, stay)."""
    for graph, recorded in _recorded_fingerprints(folder):
        if recorded is not None and recorded != fingerprint:
            remove_graph(graph)
            layout.manifest_path(graph).unlink(missing_ok=True)


def _is_model_folder(folder: Path) -> bool:
    return layout.is_st_folder(folder) or (folder / layout.HF_CONFIG_JSON).is_file()


def _cpu_eval(stack):
    """The stack on the CPU in fp32, as the graph is traced and checked: the caller's modules are copied, not
    moved or cast. Weights saved in fp16 or bf16 (which transformers loads as saved) are traced as fp32: an
    "fp32" graph holds fp32 weights, and the fp16 graph comes from it (ONNX Runtime's CPU kernels run fp16
    and bf16 about 100x slower than fp32, where they run them at all)."""
    import torch

    params = list(stack.parameters())
    on_cpu = all(p.device.type == "cpu" for p in params)
    fp32 = all(p.dtype == torch.float32 for p in params if p.is_floating_point())
    if not (on_cpu and fp32):
        stack = copy.deepcopy(stack).to(torch.device("cpu")).float()
    return stack.eval()


def _trace(stack, names: tuple[str, ...], path: Path, opset: int, prompt: bool = False) -> tuple[Path, int]:
    """Trace the stack; with ``prompt``, a ``prompt_length`` input (int64[1]) follows the token inputs."""
    import torch

    sample = ["a sample sentence for tracing the graph", "short"]
    features = stack.transformer.tokenize(sample)
    args = tuple(features[n].to(torch.int64) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    if prompt:
        names, args = names + (PROMPT_LENGTH,), args + (torch.tensor([1], dtype=torch.int64),)
    module = FusedModule(stack, names).eval()
    axes["sentence_embedding"] = {0: "batch"}
    axes["token_embeddings"] = {0: "batch", 1: "sequence"}
    with _TRACE_LOCK, eager_attention(stack.transformer.auto_model), index_based_masks(), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks in transformers' code
        dim = int(module(*args)[0].shape[-1])
        try:
            torch.onnx.export(
                module, args, str(path), input_names=list(names),
                output_names=list(manifest_mod.OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError, NotImplementedError) as e:
            if isinstance(e, torch.OutOfMemoryError) or _OUT_OF_MEMORY.search(str(e)):
                raise  # the model traces; the machine ran out of memory tracing it
            model = stack.transformer.auto_model
            raise BackendError(  # else a traceback from deep inside torch's tracer that names no model
                f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', None)!r}) cannot be "
                f"traced into an ONNX graph by torch.onnx.export: {type(e).__name__}: {str(e)[:300]}; "
                "backend='torch' runs it"
            ) from e
    return path, dim


# torch's allocators raise RuntimeError ("DefaultCPUAllocator: can't allocate memory", "Could not allocate bytes
# object!"): not a model the tracer cannot follow
_OUT_OF_MEMORY = re.compile(r"out of memory|(can't|cannot|could not|unable to|failed to) allocate", re.IGNORECASE)


def _graph_inputs(session, names: tuple[str, ...]) -> tuple[str, ...]:
    """The token inputs the graph takes: torch.onnx.export drops those the model never reads (DeBERTa-v3 has no
    token types but its tokenizer makes them); the parity check, the manifest and a runtime feed these."""
    kept = {i.name for i in session.get_inputs()}
    missing = [n for n in ("input_ids", "attention_mask") if n not in kept]
    if missing:
        raise BackendError(f"the traced graph has no {' or '.join(missing)} input (its model never reads it); "
                           "st-onnx runs graphs that take both; backend='torch' runs the model")
    return tuple(n for n in names if n in kept)


def _optimize(stack, raw: Path, tmp: Path, precision: str, optimize: bool) -> tuple[Path, dict, dict]:
    graph, fusions, extra = raw, {}, {}
    if not optimize:  # torch writes a model over 2 GB with one file per tensor: gathered into one data file
        import onnx

        graph = save_graph(onnx.load(str(raw)), tmp / "plain.onnx")
    else:
        config = stack.transformer.auto_model.config
        graph = tmp / "fused.onnx"
        target = "cuda" if precision == "fp16" else "cpu"  # fp16 is for CUDA only; fp32 and int8 mostly run on CPUs
        # the int8 pass reads the fused graph from its path: with its weights in a data file, the quantizer's
        # shape inference on that path (onnx infer_shapes_path) does not parse and re-write them
        fusions = passes.fuse(raw, graph, int(config.num_attention_heads), int(config.hidden_size), target,
                              external=precision == "int8")
        extra["fusion_target"] = target
        logger.info("ORT fusions: %s", fusions or "none")
        if target == "cuda" and "Attention" not in fusions and not passes.fuses_cuda_attention():
            import onnxruntime

            logger.warning("onnxruntime %s fuses no Attention into fp16 graphs (%s and newer do): the graph runs "
                           "on CUDA, slower, and packing mode refuses it; export fp16 with onnxruntime-gpu %s or "
                           "newer", onnxruntime.__version__, passes.CUDA_ATTENTION_RELEASE,
                           passes.CUDA_ATTENTION_RELEASE)
    if precision == "fp16":
        passes.to_fp16(graph, tmp / "fp16.onnx")
        graph = tmp / "fp16.onnx"
    elif precision == "int8":
        extra["quantization"] = passes.quantize_int8(graph, tmp / "int8.onnx")
        graph = tmp / "int8.onnx"
    return graph, fusions, extra


def _verify(stack, graph: Path, names, precision: str, sentences,
            prompt: bool = False) -> tuple[ParityReport, ParityReport | None, tuple[str, ...]]:
    """Parity on the CPU provider; fp16 on CUDA where a GPU is usable, else (loosely) on the CPU; with ``prompt``,
    a second report with the first two tokens left out of pooling (``prompt_length`` fed), else None; and the
    ``names`` the graph takes (``_graph_inputs``).

    An fp16 graph run on the CPU goes through ORT's fp16 CPU kernels and inserted casts, not the CUDA kernels it
    is made for: that check proves the conversion (weights, casts, no overflow) but not the CUDA numerics, and
    the report's ``provider`` says which ran.
    """
    import onnxruntime as ort

    from ..runtime.providers import cuda_usable
    from ..runtime.session import default_session_options, disabled_optimizers

    providers = ["CPUExecutionProvider"]
    if precision == "fp16" and cuda_usable():  # not merely listed: onnxruntime-gpu lists CUDA without a GPU
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # loaded as the runtime's sessions load it, so the check runs the kernels encode will run: the same fusions
    # left off on the CPU, fp32 weights not prepacked (a second copy of every GEMM weight, +0.3 GB for a 0.74 GB
    # graph), log level 3 (not ORT's warning that an input with a default is no constant: prompt_length)
    options = default_session_options(prepack=precision == "int8")
    try:
        session = ort.InferenceSession(str(graph), sess_options=options, providers=providers,
                                       disabled_optimizers=disabled_optimizers(providers))
        if precision == "fp16" and session.get_providers()[0] != "CUDAExecutionProvider":
            logger.warning("fp16 graph parity-checked on the CPU provider only (no usable CUDA GPU): this verifies "
                           "the fp16 conversion, not the CUDA kernels it will run on")
        names = _graph_inputs(session, names)
        report = check_parity(stack, session, names, precision, sentences)
        prompt_report = check_parity(stack, session, names, precision, sentences, prompt_length=2) if prompt else None
    except _ort_errors() as e:
        if _OUT_OF_MEMORY.search(str(e)):
            raise
        model = stack.transformer.auto_model
        # a graph traced with a shape of the tracing batch built in runs no other texts (Pegasus-X's did, before
        # _UNTRACEABLE_MODELS refused it)
        raise BackendError(
            f"the {precision} graph traced from {type(model).__name__} (model_type "
            f"{getattr(model.config, 'model_type', None)!r}) does not run in ONNX Runtime on the parity texts: "
            f"{type(e).__name__}: {str(e)[:300]}; backend='torch' runs it"
        ) from e
    return report, prompt_report, names


def _ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception classes (they derive from Exception alone)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, name) for name in ("Fail", "RuntimeException", "InvalidArgument", "NotImplemented",
                                                     "InvalidGraph", "InvalidProtobuf") if hasattr(state, name))


def _manifest(stack, graph: Path, names, dim: int, precision: str, fingerprint: str, opset: int,
              fusions: dict, extra: dict, report: ParityReport, digest: str) -> dict[str, Any]:
    return {
        "format": manifest_mod.FORMAT,
        "layout": layout.GRAPH_LAYOUT,
        "fingerprint": fingerprint,
        "module_digest": digest,  # lets a save carry the graph to re-written files (saving.py)
        "precision": precision,
        "opset": opset,
        "inputs": list(names),
        "outputs": list(manifest_mod.OUTPUT_NAMES),
        "embedding_dimension": dim,
        "max_seq_length": int(stack.transformer.max_seq_length),
        "do_lower_case": bool(stack.transformer.do_lower_case),
        "pooling_include_prompt": stack.includes_prompt,
        "exporter": EXPORTER,
        "versions": _versions(),
        "fusions": fusions,
        **extra,
        "parity": report.to_dict(),
        **manifest_mod.file_fields(graph),
    }


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import st_onnx

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "st_onnx": st_onnx.__version__}
