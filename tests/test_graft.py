"""graft_pooling: a transformer-only graph + the folder's Pooling/Dense/Normalize, built with onnx alone."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from helpers import make_tiny_model
from st_onnx.errors import GraphFileError
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
    assert graph_is_fresh(folder, out)


def test_graft_uses_no_torch(tmp_path):
    folder = make_tiny_model(tmp_path / "model", dense=8)
    source = transformer_only_graph(load_stack(folder), tmp_path / "model.onnx")
    code = (
        "import sys; from st_onnx.export import graft_pooling; "
        f"graft_pooling({str(source)!r}, {str(folder)!r}, {str(tmp_path / 'g.onnx')!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    compare_with_torch(tmp_path / "g.onnx", load_stack(folder))


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
