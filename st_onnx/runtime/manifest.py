"""Reading a fused graph's manifest (the JSON beside it) and checking the graph's files against it: what a load
does before it runs a graph. json, hashlib and pathlib only (no torch, no onnx), below both the runtime's graph
lookup (``graphs``) and the exporter, which writes manifests (``st_onnx.export.manifest``) and checks the graph's
protobuf besides (``check_graph``).

The manifest keys a load relies on: ``format``, ``fingerprint``, ``precision``, ``inputs``, ``outputs``,
``embedding_dimension``, ``graph_bytes``, ``graph_sha256`` and, for a graph over 2 GB, ``external_data`` (its
weights file).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .. import layout
from ..errors import GraphFileError, ModelFolderError, NewerGraphError

FORMAT = "st-onnx-fused/1"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


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


def read_manifest(graph: str | os.PathLike, *, required: bool = False) -> dict[str, Any]:
    """The manifest beside a graph: {} when there is none (a graph st-onnx did not export, named by ``file_name``;
    the callers decide), or with ``required`` a GraphFileError then, and for a manifest of another format.
    GraphFileError when it is not a JSON object; NewerGraphError when a newer st-onnx wrote it."""
    graph = Path(graph)
    path = layout.manifest_path(graph)
    again = f"re-export the graph (`{layout.export_command(layout.graph_precision(graph))}`)"
    try:
        manifest = layout.read_json_if_exists(path)
    except ModelFolderError as e:  # not JSON: cut short by a crash, or edited
        raise GraphFileError(f"{e}; {again}") from e
    if manifest is None:
        if required:
            raise GraphFileError(f"the graph {graph} has no manifest {path.name} beside it; {again}")
        return {}
    if not isinstance(manifest, dict):
        raise GraphFileError(f"the manifest {path} is not a JSON object; {again}")
    refuse_newer(graph, manifest)
    if required and manifest.get("format") != FORMAT:
        raise GraphFileError(f"the manifest {path} has format {manifest.get('format')!r}; allowed: {FORMAT!r}. "
                             f"{again[0].upper()}{again[1:]}")
    return manifest


def graph_problem(graph: Path, manifest: dict[str, Any], *, verify_hash: bool = True) -> str | None:
    """Why ``graph`` is not the file its manifest describes (format, size, then sha256 unless ``verify_hash`` is
    False, and its data file's: ``data_problem``), or None when it is: a graph copied over from another model, cut
    short or corrupted must not run as this model's. A manifest that lacks size and sha256 (edited by hand)
    describes no file: a problem too. No manifest at all is no problem here (the callers decide)."""
    if manifest and manifest.get("format") != FORMAT:
        return f"the manifest of {graph} has format {manifest.get('format')!r}, where st-onnx writes {FORMAT!r}"
    size, digest = manifest.get("graph_bytes"), manifest.get("graph_sha256")
    if manifest and not (isinstance(size, int) and isinstance(digest, str)):
        return f"the manifest of {graph} does not record the graph's size and sha256 (graph_bytes, graph_sha256)"
    if isinstance(size, int) and graph.stat().st_size != size:
        return f"{graph} holds {graph.stat().st_size} bytes where its manifest says {size}"
    if verify_hash and isinstance(digest, str) and file_sha256(graph) != digest:
        return f"{graph} is not the graph its manifest describes (sha256 differs)"
    return data_problem(graph, manifest, verify_hash=verify_hash)
