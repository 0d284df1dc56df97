"""ContrastiveLoss and OnlineContrastiveLoss: pull positive pairs (label 1) together, push negatives past a margin."""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable

import torch.nn.functional as F
from torch import Tensor

from ..errors import warn
from ._base import EmbeddingLoss, check_column_count, check_label_count, check_metric


class SiameseDistanceMetric(Enum):
    """The distance between the two embeddings of a pair."""

    EUCLIDEAN = lambda x, y: F.pairwise_distance(x, y, p=2)  # noqa: E731
    MANHATTAN = lambda x, y: F.pairwise_distance(x, y, p=1)  # noqa: E731
    COSINE_DISTANCE = lambda x, y: 1 - F.cosine_similarity(x, y)  # noqa: E731


def metric_name(metric: Any) -> str:
    for name, value in vars(SiameseDistanceMetric).items():
        if value is metric:
            return f"SiameseDistanceMetric.{name}"
    return getattr(metric, "__name__", str(metric))


class ContrastiveLoss(EmbeddingLoss):
    """``0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2)``, averaged (``size_average``) or summed."""

    def __init__(self, model: Any, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE, margin: float = 0.5,
                 size_average: bool = True) -> None:
        super().__init__(model)
        self.distance_metric = check_metric(distance_metric, "SiameseDistanceMetric")
        self.margin = margin
        self.size_average = size_average
        self._labels_checked = False

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        check_column_count(self, embeddings)
        check_label_count(self, embeddings, labels)
        self._labels_checked = self._labels_checked or warn_if_not_binary(
            self, labels, "a label y between them weights the positive term by y and the negative one by 1 - y")
        labels = labels.view(-1).float()
        distances = self.distance_metric(embeddings[0], embeddings[1])
        losses = 0.5 * (labels * distances.pow(2) + (1 - labels) * F.relu(self.margin - distances).pow(2))
        return losses.mean() if self.size_average else losses.sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": metric_name(self.distance_metric), "margin": self.margin,
                "size_average": self.size_average}


class OnlineContrastiveLoss(EmbeddingLoss):
    """ContrastiveLoss over the hard pairs of the batch only (summed): positives farther apart than the
    nearest negative, negatives nearer than the farthest positive."""

    def __init__(self, model: Any, distance_metric=SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5) -> None:
        super().__init__(model)
        self.distance_metric = check_metric(distance_metric, "SiameseDistanceMetric")
        self.margin = margin
        self._labels_checked = False

    def forward(self, sentence_features: Iterable[dict[str, Any]], labels: Tensor,
                size_average: bool = False) -> Tensor:
        """``size_average`` is taken, as sentence-transformers' signature has it, and, as there, changes nothing:
        this loss is always a sum."""
        return super().forward(sentence_features, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        check_column_count(self, embeddings)
        check_label_count(self, embeddings, labels)
        self._labels_checked = self._labels_checked or warn_if_not_binary(
            self, labels, "pairs with any other label are left out of the loss")
        labels = labels.view(-1)
        distances = self.distance_metric(embeddings[0], embeddings[1])
        negs = distances[labels == 0]
        poss = distances[labels == 1]
        negative_pairs = negs[negs < (poss.max() if len(poss) else negs.mean())]
        positive_pairs = poss[poss > (negs.min() if len(negs) else poss.mean())]
        return positive_pairs.pow(2).sum() + F.relu(self.margin - negative_pairs).pow(2).sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": metric_name(self.distance_metric), "margin": self.margin}


def warn_if_not_binary(loss: Any, labels: Tensor, consequence: str) -> bool:
    """Warn when a batch holds labels other than 0 and 1 (STS-style float scores fed to a contrastive loss train
    something else than the user meant); returns whether it warned, so that the caller warns once."""
    if not ((labels != 0) & (labels != 1)).any().item():
        return False
    warn(f"{type(loss).__name__} takes labels 0 (dissimilar) and 1 (similar); this batch has others "
         f"(first labels: {labels.view(-1)[:5].tolist()}): {consequence}", UserWarning)
    return True
