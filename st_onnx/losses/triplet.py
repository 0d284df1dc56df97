"""TripletLoss: the anchor must be nearer its positive than its negative, by a margin."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError
from ._base import EmbeddingLoss, check_metric


class TripletDistanceMetric(Enum):
    """The distance between anchor and positive (or negative)."""

    COSINE = lambda x, y: 1 - F.cosine_similarity(x, y)  # noqa: E731
    EUCLIDEAN = lambda x, y: F.pairwise_distance(x, y, p=2)  # noqa: E731
    MANHATTAN = lambda x, y: F.pairwise_distance(x, y, p=1)  # noqa: E731


class TripletLoss(EmbeddingLoss):
    """``mean(relu(d(anchor, positive) - d(anchor, negative) + triplet_margin))``; labels are ignored."""

    def __init__(self, model: Any, distance_metric=TripletDistanceMetric.EUCLIDEAN,
                 triplet_margin: float = 5) -> None:
        super().__init__(model)
        self.distance_metric = check_metric(distance_metric, "TripletDistanceMetric")
        self.triplet_margin = triplet_margin

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if len(embeddings) != 3:
            raise InvalidInputError(f"TripletLoss needs 3 text columns (anchor, positive, negative); got {len(embeddings)}")
        anchor, positive, negative = embeddings
        losses = F.relu(self.distance_metric(anchor, positive) - self.distance_metric(anchor, negative)
                        + self.triplet_margin)
        return losses.mean()

    def get_config_dict(self) -> dict[str, Any]:
        name = next((f"TripletDistanceMetric.{n}" for n, v in vars(TripletDistanceMetric).items()
                     if v is self.distance_metric), getattr(self.distance_metric, "__name__", "?"))
        return {"distance_metric": name, "triplet_margin": self.triplet_margin}
