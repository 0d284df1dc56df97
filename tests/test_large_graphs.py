"""Graphs over protobuf's 2 GB limit (an fp32 graph of a model over ~530M parameters) keep their weights in a
data file beside them. The tests lower the limit (``graph_files.MAX_PROTO_BYTES``) so that the tiny model's
graphs take that path; real 560M- and 596M-parameter shapes are measured by benchmarks/bench_export.py (RESULTS.md), too slow for
the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_model

from st_onnx import SentenceTransformer, layout
from st_onnx.errors import GraphFileError
from st_onnx.export import check_graph, export_model_folder, graph_files, read_manifest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["hi", "the quick brown fox jumps over the lazy dog", "", "a man is playing music " * 5]
SMALL = 4096  # bytes: every tiny graph is "too large" under this limit


def encode(folder, precision="fp32", export="never"):
    model = SentenceTransformer(str(folder), backend="onnx", onnx_options={"precision": precision, "export": export})
    return model.encode(TEXTS)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(folder exported as usual, copy exported with the data file) of a tiny model with Dense + Normalize."""
    tmp = tmp_path_factory.mktemp("large")
    one = make_tiny_model(tmp / "one", dense=16)
    two = tmp / "two"
    shutil.copytree(one, two)
    for precision in ("fp32", "int8"):
        export_model_folder(one, precision)
        graph_files.MAX_PROTO_BYTES = SMALL
        try:
            export_model_folder(two, precision)
        finally:
            graph_files.MAX_PROTO_BYTES = 2**31 - 1
    return one, two


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_graph_over_the_limit_keeps_its_weights_beside_it_and_embeds_the_same(pair, precision):
    one, two = pair
    graph = layout.fused_graph_path(two, precision)
    data = layout.graph_data_path(graph)
    whole = layout.fused_graph_path(one, precision)
    assert data.name == f"{precision}.onnx.data" and graph.stat().st_size < whole.stat().st_size
    assert graph.stat().st_size + data.stat().st_size > whole.stat().st_size
    assert not layout.graph_data_path(whole).exists()
    assert data.stat().st_mode == graph.stat().st_mode  # readable as the graph is (onnx writes it 0600)
    record = read_manifest(graph)["external_data"]
    assert record["file"] == data.name and record["bytes"] == data.stat().st_size
    assert "external_data" not in read_manifest(layout.fused_graph_path(one, precision))
    check_graph(graph)
    np.testing.assert_array_equal(encode(two, precision), encode(one, precision))


def test_a_missing_or_damaged_data_file_is_caught(pair, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(pair[1], folder)
    graph = layout.fused_graph_path(folder, "fp32")
    data = layout.graph_data_path(graph)
    encode(folder)  # records the stat of the files checked
    original = data.read_bytes()
    data.write_bytes(original[:-4] + bytes(b ^ 0xFF for b in original[-4:]))  # same size, other weights
    with pytest.raises(GraphFileError, match="fp32.onnx.data.*sha256"):
        check_graph(graph)
    with pytest.raises(GraphFileError, match="sha256"):
        encode(folder)  # the stat record no longer vouches: hashed again
    data.write_bytes(original[:100])
    with pytest.raises(GraphFileError, match="holds 100 bytes"):
        encode(folder)
    data.unlink()
    with pytest.raises(GraphFileError, match="fp32.onnx.data of the graph .*fp32.onnx is missing"):
        check_graph(graph)
    np.testing.assert_array_equal(encode(folder, export="auto"), encode(pair[0]))  # exported again, one file


def test_placing_a_graph_under_a_new_name_moves_its_weights_without_loading_them(pair, tmp_path, monkeypatch):
    """The exporter's fp32 pass writes fused.onnx, a bundle renames fp32.onnx to model.onnx: for a 2 GB graph,
    the data file is renamed and the graph's pointers rewritten; the weights are not loaded and written again."""
    work = tmp_path / "work"
    shutil.copytree(pair[1] / layout.FUSED_DIR, work)
    monkeypatch.setattr(graph_files, "save_graph", lambda *a: pytest.fail("the weights were written again"))
    target = graph_files.place_graph(work / "fp32.onnx", tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.glob("*.onnx*")) == ["out.onnx", "out.onnx.data"]
    assert not (work / "fp32.onnx").exists() and not (work / "fp32.onnx.data").exists()
    import onnxruntime as ort

    ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])  # the pointers name out.onnx.data


def test_the_cli_names_the_data_file(pair, tmp_path, monkeypatch, capsys):
    from st_onnx.cli import main

    monkeypatch.setattr(graph_files, "MAX_PROTO_BYTES", SMALL)
    assert main(["export", str(pair[0]), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "weights: fp32.onnx.data (" in printed and "keep the two files together" in printed


def test_export_again_as_one_file_drops_the_data_file(pair, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(pair[1], folder)
    graph = export_model_folder(folder, "fp32")
    assert not layout.graph_data_path(graph).exists() and "external_data" not in read_manifest(graph)
    np.testing.assert_array_equal(encode(folder), encode(pair[0]))


def test_save_and_export_copies_carry_the_data_file(pair, tmp_path):
    model = SentenceTransformer(str(pair[1]), backend="onnx", onnx_options={"export": "never"})
    model.save(str(tmp_path / "saved"))
    copy = export_model_folder(pair[1], "int8", out_dir=tmp_path / "copy")  # keeps the fp32 graph of these weights
    for folder in (tmp_path / "saved", copy.parents[2]):
        assert layout.graph_data_path(layout.fused_graph_path(folder, "fp32")).is_file()
        np.testing.assert_array_equal(encode(folder), encode(pair[0]))


def test_a_bundle_of_a_graph_over_the_limit_runs_on_plain_onnx_runtime(pair, tmp_path):
    bundle = tmp_path / "bundle"
    code = (
        "import runpy, sys; from st_onnx.export import graph_files; "
        f"graph_files.MAX_PROTO_BYTES = {SMALL}; "
        f"sys.argv = ['make_bundle.py', {str(pair[1])!r}, {str(bundle)!r}]; "
        f"runpy.run_path({str(ROOT / 'export' / 'make_bundle.py')!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in bundle.iterdir()) == [
        "bundle.json", "manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["external_data"]["file"] == "model.onnx.data"
    assert manifest["external_data"]["bytes"] == (bundle / "model.onnx.data").stat().st_size
    assert manifest["graph_bytes"] == (bundle / "model.onnx").stat().st_size
    sys.path.insert(0, str(ROOT / "export"))
    try:
        from embed_example import BundleEncoder
    finally:
        sys.path.remove(str(ROOT / "export"))
    np.testing.assert_allclose(BundleEncoder(bundle).encode(TEXTS), encode(pair[0]), atol=1e-6)


def test_graft_reads_and_writes_graphs_over_the_limit(tmp_path, monkeypatch):
    """sentence-transformers ships a large model's onnx/model.onnx with its weights in model.onnx_data."""
    import onnx
    from test_graft import compare_with_torch, transformer_only_graph

    from st_onnx.export import graft_pooling
    from st_onnx.modules import load_stack

    folder = make_tiny_model(tmp_path / "model", dense=8)
    stack = load_stack(folder)
    source = transformer_only_graph(stack, tmp_path / "bare.onnx")
    (tmp_path / "st").mkdir()
    onnx.save_model(onnx.load(str(source)), str(tmp_path / "st" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    monkeypatch.setattr(graph_files, "MAX_PROTO_BYTES", SMALL)
    out = graft_pooling(tmp_path / "st" / "model.onnx", folder, tmp_path / "out" / "fp32.onnx")
    assert sorted(os.listdir(out.parent)) == ["fp32.json", "fp32.onnx", "fp32.onnx.data"]
    assert read_manifest(out)["external_data"]["file"] == "fp32.onnx.data"
    compare_with_torch(out, stack)


def test_a_packed_graph_of_older_weights_is_packed_again(tmp_path, monkeypatch):
    """Over the limit, the fp16 graph file is the structure alone: other weights of the same shapes leave its
    sha256 as it was, so the packed graph must be tied to the data file's too."""
    from safetensors.torch import load_file, save_file

    from st_onnx.export.packing import pack_graph
    from st_onnx.runtime.graphs import find_graph, find_packed

    monkeypatch.setattr(graph_files, "MAX_PROTO_BYTES", SMALL)
    folder = make_tiny_model(tmp_path / "model")
    calls = []

    def packer(graph, target, model_folder):
        calls.append(graph)
        return pack_graph(graph, target, model_folder=model_folder)

    def exporter(model_folder, precision, out_dir):
        return export_model_folder(model_folder, precision, out_dir=out_dir)

    first = find_graph(folder, "fp16", exporter=exporter)
    packed = find_packed(folder, first, packer=packer)
    assert packed.exported and find_packed(folder, first, packer=packer).exported is False
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors = {k: (v + 0.01 if k.endswith("word_embeddings.weight") else v) for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    second = find_graph(folder, "fp16", exporter=exporter)
    assert second.exported and second.manifest["graph_sha256"] == first.manifest["graph_sha256"]
    assert second.manifest["external_data"]["sha256"] != first.manifest["external_data"]["sha256"]
    again = find_packed(folder, second, packer=packer)
    assert again.exported and len(calls) == 2


def test_a_data_file_linked_from_outside_the_folder_is_refused_and_replaced(pair, tmp_path):
    """ONNX Runtime will not read weights from outside the graph's folder (git-annex, DVC, a linked copy)."""
    folder = tmp_path / "model"
    shutil.copytree(pair[1], folder)
    data = layout.graph_data_path(layout.fused_graph_path(folder, "fp32"))
    store = tmp_path / "store" / "blob"
    store.parent.mkdir()
    shutil.move(data, store)
    data.symlink_to(store)
    with pytest.raises(GraphFileError, match="links to .*blob, outside the graph's folder.*cp --remove-destination"):
        check_graph(layout.fused_graph_path(folder, "fp32"))
    with pytest.raises(GraphFileError, match="outside the graph's folder"):
        encode(folder)
    np.testing.assert_array_equal(encode(folder, export="auto"), encode(pair[0]))  # exported again, into the folder
    assert not data.is_symlink()
    inside = folder / "onnx" / "st_onnx" / "blobs"  # a link within the folder (a Hub cache snapshot's kind) is fine
    inside.mkdir()
    shutil.copytree(pair[1] / layout.FUSED_DIR, inside, dirs_exist_ok=True)
    for name in ("fp32.onnx", "fp32.json", "fp32.onnx.data"):
        (folder / layout.FUSED_DIR / name).unlink(missing_ok=True)
        (folder / layout.FUSED_DIR / name).symlink_to(inside / name)
    check_graph(layout.fused_graph_path(folder, "fp32"))
    np.testing.assert_array_equal(encode(folder, export="never"), encode(pair[0]))
    # the graph a link to another folder, its data file a file beside the link: ONNX Runtime reads it too
    graph = layout.fused_graph_path(folder, "fp32")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(inside / "fp32.onnx", elsewhere / "fp32.onnx")
    graph.unlink(), data.unlink()
    graph.symlink_to(elsewhere / "fp32.onnx")
    shutil.copy(inside / "fp32.onnx.data", data)
    check_graph(graph)
    np.testing.assert_array_equal(encode(folder, export="never"), encode(pair[0]))


def test_an_unoptimized_export_gathers_torchs_per_tensor_files(tmp_path, monkeypatch):
    """torch.onnx.export writes a model over 2 GB with one file per tensor beside the graph; optimize=False must
    not move the graph without them."""
    import onnx

    from st_onnx.export import exporter
    from st_onnx.modules import load_stack

    trace = exporter._trace

    def like_torch_over_2gb(stack, names, path, opset, prompt=False):
        out = trace(stack, names, path, opset, prompt)
        onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)
        return out

    monkeypatch.setattr(exporter, "_trace", like_torch_over_2gb)
    monkeypatch.setattr(graph_files, "MAX_PROTO_BYTES", SMALL)
    folder = make_tiny_model(tmp_path / "model")
    graph = exporter.export_fused_graph(load_stack(folder), tmp_path / "out", "fp32", fingerprint="sha256:x",
                                        optimize=False)
    assert sorted(os.listdir(graph.parent)) == ["fp32.json", "fp32.onnx", "fp32.onnx.data"]
    check_graph(graph)
    import onnxruntime as ort

    ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])  # every weight is where the graph says


def test_packs_and_grafts_killed_mid_way_are_cleaned_up_and_never_copied(pair, tmp_path):
    import time

    from st_onnx.export.packing import pack_graph

    folder = tmp_path / "model"
    shutil.copytree(pair[0], folder)
    fused = folder / layout.FUSED_DIR
    for name in (".pack-killed", ".graft-killed"):
        (fused / name).mkdir()
        (fused / name / "fp16-packed.onnx.data").write_bytes(b"partial")
        two_days_ago = time.time() - 2 * 24 * 3600
        os.utime(fused / name, (two_days_ago, two_days_ago))
    copy = export_model_folder(folder, "fp32", out_dir=tmp_path / "copy").parent
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []
    fp16 = export_model_folder(folder, "fp16")
    packed = pack_graph(fp16, tmp_path / "new" / "sub" / "fp16-packed.onnx")  # a folder that does not exist yet
    assert packed.is_file() and read_manifest(packed)["packing"]["attention_nodes"] == 2
    pack_graph(fp16)  # beside the graph: the pack killed two days ago goes
    assert not (fused / ".pack-killed").exists() and (fused / ".graft-killed").exists()


@pytest.fixture(scope="module")
def raw_graph(tmp_path_factory):
    """The tiny model's traced, unfused graph (what the fusion pass reads)."""
    from st_onnx.export.exporter import _trace
    from st_onnx.export.graph_module import graph_input_names
    from st_onnx.modules import load_stack

    tmp = tmp_path_factory.mktemp("raw")
    stack = load_stack(make_tiny_model(tmp / "model", dense=16)).eval()
    path, _ = _trace(stack, graph_input_names(stack), tmp / "raw.onnx", 17)
    return path


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_fusing_with_weightless_shape_inference_gives_the_same_graph(raw_graph, tmp_path, monkeypatch, target):
    """The fusion pass lets ORT's shape inference work on a copy without the weight matrices' data (each of its
    three runs copied every weight: the export's memory peak); the fused graph must be the very same."""
    import contextlib

    import onnx

    from st_onnx.export import optimize

    with optimize._swap_shape_inference():  # the swap takes (ORT's names as this code expects): not a no-op
        from shape_infer_helper import SymbolicShapeInferenceHelper

        assert "_swap_shape_inference" in SymbolicShapeInferenceHelper.__mro__[1]._preprocess.__qualname__
    light = optimize.fuse(raw_graph, tmp_path / "light.onnx", 4, 32, target)
    monkeypatch.setattr(optimize, "_swap_shape_inference", contextlib.nullcontext)
    full = optimize.fuse(raw_graph, tmp_path / "full.onnx", 4, 32, target)
    assert light == full and light  # the same fusions took, some did
    a, b = onnx.load(str(tmp_path / "light.onnx")), onnx.load(str(tmp_path / "full.onnx"))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_a_graph_written_in_pieces_reads_back_as_one_and_its_size_is_bounded(raw_graph, tmp_path):
    """save_graph writes the structure, then one piece per weight (protobuf merges concatenated messages), never
    serializing every weight at once; the size that decides between one file and a data file is estimated from
    the tensors' dims, at or just above protobuf's own count."""
    import onnx

    model = onnx.load(str(raw_graph))
    exact = model.ByteSize()
    estimate = graph_files._serialized_size(model)
    assert exact <= estimate <= exact + 16 * (len(model.graph.initializer) + 1)
    graph_files.save_graph(model, tmp_path / "pieces.onnx")
    back = onnx.load(str(tmp_path / "pieces.onnx"))
    assert back.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)
    assert not layout.graph_data_path(tmp_path / "pieces.onnx").exists()
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "pieces.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding", "token_embeddings"]
