"""Pooling: token embeddings -> one sentence embedding, with sentence-transformers' modes and maths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import layout
from ..errors import InvalidInputError, ModelFolderError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Classic boolean config keys, in the order sentence-transformers concatenates their outputs.
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def normalize_modes(pooling_mode: str | Sequence[str] | None) -> tuple[str, ...]:
    if pooling_mode is None:
        return ("mean",)
    if not isinstance(pooling_mode, (str, list, tuple)):
        raise InvalidInputError(f"pooling_mode must be a mode or a list of modes; got {pooling_mode!r}; allowed: "
                                f"{', '.join(POOLING_MODES)}")
    modes = (pooling_mode,) if isinstance(pooling_mode, str) else tuple(pooling_mode)
    if not modes:
        raise InvalidInputError(f"pooling_mode must name at least one mode; allowed: {', '.join(POOLING_MODES)}")
    for mode in modes:
        if mode not in POOLING_MODES:
            raise InvalidInputError(f"pooling mode {mode!r} is not supported; allowed: {', '.join(POOLING_MODES)}")
    return modes


class Pooling(nn.Module):
    """Pools ``token_embeddings`` into ``sentence_embedding``; several modes are concatenated in order.

    Accepts both spellings of sentence-transformers: ``pooling_mode="mean"`` (or a tuple of modes) and the
    classic ``pooling_mode_mean_tokens=True`` booleans; ``word_embedding_dimension`` is the classic name of
    ``embedding_dimension``.
    """

    def __init__(
        self,
        word_embedding_dimension: int | None = None,
        pooling_mode: str | Sequence[str] | None = None,
        include_prompt: bool = True,
        *,
        embedding_dimension: int | None = None,
        **legacy_flags: bool,
    ) -> None:
        super().__init__()
        unknown = set(legacy_flags) - set(_LEGACY_KEYS)
        if unknown:
            raise InvalidInputError(f"unknown Pooling argument(s) {sorted(unknown)}; allowed: {sorted(_LEGACY_KEYS)}")
        dim = embedding_dimension if embedding_dimension is not None else word_embedding_dimension
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidInputError(f"Pooling needs a positive embedding dimension; got {dim!r}")
        if pooling_mode is None:
            pooling_mode = tuple(mode for key, mode in _LEGACY_KEYS.items() if legacy_flags.get(key)) or "mean"
        self.modes = normalize_modes(pooling_mode)
        self.word_embedding_dimension = dim
        self.include_prompt = bool(include_prompt)

    @property
    def pooling_mode(self) -> str | tuple[str, ...]:
        return self.modes[0] if len(self.modes) == 1 else self.modes

    @pooling_mode.setter
    def pooling_mode(self, value: str | Sequence[str]) -> None:
        self.modes = normalize_modes(value)

    @property
    def embedding_dimension(self) -> int:  # sentence-transformers 6's name of word_embedding_dimension
        return self.word_embedding_dimension

    @property
    def pooling_output_dimension(self) -> int:
        return len(self.modes) * self.word_embedding_dimension

    def get_sentence_embedding_dimension(self) -> int:
        return self.pooling_output_dimension

    get_embedding_dimension = get_sentence_embedding_dimension

    def __repr__(self) -> str:
        return f"Pooling({{'embedding_dimension': {self.word_embedding_dimension}, 'pooling_mode': {self.pooling_mode!r}, 'include_prompt': {self.include_prompt}}})"

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        tokens = features["token_embeddings"]
        mask = features.get("attention_mask")
        if mask is None or mask.shape[-1] != tokens.shape[1]:
            mask = torch.ones(tokens.shape[:-1], dtype=torch.int64, device=tokens.device)
        original = mask
        if not self.include_prompt and "prompt_length" in features:
            mask = exclude_prompt(mask, features["prompt_length"])
        features["sentence_embedding"] = torch.cat([pool(mode, tokens, mask, original) for mode in self.modes],
                                                   dim=-1)
        return features

    def get_config_dict(self) -> dict[str, Any]:
        """The classic config (boolean flags), which every sentence-transformers release reads."""
        config: dict[str, Any] = {"word_embedding_dimension": self.word_embedding_dimension}
        if list(self.modes) != sorted(set(self.modes), key=POOLING_MODES.index):
            # The booleans cannot express a custom concatenation order or a mode given twice: the newer spelling.
            return {"embedding_dimension": self.word_embedding_dimension, "pooling_mode": list(self.modes),
                    "include_prompt": self.include_prompt}
        for key, mode in _LEGACY_KEYS.items():
            config[key] = mode in self.modes
        config["include_prompt"] = self.include_prompt
        return config

    def save(self, output_path: str | os.PathLike) -> None:
        layout.write_json(Path(output_path) / "config.json", self.get_config_dict())

    @classmethod
    def load(cls, input_path: str | os.PathLike) -> "Pooling":
        path = Path(input_path) / "config.json"
        config = layout.read_json(path, "Pooling config.json")
        if not isinstance(config, dict):
            raise ModelFolderError(f"{path} holds a JSON {type(config).__name__}; allowed: an object "
                                   "(embedding_dimension, pooling_mode, ...)")
        if "pooling_mode" in config:
            for key in _LEGACY_KEYS:
                config.pop(key, None)
        return cls(**config)


def exclude_prompt(mask: torch.Tensor, prompt_length: int | torch.Tensor) -> torch.Tensor:
    """``mask`` with each row's first ``prompt_length`` real tokens zeroed (after any left padding), as
    sentence-transformers does.

    Written as a comparison, not a slice assignment, so that a traced graph keeps ``prompt_length`` an input
    (an int or a one-element tensor; the fused graph's optional ``prompt_length`` input) instead of a constant.
    """
    length = torch.as_tensor(prompt_length, device=mask.device).reshape(-1)[0]
    first = mask.to(torch.int32).argmax(dim=1, keepdim=True)  # 0 unless padded on the left
    keep = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) >= first + length
    return mask * keep.to(mask.dtype)


def pool(mode: str, tokens: torch.Tensor, mask: torch.Tensor, original: torch.Tensor | None = None) -> torch.Tensor:
    """One pooling mode over padded (batch, seq, dim) tokens; written with ops that export to ONNX.

    ``original``: the attention mask before a prompt was left out of ``mask``; weightedmean numbers positions
    from the first real token of it, as sentence-transformers does (default: ``mask``)."""
    fmask = mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "cls":
        first = mask.to(torch.int32).argmax(dim=1)
        index = first.view(-1, 1, 1).expand(-1, 1, tokens.shape[-1]).to(torch.int64)
        # [:, 0], not squeeze(1): squeeze of a dynamic dimension exports as an If node, and ORT's symbolic shape
        # inference (run by the exporter's fusions) copies every weight into each If's subgraph: a 0.6B model's
        # export then ran out of 24 GB
        return torch.gather(tokens, 1, index)[:, 0]
    if mode == "max":
        return tokens.masked_fill(fmask == 0, float("-inf")).max(dim=1).values
    # half-precision tokens (a model after half()/bfloat16()) are summed in fp32 and the result cast back, as
    # sentence-transformers 6 does; fp32 (what the graph is traced from) takes no extra casts
    half = tokens.dtype in (torch.float16, torch.bfloat16)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        total = (tokens * fmask).sum(dim=1, dtype=torch.float32) if half else (tokens * fmask).sum(dim=1)
        count = torch.clamp(fmask.sum(dim=1, dtype=torch.float32) if half else fmask.sum(dim=1), min=1e-9)
        pooled = total / (count if mode == "mean" else torch.sqrt(count))
        return pooled.to(tokens.dtype) if half else pooled
    if mode == "weightedmean":
        dtype = torch.float32 if half else tokens.dtype
        positions = torch.cumsum(torch.ones_like(mask, dtype=dtype), dim=1)
        pad_lengths = (mask if original is None else original).to(torch.int32).argmax(dim=1).to(dtype)
        weights = (positions - pad_lengths.unsqueeze(1)).unsqueeze(-1) * mask.unsqueeze(-1).to(dtype)
        pooled = (tokens * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
        return pooled.to(tokens.dtype) if half else pooled
    if mode == "lasttoken":
        seq_len = tokens.shape[1]
        values, indices = mask.to(torch.int32).flip(1).max(dim=1)
        indices = torch.where(values == 0, torch.full_like(indices, seq_len - 1), indices)
        last = (seq_len - 1 - indices).view(-1, 1, 1).expand(-1, 1, tokens.shape[-1]).to(torch.int64)
        return torch.gather(tokens * fmask, 1, last)[:, 0]
    raise InvalidInputError(f"pooling mode {mode!r} is not supported; allowed: {', '.join(POOLING_MODES)}")
