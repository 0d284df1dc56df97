"""st-onnx: sentence-transformers' SentenceTransformer, with one fused ONNX graph on ONNX Runtime for encode.

Importing this package loads nothing heavy: names resolve on first use (PEP 562), so an ONNX-only encode never
imports torch, transformers or onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "SentenceTransformer": ("st_onnx.model", "SentenceTransformer"),
    "InputExample": ("st_onnx.data", "InputExample"),
    "util": ("st_onnx.util", None),
    "models": ("st_onnx.models", None),
    "losses": ("st_onnx.losses", None),
    "evaluation": ("st_onnx.evaluation", None),
    "errors": ("st_onnx.errors", None),
}

__all__ = ["SentenceTransformer", "InputExample", "util", "models", "losses", "evaluation", "errors", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import errors, evaluation, losses, models, util
    from .data import InputExample
    from .model import SentenceTransformer


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'st_onnx' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
