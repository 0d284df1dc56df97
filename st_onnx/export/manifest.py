"""The fused graph's manifest (JSON beside the graph) and the checks a runtime makes before using a graph.

Torch-free: json, hashlib and (for ``check_graph``) the ``onnx`` package only, so the ONNX Runtime path can
import it. The manifest keys the runtime relies on: ``format``, ``fingerprint``, ``precision``, ``inputs``,
``outputs``, ``embedding_dimension``, ``graph_bytes``, ``graph_sha256`` and, for a graph over 2 GB,
``external_data`` (its weights file).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import layout
from ..errors import GraphFileError, NewerGraphError, StaleGraphError

FORMAT = "st-onnx-fused/1"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("sentence_embedding", "token_embeddings")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


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


def content_digest(manifest: dict[str, Any]) -> str | None:
    """What identifies a graph's bytes: its sha256, followed by its data file's when it has one (the graph file
    alone of a graph over 2 GB is only its structure: the same for other weights of the same shapes)."""
    digest = manifest.get("graph_sha256")
    data = manifest.get("external_data")
    if digest and isinstance(data, dict):
        return f"{digest}+{data.get('sha256')}"
    return digest


def data_problem(graph_path: str | os.PathLike, manifest: dict[str, Any], *, verify_hash: bool = True) -> str | None:
    """Why the graph's data file is not the one its manifest records (another name, missing, a link out of the
    graph's folder, other size, other sha256), or None when it is, or when the manifest records none."""
    record = manifest.get("external_data")
    if not isinstance(record, dict):
        return None
    data = layout.graph_data_path(graph_path)
    if record.get("file") != data.name:
        return f"the manifest of {graph_path} names the weights file {record.get('file')!r}; expected {data.name!r}"
    if not data.is_file():
        return f"the weights file {data} of the graph {graph_path} is missing"
    real = data.resolve()
    # ONNX Runtime reads weights under the graph's folder, or under the folder of the file a linked graph points
    # to (a Hugging Face cache snapshot: both are links into blobs/); not from anywhere else (git-annex, DVC)
    allowed = {Path(graph_path).parent.resolve(), Path(graph_path).resolve().parent}
    if not allowed & set(real.parents):
        return (f"the weights file {data} links to {real}, outside the graph's folder, and ONNX Runtime refuses to "
                f"read weights from there; put the file itself in its place (cp --remove-destination {real} {data})")
    if data.stat().st_size != record.get("bytes"):
        return f"the weights file {data} holds {data.stat().st_size} bytes where the manifest says {record.get('bytes')}"
    if verify_hash and file_sha256(data) != record.get("sha256"):
        return f"the weights file {data} is not the one the manifest describes (sha256 differs)"
    return None


def write_manifest(graph_path: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write the manifest beside ``graph_path`` atomically (rename over any previous one)."""
    target = layout.manifest_path(graph_path)
    with layout.atomic_file(target, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return target


def refuse_newer(graph: Path, manifest: dict[str, Any]) -> None:
    """Raise NewerGraphError where ``manifest`` is of a newer st-onnx: a higher format number, or a graph layout
    above this one's (``layout.GRAPH_LAYOUT``)."""
    found = manifest.get("format")
    kind, _, number = str(found).rpartition("/")
    ours, _, version = FORMAT.rpartition("/")
    newer = kind == ours and number.isascii() and number.isdigit() and int(number) > int(version)
    found_layout = manifest.get("layout")
    if isinstance(found_layout, int) and found_layout > layout.GRAPH_LAYOUT:
        newer, found = True, f"graph layout {found_layout}"
    if newer:
        precision = manifest.get("precision") or layout.graph_precision(graph)
        raise NewerGraphError(
            f"{graph} was exported by a newer st-onnx (manifest {layout.manifest_path(graph).name}: {found}; this "
            f"st-onnx reads {FORMAT}, graph layout up to {layout.GRAPH_LAYOUT}): upgrade st-onnx, or export the "
            f"graph again with this one (`{layout.export_command(precision, out_dir='OUT_DIR')}`)", graph)


def read_manifest(graph_path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a fused graph; GraphFileError when it is missing, broken or of another format."""
    path = layout.manifest_path(graph_path)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise GraphFileError(
            f"the graph {graph_path} has no manifest {path.name} beside it; re-export it "
            f"({layout.export_command(layout.graph_precision(graph_path))})"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraphFileError(f"the manifest {path} is not valid JSON ({e}); re-export the graph") from e
    if isinstance(manifest, dict):
        refuse_newer(Path(graph_path), manifest)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise GraphFileError(f"the manifest {path} has format {found!r}; allowed: {FORMAT!r}. Re-export the graph")
    return manifest


def check_graph(graph_path: str | os.PathLike, *, verify_hash: bool = True) -> dict[str, Any]:
    """Check that a fused graph file is whole and is the graph its manifest describes; return the manifest.

    Raises GraphFileError when the file is missing, truncated or corrupted (size or sha256 differ from the
    manifest, or the protobuf does not parse), when its data file (a graph over 2 GB) is not the one the manifest
    records (``data_problem``), or when it lacks the inputs/outputs the manifest names.
    """
    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise GraphFileError(f"the fused graph {graph_path} does not exist; export it first")
    manifest = read_manifest(graph_path)
    size = graph_path.stat().st_size
    expected = manifest.get("graph_bytes")
    if expected is not None and size != expected:
        raise GraphFileError(
            f"the fused graph {graph_path} is {size} bytes but its manifest says {expected}: the file is truncated "
            "or was replaced; re-export it"
        )
    if verify_hash and manifest.get("graph_sha256") and file_sha256(graph_path) != manifest["graph_sha256"]:
        raise GraphFileError(
            f"the fused graph {graph_path} does not match its manifest's sha256: it is corrupted; re-export it"
        )
    problem = data_problem(graph_path, manifest, verify_hash=verify_hash)
    if problem:
        raise GraphFileError(f"{problem}; re-export the graph")
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
