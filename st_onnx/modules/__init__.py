"""The torch modules, authoritative for training and saving: Transformer, Pooling, Dense, Normalize.

They know nothing of ONNX. ``ModuleStack`` runs them in order over a features dict, exactly as
sentence-transformers' ``nn.Sequential`` does.
"""

from .dense import Dense
from .normalize import Normalize
from .pooling import Pooling
from .stack import ModuleStack, load_stack
from .transformer import Transformer

__all__ = ["Dense", "ModuleStack", "Normalize", "Pooling", "Transformer", "load_stack"]
