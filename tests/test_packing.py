"""Packing mode (export/packing.py): the fp16 graph rewritten to run real tokens only, checked before it is written.

The packed operators have CUDA kernels only, so this file checks the rewrite's structure and the refusals on the
CPU; tests/test_gpu.py runs the packed graph against the padded one on a GPU.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import onnx
import pytest
from onnx import helper

from st_onnx import SentenceTransformer, layout
from st_onnx.errors import GraphFileError, InvalidInputError
from st_onnx.export import export_model_folder, read_manifest
from st_onnx.export.packing import check_packed, pack_graph
from st_onnx.runtime.providers import cuda_usable


@pytest.fixture(scope="module")
def fp16_folder(tiny_model_dir, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("packing") / "model"
    shutil.copytree(tiny_model_dir, folder)
    export_model_folder(folder, "fp16")
    return folder


@pytest.fixture(scope="module")
def packed(fp16_folder):
    return pack_graph(layout.fused_graph_path(fp16_folder, "fp16"))


def ops(graph_path):
    return Counter(n.op_type for n in onnx.load(str(graph_path)).graph.node)


def test_packed_graph_replaces_every_attention_and_keeps_the_interface(fp16_folder, packed):
    src = layout.fused_graph_path(fp16_folder, "fp16")
    assert packed == src.with_name("fp16-packed.onnx")
    before, after = ops(src), ops(packed)
    assert before["Attention"] == 2 and after["Attention"] == 0
    assert after["PackedAttention"] == 2 and after["RemovePadding"] == 1 and after["RestorePadding"] == 1
    a, b = onnx.load(str(src)).graph, onnx.load(str(packed)).graph
    assert [i.name for i in a.input] == [i.name for i in b.input]
    assert [o.name for o in a.output] == [o.name for o in b.output]


@pytest.mark.skipif(cuda_usable(), reason="on a GPU the parity is checked: tests/test_gpu.py")
def test_packed_manifest_names_its_source_and_says_parity_was_not_checked_without_cuda(fp16_folder, packed):
    source = read_manifest(layout.fused_graph_path(fp16_folder, "fp16"))
    manifest = read_manifest(packed)
    assert manifest["packing"]["source_sha256"] == source["graph_sha256"] != manifest["graph_sha256"]
    assert manifest["packing"]["attention_nodes"] == 2
    assert manifest["fingerprint"] == source["fingerprint"] and manifest["precision"] == "fp16"
    assert manifest["parity"] == {"checked": False,
                                  "reason": "packed graphs run on CUDA only and no usable CUDA GPU is here"}


def test_cpu_layout_graph_cannot_be_packed(tiny_model_copy):
    graph = export_model_folder(tiny_model_copy, "fp32")
    with pytest.raises(GraphFileError, match="no fused Attention.*'fp16'"):
        pack_graph(graph)
    assert not layout.packed_graph_path(graph).exists()


def test_an_onnxruntime_that_fuses_no_attention_into_fp16_graphs_is_named(tiny_model_copy, monkeypatch, caplog):
    """Before 1.31, ONNX Runtime's optimizer fuses no attention into fp16 graphs (1.20.1, 1.26 and 1.30 measured),
    and the CPU package's floor is 1.20.1: the export warns, and packing's refusal names the version the graph was
    exported with (found by a review of the CPU package)."""
    import logging

    import onnxruntime

    from st_onnx.export import optimize

    real = optimize.fuse
    # what 1.30 fuses into a graph for CUDA: no Attention
    monkeypatch.setattr(optimize, "fuse", lambda src, dst, heads, hidden, target, **kw: real(src, dst, heads, hidden,
                                                                                            "cpu", **kw))
    monkeypatch.setattr(onnxruntime, "__version__", "1.30.0")
    with caplog.at_level(logging.WARNING, logger="st_onnx"):
        graph = export_model_folder(tiny_model_copy, "fp16")
    assert any("onnxruntime 1.30.0 fuses no Attention into fp16 graphs (1.31 and newer do)" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(GraphFileError, match=r"exported with onnxruntime 1\.30\.0.*onnxruntime-gpu 1\.31 or newer"):
        pack_graph(graph)
    assert [optimize.fuses_cuda_attention(v) for v in ("1.20.1", "1.30.0", "1.31.1", "1.32.0", "2.0")] == \
        [False, False, True, True, True]


def test_a_packed_graph_is_not_packed_twice(packed, tmp_path):
    with pytest.raises(InvalidInputError, match="already a packed graph"):
        pack_graph(packed, tmp_path / "again.onnx")


def _packed_model(packed):
    return onnx.load(str(packed))


def test_check_refuses_a_non_row_wise_operator_on_packed_tokens(packed):
    model = _packed_model(packed)
    remove = next(n for n in model.graph.node if n.op_type == "RemovePadding")
    consumer = next(n for n in model.graph.node if remove.output[0] in n.input)
    shape = helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, [2])
    model.graph.input.append(shape)
    reshape = helper.make_node("Reshape", [remove.output[0], "shape"], ["reshaped"], name="bad_reshape")
    model.graph.node.append(reshape)
    consumer.input[list(consumer.input).index(remove.output[0])] = "reshaped"
    with pytest.raises(GraphFileError, match="packed region holds a Reshape node"):
        check_packed(model, 2)


def test_check_refuses_an_output_of_packed_rows(packed):
    model = _packed_model(packed)
    restore = next(n for n in model.graph.node if n.op_type == "RestorePadding")
    model.graph.output.append(helper.make_tensor_value_info(restore.input[0], onnx.TensorProto.FLOAT16, None))
    with pytest.raises(GraphFileError, match="would hold packed rows"):
        check_packed(model, 2)


def test_check_refuses_token_counts_not_taken_from_the_mask(packed):
    model = _packed_model(packed)
    remove = next(n for n in model.graph.node if n.op_type == "RemovePadding")
    model.graph.input.append(helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, ["batch"]))
    remove.input[1] = "lengths"
    with pytest.raises(GraphFileError, match="from graph input 'lengths'"):
        check_packed(model, 2)


def test_check_counts_the_packed_operators(packed):
    assert check_packed(_packed_model(packed), 2)["PackedAttention"] == 2
    with pytest.raises(GraphFileError, match="operator counts"):
        check_packed(_packed_model(packed), 3)


def test_packing_options_are_validated(fp16_folder):
    with pytest.raises(InvalidInputError, match="needs device 'cuda' and precision 'fp16'.*'cpu'"):
        SentenceTransformer(str(fp16_folder), backend="onnx", device="cpu", onnx_options={"packing": True})
    with pytest.raises(InvalidInputError, match="must be True or False; got 'yes'"):
        SentenceTransformer(str(fp16_folder), backend="onnx", device="cpu", onnx_options={"packing": "yes"})
    with pytest.raises(InvalidInputError, match="both 'file_name' and 'packing'"):
        SentenceTransformer(str(fp16_folder), backend="onnx", onnx_options={"packing": True, "file_name": "x.onnx"})


def test_a_packed_graph_named_by_file_name_is_refused_on_the_cpu(fp16_folder, packed):
    with pytest.raises(InvalidInputError, match="packing-mode graph, which runs on CUDA only"):
        SentenceTransformer(str(fp16_folder), backend="onnx", device="cpu", onnx_options={"file_name": str(packed)})


def test_find_packed_reuses_a_graph_made_from_the_same_bytes_and_repacks_otherwise(fp16_folder, packed):
    from st_onnx.runtime.graphs import GraphChoice, find_packed, graph_problem

    src = layout.fused_graph_path(fp16_folder, "fp16")
    choice = GraphChoice(src, read_manifest(src), exported=False)
    calls = []

    def packer(graph, target, folder):
        calls.append((graph, target, folder))
        return pack_graph(graph, target, model_folder=folder)

    found = find_packed(fp16_folder, choice, packer=packer)
    assert found.path == packed and not found.exported and calls == []
    manifest_file = layout.manifest_path(packed)
    manifest = json.loads(manifest_file.read_text())
    manifest["packing"]["source_sha256"] = "sha256:other"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(GraphFileError, match=r"\['export'\] is 'never'"):
        find_packed(fp16_folder, choice, export="never", packer=packer)
    again = find_packed(fp16_folder, choice, packer=packer)
    assert again.exported and calls == [(src, packed, fp16_folder)]
    assert read_manifest(packed)["packing"]["source_sha256"] == choice.manifest["graph_sha256"]
    with open(packed, "r+b") as f:  # same size, other bytes: a corrupted copy is packed again, never run
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
        f.seek(-8, os.SEEK_END)
        f.write(bytes(255 - b for b in tail))
    with pytest.raises(GraphFileError, match="not the graph its manifest describes"):
        find_packed(fp16_folder, choice, export="never", packer=packer)
    repaired = find_packed(fp16_folder, choice, packer=packer)
    assert repaired.exported and len(calls) == 2 and graph_problem(packed, read_manifest(packed)) is None


def test_the_prompt_length_input_survives_packing(tiny_model_dir, tmp_path):
    """A model pooling without the prompt's tokens: the packed graph keeps the optional input and its default."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "model"
    reference = st.SentenceTransformer(str(tiny_model_dir), device="cpu")
    reference.set_pooling_include_prompt(False)
    reference.save(str(folder))
    packed_path = pack_graph(export_model_folder(folder, "fp16"))
    graph = onnx.load(str(packed_path)).graph
    assert [i.name for i in graph.input][-1] == "prompt_length"
    assert [i.name for i in graph.initializer if i.name == "prompt_length"] == ["prompt_length"]
    assert ops(packed_path)["PackedAttention"] == 2
