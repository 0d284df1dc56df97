"""Writing and moving graph files, for graphs that fit in one protobuf and for those that do not.

protobuf refuses to serialize a message over 2 GB, and an fp32 graph of a model over ~530M parameters (bge-m3,
multilingual-e5-large: XLM-R large, 560M) is larger. Such a graph keeps its weights in one external-data file
beside it, named after it (``fp32.onnx`` -> ``fp32.onnx.data``, ``layout.graph_data_path``), which ONNX Runtime
reads by itself when it loads the graph from its path. Graphs that fit stay one file, as before.

The name of the data file is written inside the graph, so a graph with one cannot just be renamed:
``place_graph`` renames the data file and rewrites the graph's pointers to it. onnx only (no torch), like the
other graph passes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import layout

# protobuf's limit on one serialized message (2 GB - 1); read at call time, so that tests can lower it
MAX_PROTO_BYTES = 2**31 - 1
MS_DOMAIN = "com.microsoft"


def save_graph(model: Any, dst: str | os.PathLike) -> Path:
    """Write the ModelProto ``model`` to ``dst``: one file when it fits in a protobuf, else with its weights in
    ``layout.graph_data_path(dst)`` (a data file left there by an earlier graph is removed either way)."""
    import onnx

    dst = Path(dst)
    if any(n.domain == MS_DOMAIN for n in model.graph.node) and all(o.domain != MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))  # ORT's fused ops; its own save adds it too
    data = layout.graph_data_path(dst)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if _fits(model):
        onnx.save_model(model, str(dst))
    else:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        layout.give_usual_mode(data)  # onnx creates it 0600: readable by the owner only, unlike the graph
    return dst


def _fits(model: Any) -> bool:
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize() <= MAX_PROTO_BYTES
    except EncodeError:  # protobuf cannot even size a message over 2 GB
        return False


def place_graph(src: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the graph ``src`` (and its data file, if it has one) to ``target``, replacing the graph there and any
    data file of it. Renames on one file system; a graph with a data file that changes its name is written again
    without its weights, because the data file's name is recorded inside the graph."""
    src, target = Path(src), Path(target)
    data = layout.graph_data_path(src)
    if data.is_file() and src.name != target.name:
        import onnx

        staging = Path(tempfile.mkdtemp(prefix=".placing-", dir=src.parent))
        try:
            graph = onnx.load(str(src), load_external_data=False)  # the structure only: the weights stay put
            if _point_to(graph, data.name, layout.graph_data_path(target).name):
                onnx.save_model(graph, str(staging / target.name))
                os.replace(data, staging / layout.graph_data_path(target).name)
            else:  # weights in other files than its own data file: gathered into one
                save_graph(onnx.load(str(src)), staging / target.name)
            place_graph(staging / target.name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        remove_graph(src)
        return target
    if data.is_file():
        os.replace(data, layout.graph_data_path(target))
    else:
        layout.graph_data_path(target).unlink(missing_ok=True)
    os.replace(src, target)
    return target


def _point_to(model: Any, old: str, new: str) -> bool:
    """Make every external tensor of ``model`` that lives in the file ``old`` name the file ``new`` instead; False
    (nothing changed) when some live in another file."""
    import onnx

    tensors = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    entries = [e for t in tensors for e in t.external_data if e.key == "location"]
    if any(e.value != old for e in entries):
        return False
    for entry in entries:
        entry.value = new
    return True


def _tensors(graph: Any) -> Any:
    """The graph's initializers and the tensors in its nodes' attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def remove_graph(path: str | os.PathLike) -> None:
    """Remove a graph file and its data file (either may be missing)."""
    Path(path).unlink(missing_ok=True)
    layout.graph_data_path(path).unlink(missing_ok=True)
