"""Turn a backend's raw outputs into what ``encode`` returns, with sentence-transformers' rules.

- ``sentence_embedding``: an array (n, dim) by default; one torch tensor with ``convert_to_tensor``; a list of
  1-D tensors with ``convert_to_numpy=False``; an empty input gives an array of shape (0, dim).
- ``token_embeddings`` and ``None``: per-text results; torch tensors when the backend returns tensors (torch
  backend, as sentence-transformers does) or when asked with ``convert_to_numpy=False``/``convert_to_tensor``.
  Quantized token embeddings (``precision`` other than float32) share one set of buckets and are numpy arrays
  unless ``convert_to_tensor`` asks for tensors.
A single string input returns the first element. torch is imported only when a tensor must be produced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .options import EncodeOptions


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _to_tensor(x: Any):
    import torch

    return x if _is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))


def _to_numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def l2_normalize(x: Any) -> Any:
    if _is_tensor(x):
        import torch

        return torch.nn.functional.normalize(x, p=2, dim=-1)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def format_sentence_embeddings(emb: Any, opts: EncodeOptions, single: bool) -> Any:
    """``emb`` is a (n, dim) numpy array or torch tensor, already in input order."""
    if opts.truncate_dim is not None:
        emb = emb[:, :opts.truncate_dim]
    if opts.normalize_embeddings and len(emb):
        emb = l2_normalize(emb)
    if opts.precision != "float32":
        from ..quantization import quantize_embeddings

        emb = quantize_embeddings(_to_numpy(emb), opts.precision)
    if opts.convert_to_tensor:
        out = _to_tensor(emb)
    elif opts.convert_to_numpy:
        out = _to_numpy(emb)
    else:
        out = list(_to_tensor(emb))
    return out[0] if single else out


def format_per_text(items: list, opts: EncodeOptions, single: bool) -> Any:
    """Per-text outputs (token embeddings, or dicts of every output) in input order."""
    want_tensor = opts.convert_to_tensor or not opts.convert_to_numpy or any(_is_tensor_item(i) for i in items[:1])
    if opts.precision != "float32" and items:  # token embeddings, in one set of buckets
        from ..quantization import quantize_embeddings

        items = quantize_embeddings([_to_numpy(x) for x in items], opts.precision)
        want_tensor = False  # numpy whatever convert_to_tensor says, as sentence-transformers 6 returns them

    def convert(x: Any) -> Any:
        if isinstance(x, dict):  # output_value=None: truncate_dim applies to its sentence embedding, as in ST
            return {k: convert(v[:opts.truncate_dim] if k == "sentence_embedding" and opts.truncate_dim else v)
                    for k, v in x.items()}
        if isinstance(x, (np.ndarray,)) or _is_tensor(x):
            return _to_tensor(x) if want_tensor else _to_numpy(x)
        return x

    out = [convert(x) for x in items]
    for item in out:
        if isinstance(item, dict):
            item.setdefault("modality", "text")  # as sentence-transformers 6 labels every output dict
            if opts.prompt_tokens is not None:  # every dict of a prompted call says how long its prompt was
                item.setdefault("prompt_length", opts.prompt_tokens)
    return out[0] if single else out


def _is_tensor_item(item: Any) -> bool:
    if isinstance(item, dict):
        return any(_is_tensor(v) for v in item.values())
    return _is_tensor(item)
