"""CosineSimilarityLoss: regress the cosine similarity of a pair onto its float label."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._base import EmbeddingLoss, check_column_count, check_label_count


class CosineSimilarityLoss(EmbeddingLoss):
    """``loss_fct(cos_score_transformation(cos(u, v)), label)``; labels are floats (e.g. STSb score / 5)."""

    def __init__(self, model: Any, loss_fct: nn.Module | None = None,
                 cos_score_transformation: nn.Module | None = None) -> None:
        super().__init__(model)
        self.loss_fct = loss_fct if loss_fct is not None else nn.MSELoss()
        self.cos_score_transformation = cos_score_transformation or nn.Identity()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        check_column_count(self, embeddings)
        check_label_count(self, embeddings, labels)
        output = self.cos_score_transformation(torch.cosine_similarity(embeddings[0], embeddings[1]))
        return self.loss_fct(output, labels.float().view(-1))

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss_fct": type(self.loss_fct).__name__,
                "cos_score_transformation": type(self.cos_score_transformation).__name__}
