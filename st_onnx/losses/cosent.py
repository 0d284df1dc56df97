"""CoSENTLoss: a ranking loss over every pair of pairs whose labels are ordered."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ._base import EmbeddingLoss, check_column_count, check_label_count, pairwise_cos_sim


class CoSENTLoss(EmbeddingLoss):
    """``log(1 + sum over (i, j) with label_i > label_j of exp(scale * (s_j - s_i)))``."""

    def __init__(self, model: Any, scale: float = 20.0, similarity_fct: Callable = pairwise_cos_sim) -> None:
        super().__init__(model)
        self.scale = scale
        self.similarity_fct = similarity_fct

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        check_column_count(self, embeddings)
        check_label_count(self, embeddings, labels)
        scores = self.similarity_fct(embeddings[0], embeddings[1]).float() * self.scale
        labels = labels.view(-1).float()
        # diff[i, j] = s_j - s_i, kept where label_i > label_j; the rest is pushed to -inf (-1e12).
        diff = scores[None, :] - scores[:, None]
        keep = labels[:, None] > labels[None, :]
        diff = diff - (~keep).to(diff.dtype) * 1e12
        diff = torch.cat((torch.zeros(1, dtype=diff.dtype, device=diff.device), diff.view(-1)))
        return torch.logsumexp(diff, dim=0)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": getattr(self.similarity_fct, "__name__", "?")}
