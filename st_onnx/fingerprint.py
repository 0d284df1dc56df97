"""A fingerprint of what a fused graph computes: the weights and configs of every module in a model folder.

It reads files only (safetensors bytes, JSON configs), so it needs neither torch nor onnx. Tokenizer files and
``max_seq_length`` are left out: they do not change the graph (its sequence axis is dynamic).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import layout

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _module_files(folder: Path, entry: dict) -> list[Path]:
    base = folder / entry["path"]
    names = ["config.json"] + list(_WEIGHT_FILES) + list(_SHARD_INDEX)
    files = [base / n for n in names if (base / n).is_file()]
    files += sorted(base.glob("model-*-of-*.safetensors")) + sorted(base.glob("pytorch_model-*-of-*.bin"))
    return files


def fingerprint_files(folder: str | os.PathLike) -> list[Path]:
    """The files the fingerprint hashes, in order: modules.json and each module's config and weight files (module
    folders that are symbolic links followed), or a plain transformers folder's config and weights."""
    folder = Path(folder)
    if not layout.is_st_folder(folder):
        return [folder / n for n in ("config.json",) + _WEIGHT_FILES if (folder / n).is_file()]
    files = [folder / layout.MODULES_JSON]
    for entry in layout.read_modules_json(folder):
        files += [f for f in _module_files(folder, entry) if f not in files]
    return files


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over modules.json and each module's config and weight files, in module order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in fingerprint_files(folder):
        h.update(str(f.relative_to(folder)).encode())
        h.update(b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()
