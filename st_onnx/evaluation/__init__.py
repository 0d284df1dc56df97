"""Evaluators with sentence-transformers 2.x's names, arguments, main scores and CSV files.

``evaluator(model, output_path=None, epoch=-1, steps=-1) -> float``. They need only ``model.encode`` and
numpy, so they run on both backends and never import torch.
"""

from __future__ import annotations

from .base import SentenceEvaluator, SimilarityFunction
from .binary_classification import BinaryClassificationEvaluator
from .embedding_similarity import EmbeddingSimilarityEvaluator
from .information_retrieval import InformationRetrievalEvaluator
from .sequential import SequentialEvaluator
from .triplet import TripletEvaluator

__all__ = ["SentenceEvaluator", "SimilarityFunction", "EmbeddingSimilarityEvaluator",
           "InformationRetrievalEvaluator", "BinaryClassificationEvaluator", "TripletEvaluator",
           "SequentialEvaluator"]
