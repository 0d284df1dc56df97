"""MSELoss: distillation; the labels are the teacher's embeddings of the texts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._base import EmbeddingLoss


class MSELoss(EmbeddingLoss):
    """Mean squared error between the student's embedding of each text column and the teacher embedding.

    Labels of shape (batch, dim) are the target of every column (the classic one-column case, or a
    translation pair whose both texts should map to the teacher's embedding of the source); labels of
    shape (batch, columns, dim) give each column its own target. The loss is the mean over the columns.
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.loss_fct = nn.MSELoss()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        labels = labels.detach()
        if labels.dim() == 2:
            targets = [labels] * len(embeddings)
        elif labels.dim() == 3 and labels.size(1) == len(embeddings):
            targets = list(labels.unbind(1))
        else:
            raise InvalidInputError(
                f"MSELoss labels must be teacher embeddings of shape (batch, dim) or (batch, {len(embeddings)}, "
                f"dim); got shape {tuple(labels.shape)}"
            )
        losses = [self.loss_fct(e, t.to(device=e.device, dtype=e.dtype)) for e, t in zip(embeddings, targets)]
        return torch.stack(losses).mean()
