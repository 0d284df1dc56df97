"""Normalize: scales each sentence embedding to unit L2 length."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import layout
from .routing import check_sentence_embedding_only


class Normalize(nn.Module):
    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1)
        return features

    def save(self, output_path: str | os.PathLike) -> None:
        os.makedirs(output_path, exist_ok=True)

    @classmethod
    def load(cls, input_path: str | os.PathLike) -> "Normalize":
        # sentence-transformers 6 writes a config.json; earlier versions an empty folder (or none: git drops it)
        config = layout.read_json_if_exists(Path(input_path) / "config.json", {})
        check_sentence_embedding_only("Normalize", config, str(input_path))
        return cls()
