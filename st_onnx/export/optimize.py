"""Graph passes on an exported fp32 graph: ORT transformer fusions (per target), fp16 (CUDA), dynamic int8 (CPU).

onnx + onnxruntime only. Every pass reads one file and writes another, inside the exporter's temp folder; a graph
over protobuf's 2 GB is written with its weights in a data file beside it (``graph_files.save_graph``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .. import folders, layout
from ..errors import BackendError, InvalidInputError
from .graph_files import save_graph

logger = logging.getLogger(__name__)

# The fused operators we report; ORT's statistics list more (rotary, QOrdered...) that never apply to encoders.
REPORTED_FUSIONS = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
    "BiasGelu", "Gelu", "FastGelu", "GemmFastGelu",
)

# Dynamic int8 settings, chosen by measurement on all-MiniLM-L6-v2 (`benchmarks/eval_stsb_graph.py --int8-variants`,
# STSb test Spearman, fp32 graph 0.8203; CPU layout of export/optimize.py, 2 shared cores):
#   per_channel=False reduce_range=False  0.8180
#   per_channel=False reduce_range=True   0.8034  (7-bit weights: no help on a VNNI CPU)
#   per_channel=True  reduce_range=False  0.8182  <- chosen (earlier layout with fused Attention: 0.8187)
#   per_channel=True  reduce_range=True   0.8181
#   per_channel=True, all op types (Gather too) 0.8169 and slower: embeddings stay fp32.
# reduce_range exists for CPUs without VNNI, whose u8s8 kernels (VPMADDUBSW) sum pairs of products in 16 bits and
# can saturate with full 8-bit weights; this machine has avx512_vnni/avx_vnni, where it only costs accuracy (mean
# cosine to the fp32 graph 0.99189 vs 0.99337 on 400 short texts). So reduce_range follows the exporting CPU:
# off with VNNI/AMX, on without (or where the flags cannot be read on x86); the manifest records which, and the
# runtime warns when a graph quantized for VNNI runs on a CPU without it.
INT8_PER_CHANNEL = True


def default_reduce_range() -> bool:
    from ..runtime.session import cpu_has_vnni, is_x86

    return cpu_has_vnni() is False or (cpu_has_vnni() is None and is_x86())
INT8_OP_TYPES: tuple[str, ...] | None = ("MatMul", "Attention")


# Which of ORT's transformer fusions each target gets. ORT's CPU kernels for the fused SkipLayerNormalization and
# BiasGelu are slower than the plain ops they replace (one thread, 1,024 x 384 floats: SkipLayerNormalization
# 2.9 ms, Add + LayerNormalization 0.9 ms; 1,024 x 1,536: BiasGelu 3.3 ms, Add + Gelu 2.6 ms), and its CPU
# Attention kernel loses to the unfused MatMul/Softmax subgraph, most on short texts. Measured on
# all-MiniLM-L6-v2 (2-core AVX-512 machine, ORT 1.31.1, the runtime's 2 single-thread runs at once, first 600
# short / 60 long texts of ../shared/data/bench, medians of 8 interleaved rounds), graph with every fusion = 1.00:
#   fp32  no SkipLayerNorm/BiasGelu                      short 1.14  long 1.04
#   fp32  no SkipLayerNorm/BiasGelu/Attention (CPU)      short 1.31  long 1.06
#   int8  no SkipLayerNorm/BiasGelu                      short 1.35  long 1.15
#   int8  no SkipLayerNorm/BiasGelu/Attention            short 1.56  long 1.05
#   int8  ... + prepacked weights (CPU, runtime)         short 1.68  long 1.21
# CUDA keeps every fusion (fp16 graphs: the fused kernels are what make it fast there; the fp16 conversion also
# needs LayerNorm/Gelu fused first). The CPU session must also switch off ORT's load-time SkipLayerNorm/BiasGelu
# fusions, or it re-fuses what the file leaves apart: runtime/session.py ``CPU_DISABLED_OPTIMIZERS``.
CPU_FUSIONS_OFF = ("enable_attention", "enable_skip_layer_norm", "enable_bias_skip_layer_norm", "enable_bias_gelu")


# ONNX Runtime's transformer optimizer fuses BERT's attention into fp16 (CUDA) graphs from this release on; older
# ones fuse none (measured on tiny BERT and all-MiniLM-L6-v2: 1.20.1, 1.26.0 and 1.30.0): such a graph runs on
# CUDA, slower, and cannot be packed. onnxruntime-gpu's floor is 1.31; the CPU package's (macOS, aarch64) is lower.
CUDA_ATTENTION_SINCE = (1, 31)
CUDA_ATTENTION_RELEASE = ".".join(map(str, CUDA_ATTENTION_SINCE))


def major_minor(version: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string such as '1.31.1' or '5.0.0rc1'."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[:2])


def fuses_cuda_attention(version: str | None = None) -> bool:
    """Whether this onnxruntime (or ``version``) fuses attention into graphs for CUDA."""
    if version is None:
        import onnxruntime

        version = onnxruntime.__version__
    return major_minor(version) >= CUDA_ATTENTION_SINCE


def fuse(src: str | os.PathLike, dst: str | os.PathLike, num_heads: int, hidden_size: int,
         target: str = "cpu", *, external: bool = False) -> dict[str, int]:
    """Run ORT's BERT fusions (``optimize_model``, model_type 'bert') for ``target`` ('cpu' or 'cuda').

    Returns the fused-operator counts. ``num_heads``/``hidden_size`` come from the model config: with 0
    (auto-detect) ORT fails to detect them on the TorchScript graph of all-MiniLM-L6-v2 and fuses no Attention.
    ``opt_level=0`` keeps ORT's own session-level rewrites out of the saved file, so the graph stays portable
    between providers (the session applies them at load time). ``external``: write ``dst`` with a data file even
    when it fits (an intermediate graph that another pass reads from its path).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if target not in ("cpu", "cuda"):
        raise InvalidInputError(f"fusion target must be 'cpu' or 'cuda'; got {target!r}")
    options = FusionOptions("bert")
    if target == "cpu":
        for name in CPU_FUSIONS_OFF:
            setattr(options, name, False)
    with _one_swap_at_a_time(_swap_shape_inference):
        model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0, optimization_options=options)
    stats = model.get_fused_operator_statistics()
    model.topological_sort()  # as ORT's own save_model_to_file
    save_graph(model.model, dst, external=external)
    # ORT's optimizer objects form reference cycles: without a collection the fused ModelProto (a copy of the
    # weights) outlives this pass into the next ones (measured: int8 pass 3.67 -> 2.95 GB on a 0.74 GB graph)
    del model
    gc.collect()
    return {name: int(stats[name]) for name in REPORTED_FUSIONS if stats.get(name)}


# The two context managers below swap functions of ONNX Runtime's for the length of one pass; exports in several
# threads take turns there, so that none restores another's swap.
_SWAP_LOCK = threading.RLock()

# float tensors whose values symbolic shape inference never needs: weight matrices and embeddings
_SHAPE_ONLY_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@contextlib.contextmanager
def _one_swap_at_a_time(swap):
    with _SWAP_LOCK, swap():
        yield


@contextlib.contextmanager
def _swap_shape_inference():
    """Let ORT's symbolic shape inference work on a copy of the graph without the data of its weight matrices.

    ORT's fusions run it three times on a BERT graph (OnnxModel.infer_runtime_shape), and each run starts with
    ``SymbolicShapeInference._preprocess`` copying the whole ModelProto, weights included, into a helper that is
    a reference cycle (freed only when the cyclic gc runs): measured on a 184M-parameter graph (0.74 GB), the
    fusion pass went from 1.9 to 4.1 GB RSS, the export's peak. Shapes of initializers come from their dims;
    values are read only to compute shapes, which never come from float tensors of rank >= 2 (rank > 1 values
    are dropped), so those are copied without data and reported as unknown by ``_try_get_value``. The fused
    graph is the same (compared field by field, fp32 and int8). Without ORT's classes as expected: unchanged.
    """
    try:
        import onnxruntime.transformers.optimizer  # noqa: F401  (puts ORT's transformers folder on sys.path)
        from shape_infer_helper import SymbolicShapeInferenceHelper  # as ORT's OnnxModel imports it
    except ImportError:
        base = None
    else:
        base = SymbolicShapeInferenceHelper.__mro__[1]
    preprocess = getattr(base, "_preprocess", None)
    try_get_value = getattr(base, "_try_get_value", None)
    if preprocess is None or try_get_value is None:
        yield
        return

    def _preprocess(self, in_mp):
        light, self._st_onnx_shape_only = _shape_only_copy(in_mp)
        preprocess(self, light)

    def _try_get_value(self, node, idx):
        if idx < len(node.input) and node.input[idx] in getattr(self, "_st_onnx_shape_only", ()):
            return None
        return try_get_value(self, node, idx)

    base._preprocess, base._try_get_value = _preprocess, _try_get_value
    try:
        yield
    finally:
        base._preprocess, base._try_get_value = preprocess, try_get_value


def _shape_only_copy(model: Any) -> tuple[Any, set[str]]:
    """``model`` with its float initializers of rank >= 2 and over 1,024 elements reduced to name, type and dims;
    and their names."""
    from .graph_files import without_initializers

    out = without_initializers(model)
    names = set()
    for tensor in model.graph.initializer:
        if tensor.data_type in _SHAPE_ONLY_TYPES and len(tensor.dims) >= 2 and math.prod(tensor.dims) > 1024:
            light = out.graph.initializer.add()
            light.name, light.data_type = tensor.name, tensor.data_type
            light.dims.extend(tensor.dims)
            names.add(tensor.name)
        else:
            out.graph.initializer.add().CopyFrom(tensor)
    return out, names


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """fp16 weights and activations with fp32 inputs/outputs, for the CUDA provider (never for CPU).

    Run after ``fuse``: LayerNorm/Gelu/Attention patterns no longer match once cast to fp16.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.topological_sort()
    save_graph(model.model, dst)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = INT8_PER_CHANNEL,
                  reduce_range: bool | None = None,
                  op_types: tuple[str, ...] | None = INT8_OP_TYPES) -> dict[str, Any]:
    """Dynamic int8 weights (MatMul, Attention where fused), activations quantized at run time, for the CPU.

    ``reduce_range`` None: ``default_reduce_range()`` (7-bit weights unless this CPU has VNNI/AMX).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:
        reduce_range = default_reduce_range()

    # ONNX shape inference cannot type the outputs of ORT's fused (com.microsoft) operators; they are all float.
    # The quantizer's advice to run its pre-processing (shape inference over those same operators), and its
    # warning for each tensor after such an operator that it could not type (T5's and Gemma3's attention after
    # SimplifiedLayerNormalization: 4 a layer, taken as float by DefaultTensorType), do not apply here and are
    # dropped, so that `st-onnx export` prints only what concerns the user.
    hint = _DropMessage("pre-processing before quantization", "Failed to infer data type of tensor")
    logs = functools.partial(_quantizer_logging, hint)
    from google.protobuf.message import DecodeError

    reload = functools.partial(_swap_quantizer_reload, Path(dst).parent)
    try:
        with _one_swap_at_a_time(logs), _one_swap_at_a_time(reload):
            quantize_dynamic(Path(src), Path(dst), per_channel=per_channel, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8,
                             # a source with a data file (over 2 GB, or the exporter's intermediate): so is the result
                             use_external_data_format=layout.graph_data_path(src).is_file(),
                             op_types_to_quantize=list(op_types) if op_types else None,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except DecodeError as e:  # ONNX's shape inference cuts its output short on a full disk, and raises nothing
        folder = Path(dst).parent
        if shutil.disk_usage(folder).free < Path(src).stat().st_size:
            raise folders.disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), folder) from e
        raise BackendError(f"the quantizer could not read back the graph ONNX's shape inference wrote into {folder} "
                           f"({e})") from e
    if layout.graph_data_path(dst).is_file():  # int8 weights may bring a graph over 2 GB back into one file
        save_graph(onnx.load(str(dst)), dst)
    return {"per_channel": per_channel, "reduce_range": reduce_range, "op_types": list(op_types or ["all"])}


@contextlib.contextmanager
def _swap_quantizer_reload(folder: Path):
    """ORT's dynamic quantizer re-infers shapes with ``save_and_reload_model_with_shape_infer``, which deep-copies
    the whole model before writing it out (+1 copy of the fp32 weights, measured +0.72 GB on a 0.74 GB graph); the
    model it is given is replaced by the reloaded one right after, so it is written out itself instead (its weights
    move to the temporary data file, in ``folder``, the export's work folder, rather than the system's temporary
    folder, which may have no room for a whole graph). Without ORT's functions as expected: unchanged."""
    import onnx

    try:
        from onnxruntime.quantization import base_quantizer, onnx_quantizer, quant_utils
    except ImportError:
        yield
        return
    name = "save_and_reload_model_with_shape_infer"
    modules = [m for m in (onnx_quantizer, base_quantizer) if hasattr(m, name)]
    if not hasattr(quant_utils, "load_model_with_shape_infer"):
        modules = []
    originals = [getattr(m, name) for m in modules]

    def save_and_reload(model):
        with tempfile.TemporaryDirectory(prefix=".quant-", dir=folder) as work:
            path = Path(work) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True)
            return quant_utils.load_model_with_shape_infer(path)

    for module in modules:
        setattr(module, name, save_and_reload)
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            setattr(module, name, original)


class _DropMessage(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def default_input(path: str | os.PathLike, name: str, value: int) -> None:
    """Give the graph input ``name`` a default (an initializer of the same name, which ONNX Runtime lets a feed
    override), so that callers who do not know the input can leave it out. Rewrites ``path`` in place."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)  # a data file stays as it is
    inputs = {i.name: i for i in model.graph.input}
    if name not in inputs:
        raise InvalidInputError(f"the graph has no input {name!r} to give a default; inputs: {sorted(inputs)}")
    if any(init.name == name for init in model.graph.initializer):
        return
    model.graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
    onnx.save(model, str(path))


class _NamedLogging:
    """Stands in for the ``logging`` module inside ONNX Runtime's quantizer: its module-level ``logging.info(...)``
    calls go to the "onnxruntime.quantization" logger, and so never run ``logging.basicConfig()``, which gives
    an application's unconfigured root logger a handler (its own ``basicConfig(...)`` then does nothing)."""

    _CALLS = ("debug", "info", "warning", "error", "exception", "critical", "log")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        if name in self._CALLS:
            return getattr(self._logger, name)
        if name == "warn":
            return self._logger.warning
        return getattr(logging, name)


@contextlib.contextmanager
def _quantizer_logging(drop: logging.Filter):
    """For one quantization: the quantizer's modules log through ``_NamedLogging``, ``drop`` filtering them."""
    named = logging.getLogger("onnxruntime.quantization")
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("onnxruntime.quantization") and getattr(m, "logging", None) is logging]
    named.addFilter(drop)
    for module in modules:
        module.logging = _NamedLogging(named)
    try:
        yield
    finally:
        for module in modules:
            module.logging = logging
        named.removeFilter(drop)
