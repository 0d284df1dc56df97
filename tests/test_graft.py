"""graft_pooling: a transformer-only graph + the folder's Pooling/Dense/Normalize, built with onnx alone."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from helpers import make_tiny_model
from st_onnx import SentenceTransformer
from st_onnx.errors import BackendError, GraphFileError, ParityError, StaleGraphError
from st_onnx.export import check_graph, graft_pooling, graph_is_fresh
from st_onnx.modules import load_stack

ort = pytest.importorskip("onnxruntime")

TEXTS = ["hi", "", "the quick brown fox jumps over the lazy dog " * 4, "a man is playing music", "the cat sleeps"]
MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ("lasttoken", "mean", "max")]


def transformer_only_graph(stack, path, output_name="last_hidden_state"):
    """What sentence-transformers/optimum ship as onnx/model.onnx: the bare HF model, token embeddings out."""
    model = stack.transformer.auto_model.eval()

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    features = stack.transformer.tokenize(["a sample text", "hi"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Bare().eval(), tuple(features[n] for n in names), str(path), input_names=names,
                          output_names=[output_name], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "b", 1: "s"} for n in names + [output_name]})
    return path


def compare_with_torch(graph, stack, texts=TEXTS):
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    features = stack.transformer.tokenize(texts)
    feed = {i.name: features[i.name].numpy() for i in sess.get_inputs()}
    sentence, tokens = sess.run(["sentence_embedding", "token_embeddings"], feed)
    with torch.no_grad():
        ref = stack(dict(features))
    np.testing.assert_allclose(sentence, ref["sentence_embedding"].numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(tokens, ref["token_embeddings"].numpy(), atol=2e-5)
    return sentence


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m if isinstance(m, str) else "+".join(m))
def test_graft_matches_torch_for_every_pooling_mode(tmp_path, mode):
    folder = make_tiny_model(tmp_path / "model", pooling=mode, normalize=False)
    stack = load_stack(folder)
    source = transformer_only_graph(stack, tmp_path / "model.onnx")
    out = graft_pooling(source, folder, tmp_path / "grafted.onnx")
    sentence = compare_with_torch(out, stack)
    assert sentence.shape[1] == 32 * (len(mode) if isinstance(mode, tuple) else 1)


@pytest.mark.parametrize("activation", [torch.nn.Tanh(), torch.nn.GELU(), torch.nn.Identity()], ids=str)
def test_graft_dense_and_normalize(tmp_path, activation):
    folder = make_tiny_model(tmp_path / "model", dense=12, normalize=True, activation=activation)
    stack = load_stack(folder)
    source = transformer_only_graph(stack, tmp_path / "model.onnx", output_name="token_embeddings")
    out = graft_pooling(source, folder, tmp_path / "grafted.onnx")
    sentence = compare_with_torch(out, stack)
    assert sentence.shape[1] == 12
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=1), 1.0, atol=1e-5)
    manifest = check_graph(out)
    assert manifest["embedding_dimension"] == 12 and manifest["exporter"].startswith("graft")
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["parity"]["checked"] and manifest["parity"]["passed"]  # checked against torch: fresh
    assert graph_is_fresh(folder, out)


def test_graft_uses_no_torch_and_vouches_for_nothing_unchecked(tmp_path):
    folder = make_tiny_model(tmp_path / "model", dense=8)
    source = transformer_only_graph(load_stack(folder), tmp_path / "model.onnx")
    code = (
        "import sys; from st_onnx.export import graft_pooling; "
        f"graft_pooling({str(source)!r}, {str(folder)!r}, {str(tmp_path / 'g.onnx')!r}, verify=False); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    compare_with_torch(tmp_path / "g.onnx", load_stack(folder))
    manifest = check_graph(tmp_path / "g.onnx")
    assert "fingerprint" not in manifest and not manifest["parity"]["checked"]
    assert not graph_is_fresh(folder, tmp_path / "g.onnx")  # not taken for a graph of these weights
    with pytest.raises(BackendError, match="holds no Transformer weights; pass verify=False"):
        graft_pooling(source, tmp_path / "nowhere", tmp_path / "h.onnx", verify=True)


def test_a_graft_of_another_models_transformer_is_refused(tmp_path):
    """A stale onnx/model.onnx (exported from other weights) was grafted, labelled fresh and, with
    export='never', run as this model's (cosine -0.3 to PyTorch)."""
    old = make_tiny_model(tmp_path / "old", seed=0)
    new = make_tiny_model(tmp_path / "new", seed=1)
    (new / "onnx").mkdir()
    stale = transformer_only_graph(load_stack(old), new / "onnx" / "model.onnx")
    target = new / "onnx" / "st_onnx" / "fp32.onnx"
    with pytest.raises(ParityError, match="from other weights.*parity FAILED"):
        graft_pooling(stale, new, target)
    assert not target.exists() and not (target.parent / "fp32.json").exists()
    graft_pooling(stale, new, target, verify=False)  # unchecked: never run in place of these weights' graph
    with pytest.raises(StaleGraphError):
        SentenceTransformer(str(new), backend="onnx", device="cpu", onnx_options={"export": "never"})


def test_a_quantized_or_fp16_transformer_graph_is_refused(tmp_path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = make_tiny_model(tmp_path / "model")
    fp32 = transformer_only_graph(load_stack(folder), tmp_path / "model.onnx")
    qint8 = tmp_path / "model_qint8_avx512.onnx"
    quantize_dynamic(fp32, qint8, weight_type=QuantType.QInt8)
    with pytest.raises(GraphFileError, match=r"quantized graph \(ops \[.*MatMulInteger"):
        graft_pooling(qint8, folder, tmp_path / "q.onnx")
    half = onnx.load(str(fp32))  # fp16 weights inside, fp32 at the edges (optimum's O4 with keep_io_types)
    weight = next(t for t in half.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight).astype(np.float16), weight.name))
    onnx.save(half, str(tmp_path / "half.onnx"))
    with pytest.raises(GraphFileError, match="keeps float16 weights"):
        graft_pooling(tmp_path / "half.onnx", folder, tmp_path / "h.onnx")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "h.onnx").exists()


def test_graft_refuses_graph_without_token_output(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["attention_mask"], ["logits"])], "g",
        [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bad.onnx")
    folder = make_tiny_model(tmp_path / "model")
    with pytest.raises(GraphFileError, match="last_hidden_state"):
        graft_pooling(tmp_path / "bad.onnx", folder, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_transformer_only_graph_named_by_file_name_is_refused_at_load(tmp_path):
    """sentence-transformers' model_kwargs={'file_name': 'onnx/model.onnx'} habit: the graph loaded, and the first
    encode failed deep in ONNX Runtime ('Invalid output name: sentence_embedding')."""
    folder = make_tiny_model(tmp_path / "model")
    (folder / "onnx").mkdir()
    transformer_only_graph(load_stack(folder), folder / "onnx" / "model.onnx")
    with pytest.raises(GraphFileError, match=r"outputs \['last_hidden_state'\]: not a fused graph.*graft_pooling"):
        SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"file_name": "onnx/model.onnx"})
    grafted = graft_pooling(folder / "onnx" / "model.onnx", folder, folder / "onnx" / "grafted.onnx")
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"file_name": str(grafted)})
    compare_with_torch(grafted, load_stack(folder))
    assert model.encode(TEXTS).shape == (len(TEXTS), 32)


def test_same_weights_loaded_again_pass_for_a_grafted_graph_and_changed_ones_are_refused(tmp_path):
    """A graft's manifest records no module digest: the modules' own, as loaded, stands for what the graph computes
    (found by the review of the in-memory check: weights loaded again unchanged were refused)."""
    from st_onnx import layout

    folder = make_tiny_model(tmp_path / "m")
    graft_pooling(transformer_only_graph(load_stack(folder), tmp_path / "t.onnx"), folder,
                  layout.fused_graph_path(folder, "fp32"))
    model = SentenceTransformer(str(folder), backend="onnx", device="cpu", onnx_options={"export": "never"})
    before = model.encode("a b")
    weights = model[0].auto_model.state_dict()
    model[0].auto_model.load_state_dict({k: v.clone() for k, v in weights.items()})
    np.testing.assert_array_equal(model.encode("a b"), before)
    with torch.no_grad():
        weights["embeddings.word_embeddings.weight"][3] += 1.0
    with pytest.raises(BackendError, match="changed in memory"):
        model.encode("a b")
