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

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import folders, layout

# protobuf's limit on one serialized message (2 GB - 1); read at call time, so that tests can lower it
MAX_PROTO_BYTES = 2**31 - 1
MS_DOMAIN = "com.microsoft"


def save_graph(model: Any, dst: str | os.PathLike, *, external: bool = False) -> Path:
    """Write the ModelProto ``model`` to ``dst``: one file when it fits in a protobuf, else (or with ``external``,
    for the exporter's intermediate graphs) with its weights in ``layout.graph_data_path(dst)`` (a data file left
    there by an earlier graph is removed either way). With a data file, ``model`` is left without its weights.

    Memory: neither path serializes all the weights at once. protobuf's Python runtime (upb) sizes and serializes
    a message into a buffer and then copies it into a Python bytes object, so ``onnx.save_model`` of a graph that
    fits held two extra copies of its weights (+1.4 GB for a 0.74 GB graph, measured), and ``ByteSize()`` one more.
    """
    import onnx

    dst = Path(dst)
    if any(n.domain == MS_DOMAIN for n in model.graph.node) and all(o.domain != MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))  # ORT's fused ops; its own save adds it too
    data = layout.graph_data_path(dst)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not external and _fits(model):
        _write_in_pieces(model, dst)
    else:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        folders.give_usual_mode(data)  # onnx creates it 0600: readable by the owner only, unlike the graph
    return dst


def _fits(model: Any) -> bool:
    return _serialized_size(model) <= MAX_PROTO_BYTES


# bytes per element of the tensor types whose raw_data is a plain array (TensorProto.DataType)
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _serialized_size(model: Any) -> int:
    """An upper bound (by a few bytes per tensor) of ``model.ByteSize()``, without serializing the weights: the
    structure's size plus, per initializer, its header and its raw bytes counted from its dims."""
    size = without_initializers(model).ByteSize() + 8
    for tensor in model.graph.initializer:
        if tensor.data_type in _ITEM_BYTES and tensor.HasField("raw_data"):
            header = _copy_fields(tensor, type(tensor)(), skip="raw_data").ByteSize()
            size += header + 6 + math.prod(tensor.dims) * _ITEM_BYTES[tensor.data_type]
        else:
            size += tensor.ByteSize()
        size += 6  # the initializer's field tag and length
    return size


def _write_in_pieces(model: Any, dst: Path) -> None:
    """Write ``model`` as its structure followed by one ModelProto piece per initializer. protobuf parses
    concatenated messages as one, merging repeated fields in order, so the file reads back as ``model`` (onnx,
    ONNX Runtime), while at most one initializer is serialized at a time."""
    import onnx

    with open(dst, "wb") as f:
        f.write(without_initializers(model).SerializeToString())
        for tensor in model.graph.initializer:
            piece = onnx.ModelProto()
            piece.graph.initializer.add().CopyFrom(tensor)
            f.write(piece.SerializeToString())


def without_initializers(model: Any) -> Any:
    out = _copy_fields(model, type(model)(), skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _repeated(field: Any) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; older ones only have ``label``
    return bool(is_repeated) if is_repeated is not None else field.label == field.LABEL_REPEATED


def _copy_fields(src: Any, dst: Any, skip: str) -> Any:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if _repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)
    return dst


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
