"""sentence-transformers' ``models`` namespace: ``from st_onnx.models import Transformer, Pooling, Dense, Normalize``."""

from .modules import Dense, Normalize, Pooling, Transformer

__all__ = ["Dense", "Normalize", "Pooling", "Transformer"]
