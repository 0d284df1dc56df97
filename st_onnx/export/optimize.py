"""Graph passes on an exported fp32 graph: ORT transformer fusions, fp16 (CUDA) and dynamic int8 (CPU).

onnx + onnxruntime only. Every pass reads one file and writes another, inside the exporter's temp folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The fused operators we report; ORT's statistics list more (rotary, QOrdered...) that never apply to encoders.
REPORTED_FUSIONS = (
    "EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
    "BiasGelu", "Gelu", "FastGelu", "GemmFastGelu",
)

# Dynamic int8 settings, chosen by measurement on all-MiniLM-L6-v2 (`benchmarks/eval_stsb_graph.py --int8-variants`,
# STSb test Spearman, fp32 graph 0.8203; texts/s on 2 shared, noisy cores):
#   per_channel=False reduce_range=False  0.8173  (mean cos to torch 0.966)
#   per_channel=False reduce_range=True   0.8015  (0.877: 7-bit weights, no help on a VNNI CPU)
#   per_channel=True  reduce_range=False  0.8187  fastest of the four (201 vs 78 texts/s fp32)  <- chosen
#   per_channel=True  reduce_range=True   0.8184
#   per_channel=True, all op types (Gather/EmbedLayerNorm too) 0.8168 and slower: embeddings stay fp32.
# reduce_range exists for CPUs without VNNI (u8s8 overflow); this machine has avx512_vnni/avx_vnni.
INT8_PER_CHANNEL = True
INT8_REDUCE_RANGE = False
INT8_OP_TYPES: tuple[str, ...] | None = ("MatMul", "Attention")


def fuse(src: str | os.PathLike, dst: str | os.PathLike, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Run ORT's BERT fusions (``optimize_model``, model_type 'bert') and return the fused-operator counts.

    ``num_heads``/``hidden_size`` come from the model config: with 0 (auto-detect) ORT fails to detect them on
    the TorchScript graph of all-MiniLM-L6-v2 and fuses no Attention at all.
    ``opt_level=0`` keeps ORT's own session-level rewrites out of the saved file, so the graph stays portable
    between providers (the session applies them at load time).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
    stats = model.get_fused_operator_statistics()
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return {name: int(stats[name]) for name in REPORTED_FUSIONS if stats.get(name)}


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """fp16 weights and activations with fp32 inputs/outputs, for the CUDA provider (never for CPU).

    Run after ``fuse``: LayerNorm/Gelu/Attention patterns no longer match once cast to fp16.
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = INT8_PER_CHANNEL,
                  reduce_range: bool = INT8_REDUCE_RANGE,
                  op_types: tuple[str, ...] | None = INT8_OP_TYPES) -> dict[str, Any]:
    """Dynamic int8 weights (MatMul/Attention/Gather...), activations quantized at run time, for the CPU."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ONNX shape inference cannot type the outputs of ORT's fused (com.microsoft) operators; they are all float.
    quantize_dynamic(Path(src), Path(dst), per_channel=per_channel, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8,
                     op_types_to_quantize=list(op_types) if op_types else None,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"per_channel": per_channel, "reduce_range": reduce_range, "op_types": list(op_types or ["all"])}
