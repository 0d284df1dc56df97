"""Graft: append a model's Pooling / Dense / Normalize to a transformer-only ONNX graph, with ``onnx`` alone.

For folders that ship sentence-transformers' or optimum's ``onnx/model.onnx`` (output ``last_hidden_state`` or
``token_embeddings``). The graft itself needs no torch: the Pooling config is read from JSON, Dense weights with
``safetensors.numpy``, and the nodes are built with ``onnx.helper``. The maths mirrors
``st_onnx.modules.pooling.pool`` term by term (same clamps, same first/last-token rules).

Nothing vouches for the transformer graph it is given (``onnx/model.onnx`` may be from older weights), so the
result is checked against the folder's torch modules where torch and the weights are at hand, and only a checked
graft records the folder's fingerprint: an unchecked one runs where the folder has no weights to be stale against,
or when named by ``onnx_options['file_name']``, never in place of a graph of these weights. Quantized or fp16
transformer graphs are refused (the result is labelled fp32).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import folders, layout
from ..errors import BackendError, GraphFileError, InvalidInputError, ModelFolderError, ParityError
from . import manifest as manifest_mod
from .graph_files import place_graph, save_graph

logger = logging.getLogger(__name__)

TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
# The classic Pooling booleans, in the order sentence-transformers concatenates the modes (as modules.pooling).
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "Sigmoid", "GELU", "SiLU", "LeakyReLU")
# What quantized graphs are made of (ONNX Runtime's quantizer, optimum's O-levels, int4 weight-only): such a
# transformer would come out labelled fp32.
_QUANTIZED_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
                  "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QEmbedLayerNormalization", "QGemm",
                  "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}


class _Builder:
    """Appends nodes and initializers to a graph under a private name prefix."""

    def __init__(self, graph, opset: int) -> None:
        self.graph, self.opset, self.count = graph, opset, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"st_onnx_graft/{hint}_{self.count}"

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int) -> str:
        takes_input = op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if takes_input:
            return self.op(op_type, x, self.const([axis], np.int64), keepdims=keepdims)
        return self.op(op_type, x, axes=[axis], keepdims=keepdims)


def graft_pooling(transformer_graph_path: str | os.PathLike, model_folder: str | os.PathLike,
                  out_path: str | os.PathLike, *, verify: bool | None = None) -> Path:
    """Write ``out_path``: the transformer graph plus the folder's pooling/dense/normalize, and its manifest.

    The result has the fused graph's contract (outputs ``sentence_embedding`` and ``token_embeddings``); its
    manifest records ``exporter: graft``. ``verify``: check it against the folder's torch modules (as an export
    is; ParityError and nothing written when it differs) and then record the folder's fingerprint; None (the
    default) verifies where torch is installed and the folder has its weights; False never imports torch, and the
    manifest then has no fingerprint (see the module docstring for where such a graft runs).
    """
    import onnx

    from ..fingerprint import folder_fingerprint

    model_folder, out_path = Path(model_folder), Path(out_path)
    # taken before the check: weights saved meanwhile make the graft stale, not vouched for
    fingerprint = folder_fingerprint(model_folder) if _should_verify(verify, model_folder) else None
    try:
        model = onnx.load(str(transformer_graph_path))
    except Exception as e:
        raise GraphFileError(f"{transformer_graph_path} is not a readable ONNX model ({e})") from e
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    token_name = next((n for n in TOKEN_OUTPUTS if n in outputs), None)
    inputs = [i.name for i in graph.input]
    if token_name is None or "attention_mask" not in inputs:
        raise GraphFileError(
            f"{transformer_graph_path} has inputs {inputs} and outputs {list(outputs)}; a graft needs an "
            f"'attention_mask' input and one of the outputs {list(TOKEN_OUTPUTS)}"
        )
    _check_plain_fp32(model, transformer_graph_path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise GraphFileError(f"{transformer_graph_path} uses opset {opset}; allowed: 13 or newer")
    b = _Builder(graph, opset)
    if outputs[token_name].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GraphFileError(f"{transformer_graph_path}: output {token_name!r} is not float32; allowed: an fp32 graph")
    tokens = token_name
    if tokens != "token_embeddings":
        graph.node.append(onnx.helper.make_node("Identity", [tokens], ["token_embeddings"], name="st_onnx_graft/tokens"))
    x, dim = _append_modules(b, model_folder, tokens)
    graph.node.append(onnx.helper.make_node("Identity", [x], ["sentence_embedding"], name="st_onnx_graft/out"))
    del graph.output[:]
    graph.output.extend([
        onnx.helper.make_tensor_value_info("sentence_embedding", onnx.TensorProto.FLOAT, ["batch", dim]),
        onnx.helper.make_tensor_value_info("token_embeddings", onnx.TensorProto.FLOAT, ["batch", "sequence", None]),
    ])
    with folders.work_folder(out_path.parent, "graft") as work:
        # a source over 2 GB (onnx/model.onnx with model.onnx_data): the checker and the writer take it by path
        staged = save_graph(model, work / out_path.name)
        onnx.checker.check_model(str(staged))
        parity = _verify(staged, model_folder, inputs, transformer_graph_path) if fingerprint else None
        layout.manifest_path(out_path).unlink(missing_ok=True)
        place_graph(staged, out_path)
    _write_manifest(out_path, model_folder, inputs, dim, opset, transformer_graph_path, fingerprint, parity)
    return out_path


def _should_verify(verify: bool | None, folder: Path) -> bool:
    import importlib.util

    from ..runtime.graphs import has_weights

    if verify not in (None, True, False):
        raise InvalidInputError(f"verify must be True, False or None (check where torch and the weights are); "
                                f"got {verify!r}")
    has_torch = importlib.util.find_spec("torch") is not None
    weights = has_weights(folder)
    if verify and not (has_torch and weights):
        missing = "torch is not installed" if not has_torch else f"{folder} holds no Transformer weights"
        raise BackendError(f"graft_pooling(verify=True) checks against the torch modules, but {missing}; pass "
                           "verify=False for an unchecked graft")
    return (has_torch and weights) if verify is None else verify


def _check_plain_fp32(model, path) -> None:
    """A quantized or fp16 transformer graph (optimum's O4, ``model_qint8_*.onnx``) must not pass as fp32."""
    import onnx

    quantized = sorted({node.op_type for node in model.graph.node
                        if node.op_type in _QUANTIZED_OPS or node.op_type.startswith(("QLinear", "QOrdered"))})
    if quantized:
        raise GraphFileError(f"{path} is a quantized graph (ops {quantized}); a graft needs the fp32 transformer "
                             "graph (onnx/model.onnx), and st-onnx quantizes the fused graph itself "
                             "(`st-onnx export MODEL_DIR MODEL_DIR --precision int8`)")
    low = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    found = sorted({low[t.data_type] for t in model.graph.initializer if t.data_type in low})
    if found:
        raise GraphFileError(f"{path} keeps {'/'.join(found)} weights; a graft needs an fp32 transformer graph "
                             "(the fp16 graph for CUDA comes from `st-onnx export ... --precision fp16`)")


def _verify(graph: Path, folder: Path, inputs: list[str], source) -> dict:
    """The graft's parity report against the folder's torch modules; ParityError when it fails."""
    import onnxruntime as ort

    from ..modules import load_stack
    from .verify import check_parity

    stack = load_stack(folder)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [name for name in inputs if name in ("input_ids", "attention_mask", "token_type_ids")]
    report = check_parity(stack, session, names, "fp32")
    if not report.passed:
        raise ParityError(f"the graft of {Path(source).name} onto {folder}'s modules does not compute what "
                          f"PyTorch computes (is the transformer graph from other weights?): {report}")
    return {"checked": True, **report.to_dict()}


def _append_modules(b: _Builder, folder: Path, tokens: str) -> tuple[str, int]:
    entries = layout.read_modules_json(folder)
    if layout.module_kind(entries[0]["type"]) != "Transformer":
        raise ModelFolderError(f"{folder}: the first module must be a Transformer; got {entries[0]['type']!r}")
    x, dim = None, None
    for entry in entries[1:]:
        kind, path = layout.module_kind(entry["type"]), folder / entry["path"]
        if kind == "Pooling":
            x, dim = _pooling(b, path, tokens)
        elif x is None:
            raise ModelFolderError(f"{folder}: {kind} comes before any Pooling module; a graft needs Pooling first")
        elif kind == "Dense":
            x, dim = _dense(b, path, x)
        elif kind == "Normalize":
            norm = b.reduce("ReduceL2", x, axis=1, keepdims=1)
            x = b.op("Div", x, b.op("Max", norm, b.const(1e-12)))
    if x is None:
        raise ModelFolderError(f"{folder} has no Pooling module: nothing turns token embeddings into a sentence embedding")
    return x, dim


def pooling_modes(config: dict) -> tuple[list[str], int]:
    """The pooling modes (in concatenation order) and token width of a Pooling config.json."""
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _LEGACY_KEYS.items() if config.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    for mode in modes:
        if mode not in _LEGACY_KEYS.values():
            raise ModelFolderError(f"pooling mode {mode!r} is not supported; allowed: {', '.join(_LEGACY_KEYS.values())}")
    return modes, int(dim)


def _pooling(b: _Builder, path: Path, tokens: str) -> tuple[str, int]:
    import onnx

    modes, dim = pooling_modes(layout.read_json(path / "config.json", "Pooling config.json"))
    fmask2 = b.op("Cast", "attention_mask", to=onnx.TensorProto.FLOAT)             # (B, S)
    fmask = b.op("Unsqueeze", fmask2, b.const([-1], np.int64))                       # (B, S, 1)
    pooled = [_pool_one(b, mode, tokens, fmask2, fmask) for mode in modes]
    out = pooled[0] if len(pooled) == 1 else b.op("Concat", *pooled, axis=-1)
    return out, dim * len(modes)


def _pool_one(b: _Builder, mode: str, tokens: str, fmask2: str, fmask: str) -> str:
    if mode == "cls":  # the first unmasked token (argmax returns the first maximum)
        first = b.op("ArgMax", fmask2, axis=1, keepdims=1)
        return b.op("GatherND", tokens, first, batch_dims=1)
    if mode == "lasttoken":  # the last unmasked token, zeros when none
        last = b.op("ArgMax", fmask2, axis=1, keepdims=1, select_last_index=1)
        return b.op("GatherND", b.op("Mul", tokens, fmask), last, batch_dims=1)
    if mode == "max":
        padded = b.op("Equal", fmask, b.const(0.0))
        masked = b.op("Where", padded, b.const(-np.inf), tokens)
        return b.reduce("ReduceMax", masked, axis=1, keepdims=0)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total = b.reduce("ReduceSum", b.op("Mul", tokens, fmask), axis=1, keepdims=0)
        count = b.op("Max", b.reduce("ReduceSum", fmask, axis=1, keepdims=0), b.const(1e-9))
        return b.op("Div", total, count if mode == "mean" else b.op("Sqrt", count))
    # weightedmean: weights 1..n counted from the first unmasked token
    positions = b.op("CumSum", b.op("Add", b.op("Mul", fmask2, b.const(0.0)), b.const(1.0)), b.const(1, np.int64))
    start = b.op("Cast", b.op("ArgMax", fmask2, axis=1, keepdims=1), to=1)
    weights = b.op("Unsqueeze", b.op("Mul", b.op("Sub", positions, start), fmask2), b.const([-1], np.int64))
    total = b.reduce("ReduceSum", b.op("Mul", tokens, weights), axis=1, keepdims=0)
    return b.op("Div", total, b.op("Max", b.reduce("ReduceSum", weights, axis=1, keepdims=0), b.const(1e-9)))


def _dense(b: _Builder, path: Path, x: str) -> tuple[str, int]:
    from safetensors.numpy import load_file

    config = layout.read_json(path / "config.json", "Dense config.json")
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise ModelFolderError(
            f"{path} has no model.safetensors (a legacy pytorch_model.bin needs torch to read); re-save the model "
            "with st-onnx or sentence-transformers to get safetensors"
        )
    state = load_file(str(weights_file))
    weight = state["linear.weight"].astype(np.float32)
    y = b.op("MatMul", x, b.const(weight.T.copy()))
    if config.get("bias", True) and "linear.bias" in state:
        y = b.op("Add", y, b.const(state["linear.bias"].astype(np.float32)))
    return _activation(b, y, config.get("activation_function", "torch.nn.modules.activation.Tanh")), weight.shape[0]


def _activation(b: _Builder, x: str, name: str) -> str:
    kind = name.rsplit(".", 1)[-1]
    if kind not in _ACTIVATIONS:
        raise ModelFolderError(f"Dense activation_function {name!r} cannot be grafted; allowed: {', '.join(_ACTIVATIONS)}")
    if kind == "GELU":  # exact (erf) GELU, as torch.nn.GELU()
        erf = b.op("Erf", b.op("Div", x, b.const(np.sqrt(2.0))))
        return b.op("Mul", b.op("Mul", x, b.const(0.5)), b.op("Add", erf, b.const(1.0)))
    if kind == "SiLU":
        return b.op("Mul", x, b.op("Sigmoid", x))
    op = {"ReLU": "Relu", "LeakyReLU": "LeakyRelu"}.get(kind, kind)
    return b.op(op, x, alpha=0.01) if kind == "LeakyReLU" else b.op(op, x)


def _write_manifest(out_path: Path, folder: Path, inputs, dim: int, opset: int, source, fingerprint: str | None,
                    parity: dict | None) -> None:
    import onnx

    import st_onnx

    sbert = layout.read_json_if_exists(folder / layout.SBERT_CONFIG_JSON, {}) or {}
    checked = {"fingerprint": fingerprint} if fingerprint else {}  # vouched for: these weights
    manifest_mod.write_manifest(out_path, {
        "format": manifest_mod.FORMAT, "layout": layout.GRAPH_LAYOUT, **checked, "precision": "fp32",
        "opset": opset, "inputs": list(inputs), "outputs": list(manifest_mod.OUTPUT_NAMES),
        "embedding_dimension": dim, "max_seq_length": sbert.get("max_seq_length"),
        "do_lower_case": bool(sbert.get("do_lower_case", False)),
        "exporter": f"graft({Path(source).name})", "versions": {"onnx": onnx.__version__, "st_onnx": st_onnx.__version__},
        "fusions": {},
        "parity": parity or {"checked": False, "reason": "grafted without torch: not checked against these weights"},
        **manifest_mod.file_fields(out_path),
    })
