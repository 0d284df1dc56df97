"""Embedding quantization (``encode(precision=...)``), as sentence-transformers' ``quantize_embeddings``: numpy only.

    float32   unchanged
    int8      each dimension's [min, max] cut into 256 buckets, stored as bucket - 128 (int8)
    uint8     the same buckets, stored as 0..255 (uint8)
    binary    one bit per dimension (> 0), packed 8 per byte, stored as byte - 128 (int8): dim / 8 bytes
    ubinary   the same bits as uint8 bytes

The int8/uint8 ranges come from ``ranges`` (shape (2, dim): mins, maxes), else from ``calibration_embeddings``,
else from the embeddings themselves, which needs more than one of them (a few hundred for stable buckets).
This is a storage format for search: the model's graph and weights are untouched (for int8 weights, see
``onnx_options={"precision": "int8"}``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision {precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
    return precision


def quantize_embeddings(embeddings: Any, precision: str, ranges: np.ndarray | None = None,
                        calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """``embeddings`` ((n, dim) floats: numpy, torch or lists) in ``precision``; see the module docstring.

    A list of matrices (token embeddings: one (n_i, dim) matrix per text) gives a list, every matrix in the same
    int8/uint8 buckets, as sentence-transformers 6; an empty list gives an empty list."""
    check_precision(precision)
    if isinstance(embeddings, (list, tuple)) and (not embeddings or getattr(embeddings[0], "ndim", None) == 2):
        return _quantize_matrices(embeddings, precision, ranges, calibration_embeddings)
    emb = _as_float_matrix(embeddings, "embeddings")
    single = emb.ndim == 1
    emb = emb.reshape(1, -1) if single else emb
    if precision == "float32":
        out = emb.astype(np.float32)
    elif len(emb) == 0:  # nothing to calibrate or pack: the empty result of the right width and type
        width = (emb.shape[-1] + 7) // 8 if precision.endswith("binary") else emb.shape[-1]
        out = np.zeros((0, width), dtype=np.uint8 if precision.startswith("u") else np.int8)
    elif precision in ("binary", "ubinary"):
        packed = np.packbits(emb > 0, axis=-1)
        out = packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    else:
        low, high = _ranges(emb, precision, ranges, calibration_embeddings)
        steps = (high - low) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((emb - low) / steps), 0, 255)
        out = buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    return out[0] if single else out


def _quantize_matrices(matrices: list | tuple, precision: str, ranges: Any, calibration: Any) -> list[np.ndarray]:
    matrices = [_as_float_matrix(m, "embeddings") for m in matrices]
    if any(m.ndim != 2 or m.shape[1] != matrices[0].shape[1] for m in matrices):
        raise InvalidInputError("a list of token embedding matrices must hold (n_i, dim) matrices of one dim; got "
                                f"shapes {[m.shape for m in matrices]}")
    if not matrices:
        return []
    whole = quantize_embeddings(np.concatenate(matrices), precision, ranges, calibration)  # one set of buckets
    return np.split(whole, np.cumsum([len(m) for m in matrices])[:-1])


def _ranges(emb: np.ndarray, precision: str, ranges: Any, calibration: Any) -> tuple[np.ndarray, np.ndarray]:
    if ranges is not None:
        ranges = np.asarray(ranges, dtype=np.float32)
        if ranges.shape != (2, emb.shape[-1]):
            raise InvalidInputError(f"ranges must have shape (2, {emb.shape[-1]}) (mins, maxes); got {ranges.shape}")
        return ranges[0], ranges[1]
    source = emb if calibration is None else _as_float_matrix(calibration, "calibration_embeddings")
    if calibration is not None and (source.ndim != 2 or source.shape[-1] != emb.shape[-1]):
        raise InvalidInputError(f"calibration_embeddings must be a matrix of {emb.shape[-1]}-dimensional "
                                f"embeddings like those quantized; got shape {source.shape}")
    if len(source) < 2:  # one row: every bucket collapses (min == max)
        raise InvalidInputError(
            f"{precision} buckets cannot be computed from {len(source)} "
            f"{'embedding(s)' if calibration is None else 'calibration embedding(s)'}; pass ranges= or "
            "calibration_embeddings= (a few hundred representative embeddings), or encode more texts at once"
        )
    if calibration is None and len(source) < 100:
        logger.warning("%s buckets computed from only %d embeddings; ranges= or calibration_embeddings= from "
                       "more embeddings give stabler buckets", precision, len(source))
    return source.min(axis=0).astype(np.float32), source.max(axis=0).astype(np.float32)


def _as_float_matrix(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed to read it
        x = _tensor_to_numpy(x)
    elif isinstance(x, list) and x and hasattr(x[0], "detach"):
        x = np.stack([_tensor_to_numpy(t) for t in x])
    x = np.asarray(x)
    if x.dtype.kind not in "f":
        raise InvalidInputError(f"{name} must be floats to quantize; got dtype {x.dtype}")
    return x


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A tensor's values in numpy: float64 kept (as for arrays, and as sentence-transformers), other floats float32."""
    t = t.detach().cpu()
    return t.numpy() if str(t.dtype) == "torch.float64" else t.float().numpy()
