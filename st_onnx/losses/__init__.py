"""Training losses with sentence-transformers' names, arguments and maths.

Each loss takes the SentenceTransformer first and is called as ``loss(sentence_features, labels)``, where
``sentence_features`` holds one features dict per text column (``smart_batching_collate``'s output).
"""

from __future__ import annotations

from .contrastive import ContrastiveLoss, OnlineContrastiveLoss, SiameseDistanceMetric
from .cosent import CoSENTLoss
from .cosine_similarity import CosineSimilarityLoss
from .mse import MSELoss
from .multiple_negatives_ranking import MultipleNegativesRankingLoss
from .softmax import SoftmaxLoss
from .triplet import TripletDistanceMetric, TripletLoss

__all__ = [
    "CosineSimilarityLoss", "CoSENTLoss", "MultipleNegativesRankingLoss", "SoftmaxLoss", "ContrastiveLoss",
    "SiameseDistanceMetric", "OnlineContrastiveLoss", "TripletLoss", "TripletDistanceMetric", "MSELoss",
]
