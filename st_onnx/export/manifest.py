"""Writing the fused graph's manifest (JSON beside the graph), and ``check_graph``: the load's checks
(``st_onnx.runtime.manifest``, re-exported here) plus the graph's protobuf against the manifest.

Torch-free: json and (for ``check_graph``) the ``onnx`` package only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import folders, layout
from ..errors import GraphFileError, StaleGraphError
from ..runtime.manifest import FORMAT, content_digest, data_problem, file_sha256, graph_problem, refuse_newer
from ..runtime.manifest import read_manifest as _read_manifest

__all__ = ["FORMAT", "INPUT_NAMES", "OUTPUT_NAMES", "check_fresh", "check_graph", "content_digest", "data_problem",
           "file_fields", "file_sha256", "graph_is_fresh", "read_manifest", "refuse_newer", "with_file_fields",
           "write_manifest"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("sentence_embedding", "token_embeddings")


def read_manifest(graph_path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a fused graph; GraphFileError when it is missing, broken or of another format
    (NewerGraphError, one of them, when a newer st-onnx wrote it)."""
    return _read_manifest(graph_path, required=True)


def file_fields(graph_path: str | os.PathLike) -> dict[str, Any]:
    """The manifest's record of the graph's files: size and sha256 of the graph, and of its data file if it has
    one (``external_data``: a graph over protobuf's 2 GB keeps its weights there)."""
    graph_path = Path(graph_path)
    fields: dict[str, Any] = {"graph_bytes": graph_path.stat().st_size, "graph_sha256": file_sha256(graph_path)}
    data = layout.graph_data_path(graph_path)
    if data.is_file():
        fields["external_data"] = {"file": data.name, "bytes": data.stat().st_size, "sha256": file_sha256(data)}
    return fields


def with_file_fields(manifest: dict[str, Any], graph_path: str | os.PathLike) -> dict[str, Any]:
    """``manifest`` describing the files of ``graph_path`` instead (a packed graph, a graph under a new name)."""
    kept = {k: v for k, v in manifest.items() if k != "external_data"}
    return {**kept, **file_fields(graph_path)}






def write_manifest(graph_path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write the manifest beside ``graph_path`` atomically (rename over any previous one)."""
    target = layout.manifest_path(graph_path)
    with folders.atomic_file(target, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return target






def check_graph(graph_path: str | os.PathLike, *, verify_hash: bool = True) -> dict[str, Any]:
    """Check that a fused graph file is whole and is the graph its manifest describes; return the manifest.

    Raises GraphFileError where a load would refuse the graph (``runtime.manifest.graph_problem``: the manifest
    is missing, of another format or records no size and sha256, or the file's size, sha256 (unless
    ``verify_hash`` is False) or data file differ from it), and where the protobuf does not parse or lacks the
    inputs/outputs the manifest names.
    """
    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise GraphFileError(f"the fused graph {graph_path} does not exist; export it first")
    manifest = read_manifest(graph_path)
    problem = graph_problem(graph_path, manifest, verify_hash=verify_hash)
    if problem:
        raise GraphFileError(f"{problem}: cut short, corrupted or replaced; re-export the graph "
                             f"(`{layout.export_command(manifest.get('precision'))}`)")
    _check_proto(graph_path, manifest)
    return manifest


def _check_proto(graph_path: Path, manifest: dict[str, Any]) -> None:
    import onnx

    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not a whole ONNX model
        raise GraphFileError(f"the fused graph {graph_path} is not a readable ONNX model ({e}); re-export it") from e
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != list(manifest.get("inputs", inputs)) or not set(manifest.get("outputs", [])) <= set(outputs):
        raise GraphFileError(
            f"the fused graph {graph_path} has inputs {inputs} and outputs {outputs}; its manifest names "
            f"inputs {manifest.get('inputs')} and outputs {manifest.get('outputs')}. Re-export it"
        )
    if "sentence_embedding" not in outputs:
        raise GraphFileError(f"the graph {graph_path} has no 'sentence_embedding' output (outputs: {outputs})")


def graph_is_fresh(folder: str | os.PathLike, graph_path: str | os.PathLike) -> bool:
    """True when the graph's manifest fingerprint equals the current fingerprint of the model folder."""
    from ..fingerprint import folder_fingerprint

    try:
        manifest = read_manifest(graph_path)
    except GraphFileError:
        return False
    return Path(graph_path).is_file() and manifest.get("fingerprint") == folder_fingerprint(folder)


def check_fresh(folder: str | os.PathLike, graph_path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest, or raise StaleGraphError when the graph was exported from other weights."""
    from ..fingerprint import folder_fingerprint

    manifest = read_manifest(graph_path)
    current = folder_fingerprint(folder)
    if manifest.get("fingerprint") != current:
        raise StaleGraphError(
            f"the fused graph {graph_path} was exported from other weights (manifest fingerprint "
            f"{manifest.get('fingerprint')!r}, folder {folder} now {current!r}); re-export it with "
            f"`{layout.export_command(manifest.get('precision'), folder, folder)}` or load the model with "
            "backend='torch'"
        )
    return manifest
