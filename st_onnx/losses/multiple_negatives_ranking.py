"""MultipleNegativesRankingLoss: in-batch negatives, cross-entropy over scaled similarities."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._base import EmbeddingLoss, cos_sim_matrix


class MultipleNegativesRankingLoss(EmbeddingLoss):
    """(anchor, positive[, negatives...]) columns: each anchor must pick its own positive among all candidates.

    Candidates are every positive and every hard negative in the batch; labels are ignored.
    """

    def __init__(self, model: Any, scale: float = 20.0, similarity_fct: Callable = cos_sim_matrix) -> None:
        super().__init__(model)
        if not scale > 0:
            raise InvalidInputError(f"scale must be positive; got {scale!r}")
        self.scale = scale
        self.similarity_fct = similarity_fct
        self.cross_entropy_loss = nn.CrossEntropyLoss()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if len(embeddings) < 2:
            raise InvalidInputError(
                f"MultipleNegativesRankingLoss needs at least 2 text columns (anchor, positive); got {len(embeddings)}"
            )
        anchors = embeddings[0]
        candidates = torch.cat(embeddings[1:])
        scores = self.similarity_fct(anchors, candidates) * self.scale
        targets = torch.arange(len(anchors), device=scores.device)
        return self.cross_entropy_loss(scores, targets)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": getattr(self.similarity_fct, "__name__", "?")}
