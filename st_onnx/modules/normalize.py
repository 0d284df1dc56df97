"""Normalize: scales each sentence embedding to unit L2 length."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class Normalize(nn.Module):
    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1)
        return features

    def save(self, output_path: str | os.PathLike) -> None:
        os.makedirs(output_path, exist_ok=True)

    @classmethod
    def load(cls, input_path: str | os.PathLike) -> "Normalize":
        return cls()
