"""torch modules -> one fused ONNX graph: export, optimize, verify parity, graft, and checking a graph file.

Names resolve lazily (PEP 562): ``check_graph``, ``graph_is_fresh``, ``check_fresh``, ``read_manifest`` (module
``manifest``) and ``graft_pooling`` (module ``graft``) need only onnx/numpy, so the ONNX Runtime path can use
them without importing torch; the exporter itself imports torch.

Modules: ``graph_module`` (the traced torch wrapper), ``exporter`` (export_fused_graph, export_model_folder),
``optimize`` (ORT fusions, fp16, int8), ``verify`` (ParityReport), ``manifest`` (writing the JSON beside the
graph; the reading and file checks a load makes are ``st_onnx.runtime.manifest``'s),
``graft`` (pooling/dense/normalize appended to a transformer-only graph with onnx alone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "export_fused_graph": "exporter",
    "export_model_folder": "exporter",
    "ParityReport": "verify",
    "COSINE_THRESHOLDS": "verify",
    "graft_pooling": "graft",
    "check_graph": "manifest",
    "check_fresh": "manifest",
    "graph_is_fresh": "manifest",
    "read_manifest": "manifest",
    "FORMAT": "manifest",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .exporter import export_fused_graph, export_model_folder
    from .graft import graft_pooling
    from .manifest import FORMAT, check_fresh, check_graph, graph_is_fresh, read_manifest
    from .verify import COSINE_THRESHOLDS, ParityReport


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'st_onnx.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
