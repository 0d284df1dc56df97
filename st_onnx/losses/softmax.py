"""SoftmaxLoss: a linear classifier over (u, v, |u - v|[, u * v]), trained with cross-entropy (NLI)."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ._base import EmbeddingLoss, check_column_count, embed_columns

logger = logging.getLogger(__name__)


class SoftmaxLoss(EmbeddingLoss):
    """The classifier is this loss's own parameter: ``fit`` trains it with the model."""

    def __init__(self, model: Any, sentence_embedding_dimension: int | None = None, num_labels: int = 0,
                 concatenation_sent_rep: bool = True, concatenation_sent_difference: bool = True,
                 concatenation_sent_multiplication: bool = False, loss_fct: nn.Module | None = None,
                 *, embedding_dimension: int | None = None) -> None:
        super().__init__(model)
        dim = sentence_embedding_dimension if sentence_embedding_dimension is not None else embedding_dimension
        if dim is None or num_labels <= 0:
            raise InvalidInputError(
                f"SoftmaxLoss needs sentence_embedding_dimension and num_labels > 0; got {dim!r} and {num_labels!r}"
            )
        self.num_labels = num_labels
        self.concatenation_sent_rep = concatenation_sent_rep
        self.concatenation_sent_difference = concatenation_sent_difference
        self.concatenation_sent_multiplication = concatenation_sent_multiplication
        n = 2 * concatenation_sent_rep + concatenation_sent_difference + concatenation_sent_multiplication
        if n == 0:
            raise InvalidInputError("set at least one of concatenation_sent_rep, concatenation_sent_difference, "
                             "concatenation_sent_multiplication to True")
        logger.info("Softmax loss: %d vectors concatenated", n)
        self.classifier = nn.Linear(n * dim, num_labels)
        self.loss_fct = loss_fct if loss_fct is not None else nn.CrossEntropyLoss()

    def logits(self, rep_a: Tensor, rep_b: Tensor) -> Tensor:
        vectors = []
        if self.concatenation_sent_rep:
            vectors += [rep_a, rep_b]
        if self.concatenation_sent_difference:
            vectors.append(torch.abs(rep_a - rep_b))
        if self.concatenation_sent_multiplication:
            vectors.append(rep_a * rep_b)
        features = torch.cat(vectors, 1).to(self.classifier.weight.dtype)
        return self.classifier(features)

    def forward(self, sentence_features: Iterable[dict[str, Any]], labels: Tensor | None):
        reps = embed_columns(self.model, sentence_features)
        check_column_count(self, reps)
        if labels is None:
            return reps, self.logits(*reps)
        return self.compute_loss_from_embeddings(reps, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        check_column_count(self, embeddings)
        output = self.logits(embeddings[0], embeddings[1])
        if self.num_labels == 1 or labels.shape != output.shape:
            labels = labels.view(-1)
        return self.loss_fct(output, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "concatenation_sent_rep": self.concatenation_sent_rep,
                "concatenation_sent_difference": self.concatenation_sent_difference,
                "concatenation_sent_multiplication": self.concatenation_sent_multiplication}
