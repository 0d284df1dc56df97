"""What every loss shares: embed each text column with the model's torch modules."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError


def embed_columns(model: Any, sentence_features: Iterable[dict[str, Any]]) -> list[Tensor]:
    """One ``sentence_embedding`` tensor per text column: ``model(features)`` runs the torch modules."""
    return [model(features)["sentence_embedding"] for features in sentence_features]


def check_label_count(loss: nn.Module, embeddings: list[Tensor], labels: Tensor) -> None:
    batch_size = embeddings[0].shape[0]
    if labels.numel() != batch_size:
        raise InvalidInputError(
            f"{type(loss).__name__} expects {batch_size} labels (one per example); got {labels.numel()} with "
            f"shape {tuple(labels.shape)}: give each InputExample one float label"
        )


def check_column_count(loss: nn.Module, embeddings: list[Tensor], expected: int = 2) -> None:
    """Pair losses read two columns: a third (triplet data fed to ContrastiveLoss) was silently dropped."""
    if len(embeddings) != expected:
        raise InvalidInputError(
            f"{type(loss).__name__} needs {expected} text columns per InputExample; got {len(embeddings)}"
        )


def check_metric(metric: Any, enum_name: str) -> Any:
    """A distance metric is one of the enum's functions or a callable; a name failed at the first step."""
    if not callable(metric):
        raise InvalidInputError(f"distance_metric must be a {enum_name} member (e.g. {enum_name}.EUCLIDEAN) or a "
                                f"callable (x, y) -> distances; got {metric!r}")
    return metric


def pairwise_cos_sim(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def cos_sim_matrix(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs cosine similarity: ``a`` (n, d) x ``b`` (m, d) -> (n, m)."""
    a = torch.nn.functional.normalize(a, p=2, dim=1)
    b = torch.nn.functional.normalize(b, p=2, dim=1)
    return a @ b.T


class EmbeddingLoss(nn.Module):
    """Base of the losses: ``forward`` embeds the columns, ``compute_loss_from_embeddings`` does the maths.

    ``model`` is the SentenceTransformer facade (not an nn.Module, so it is not registered as a submodule:
    ``fit`` collects the model's parameters from ``model.torch_modules`` and the loss's own ones from here).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # keep a torch module out of this loss's parameters

    def forward(self, sentence_features: Iterable[dict[str, Any]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        return {}
