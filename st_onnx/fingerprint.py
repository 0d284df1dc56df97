"""A fingerprint of what a fused graph computes: the weights and configs of every module in a model folder.

It reads files only (safetensors bytes, JSON configs), so it needs neither torch nor onnx. Tokenizer files and
``max_seq_length`` are left out: they do not change the graph (its sequence axis is dynamic). Of a Transformer's
``sentence_bert_config.json`` only ``model_args`` and ``config_args`` count (they shape the loaded model), and
only when given, so folders without them keep the fingerprints earlier versions wrote. Weights count under any
shard names their index lists, and a model that runs its own code (``auto_map`` in its config, loaded with
``trust_remote_code``) has its folder's ``*.py`` files hashed too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Iterator

from . import layout
from .errors import ModelFolderError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_MODEL_SHAPING_ARGS = ("model_args", "config_args")


def _hashed_parts(f: Path) -> list[bytes] | Iterator[bytes]:
    """The bytes of ``f`` that count, in blocks: all of them, or a sentence_bert_config.json's model-shaping args
    (none when it has none: the file then leaves the fingerprint as it was before it was hashed at all)."""
    if f.name == layout.SBERT_CONFIG_JSON:
        config = layout.read_json(f)
        args = {k: config[k] for k in _MODEL_SHAPING_ARGS if isinstance(config, dict) and config.get(k)}
        return [json.dumps(args, sort_keys=True, default=str).encode()] if args else []
    return _blocks(f)


def _blocks(f: Path) -> Iterator[bytes]:
    try:
        fh = open(f, "rb")
    except PermissionError as e:  # a folder saved as root, run as another user (transformers saves weights 0600)
        raise ModelFolderError(
            f"cannot read {f} ({e.strerror}): st-onnx hashes the model's files to tell whether a fused graph was "
            f"exported from them; make it readable (chmod a+r {shlex.quote(str(f))})"
        ) from e
    with fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def weight_files(base: Path) -> list[Path]:
    """The torch weight files in ``base``: the usual names, the usual shard names, and the shards an index lists
    under names of its own (transformers loads whatever ``weight_map`` names)."""
    files = [base / n for n in _WEIGHT_FILES if (base / n).is_file()]
    files += sorted(base.glob("model-*-of-*.safetensors")) + sorted(base.glob("pytorch_model-*-of-*.bin"))
    for index in _SHARD_INDEX:
        weight_map = (layout.read_json_if_exists(base / index, {}) or {}).get("weight_map")
        if isinstance(weight_map, dict):
            listed = sorted({base / str(name) for name in weight_map.values()})
            files += [f for f in listed if f.is_file() and f not in files]
    return files


def _module_files(folder: Path, entry: dict) -> list[Path]:
    base = folder / entry["path"]
    names = ["config.json", layout.SBERT_CONFIG_JSON] + list(_SHARD_INDEX)
    return _ordered([base / n for n in names if (base / n).is_file()], weight_files(base)) + _remote_code(base)


def _ordered(configs: list[Path], weights: list[Path]) -> list[Path]:
    """configs, single weight files, indexes, then shards: the order earlier versions hashed (same fingerprints)."""
    head = [f for f in configs if f.name in ("config.json", layout.SBERT_CONFIG_JSON)]
    single = [f for f in weights if f.name in _WEIGHT_FILES]
    indexes = [f for f in configs if f.name in _SHARD_INDEX]
    return head + single + indexes + [f for f in weights if f.name not in _WEIGHT_FILES]


def _remote_code(base: Path) -> list[Path]:
    """The ``*.py`` files of a model whose config maps its classes to code of its own (``auto_map``): the
    modeling code is part of what the graph computes. Code kept in another repository (``repo--module.Class``)
    is named by the config, which is hashed already."""
    config = layout.read_json_if_exists(base / "config.json", {}) or {}
    if not (isinstance(config, dict) and config.get("auto_map")):
        return []
    return sorted(base.glob("*.py"))


def fingerprint_files(folder: str | os.PathLike) -> list[Path]:
    """The files the fingerprint hashes, in order: modules.json and each module's config and weight files (module
    folders that are symbolic links followed), or a plain transformers folder's config and weights."""
    folder = Path(folder)
    if not layout.is_st_folder(folder):
        return _module_files(folder, {"path": ""})
    files = [folder / layout.MODULES_JSON]
    for entry in layout.read_modules_json(folder):
        files += [f for f in _module_files(folder, entry) if f not in files]
    return files


def source_digests(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of each file the fingerprint hashes (the parts that count), except the Transformer's weights, by
    path in the folder: what a folder without those weights (an onnx-only deployment) still holds of the model
    a graph was exported from, file by file."""
    folder = Path(folder)
    weights = set(weight_files(layout.transformer_folder(folder)))
    out = {}
    for f in fingerprint_files(folder):
        if f not in weights:
            out[str(f.relative_to(folder))] = file_digest(f)
    return out


def file_digest(f: Path) -> str:
    h = hashlib.sha256()
    for block in _hashed_parts(f):
        h.update(block)
    return "sha256:" + h.hexdigest()


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over modules.json and each module's config and weight files, in module order (see the module doc)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in fingerprint_files(folder):
        parts = _hashed_parts(f)
        if parts == []:
            continue
        h.update(str(f.relative_to(folder)).encode())
        h.update(b"\0")
        for block in parts:
            h.update(block)
    return "sha256:" + h.hexdigest()
