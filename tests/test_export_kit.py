"""The deployment kit (export/): make_bundle.py and embed_example.py, run as a user would, in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_tiny_model
from st_onnx.export import check_graph
from st_onnx.modules import load_stack

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "export"
TEXTS = ["hi", "  The quick brown fox jumps over the lazy dog  ", "", "a man " * 80, "the cat sleeps on the red car"]


def run(args, **kw):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kit")
    folder = make_tiny_model(tmp / "model", pooling="cls", dense=10)
    out = run([KIT / "make_bundle.py", folder, tmp / "bundle"])
    assert "PASSED" in out.stdout
    return folder, tmp / "bundle"


def test_bundle_files_and_tokenizer(bundle):
    folder, path = bundle
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "manifest.json", "model.onnx", "tokenizer.json"]
    info = json.loads((path / "bundle.json").read_text())
    assert info["max_seq_length"] == 64 and info["do_lower_case"] is False
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and info["embedding_dimension"] == 10
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.padding["length"] is None  # the source pads to 32 always; the bundle pads to the batch's longest
    assert tok.truncation["max_length"] == 64
    assert len(tok.encode_batch(["hi", "the cat"])[0].ids) == 4
    # the manifest still describes the graph bytes after the move into the bundle
    (path / "fp32.json").write_bytes((path / "manifest.json").read_bytes())
    try:
        (path / "fp32.onnx").symlink_to(path / "model.onnx")
        assert check_graph(path / "fp32.onnx")["embedding_dimension"] == 10
    finally:
        (path / "fp32.json").unlink()
        (path / "fp32.onnx").unlink()


def test_example_embeds_like_torch_without_torch(bundle, tmp_path):
    folder, path = bundle
    npy = tmp_path / "emb.npy"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['embed_example.py', {str(path)!r}, *{TEXTS!r}, '--out', {str(npy)!r}]\n"
        f"runpy.run_path({str(KIT / 'embed_example.py')!r}, run_name='__main__')\n"
        "assert 'torch' not in sys.modules and 'st_onnx' not in sys.modules, 'the example imported torch'\n"
    )
    run(["-c", code])
    got = np.load(npy)
    stack = load_stack(folder)
    features = stack.transformer.tokenize(TEXTS)
    with torch.no_grad():
        ref = stack(dict(features))["sentence_embedding"].numpy()
    assert got.shape == (len(TEXTS), 10)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bundle_refuses_missing_model_and_the_example_a_missing_bundle_in_one_line(tmp_path):
    calls = (("make_bundle.py", [tmp_path / "nope", tmp_path / "b"]), ("embed_example.py", [tmp_path / "b", "hi"]))
    for script, args in calls:
        out = subprocess.run([sys.executable, str(KIT / script), *map(str, args)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode != 0 and out.stderr.startswith("error: ") and str(args[0]) in out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "b").exists()


def test_bundle_never_overwrites_what_is_not_a_bundle(bundle, tmp_path):
    """The bundle replaces its folder: the model folder itself, a folder inside it, or a folder of other files
    is refused (and left as it was); an earlier bundle is replaced."""
    folder, _ = bundle
    before = sorted(p.name for p in folder.iterdir())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("mine")
    for target, message in ((folder, "overlap"), (folder / "bundle", "overlap"), (precious, "is not a bundle")):
        out = subprocess.run([sys.executable, str(KIT / "make_bundle.py"), str(folder), str(target)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and message in out.stderr, out.stderr[-500:]
    assert sorted(p.name for p in folder.iterdir()) == before and (precious / "data.txt").read_text() == "mine"


def test_an_earlier_bundle_keeps_what_the_user_put_there(bundle, tmp_path):
    """Made again over an earlier bundle, the bundle's files are new and the user's (a serve.py, a folder) stay;
    they were deleted."""
    import shutil

    folder, first = bundle
    again = tmp_path / "bundle"
    shutil.copytree(first, again)
    (again / "serve.py").write_text("print('serve')")
    (again / "deploy").mkdir()
    (again / "deploy" / "Dockerfile").write_text("FROM python")
    (again / "model.onnx.data").write_text("weights of an older graph over 2 GB")
    run([KIT / "make_bundle.py", folder, again])
    assert (again / "serve.py").read_text() == "print('serve')"
    assert (again / "deploy" / "Dockerfile").read_text() == "FROM python"
    assert not (again / "model.onnx.data").exists()  # the bundle's own: this graph has none
    assert (again / "model.onnx").read_bytes() != b"" and json.loads((again / "bundle.json").read_text())


def test_the_example_warns_when_an_fp16_bundle_would_run_on_the_cpu(tmp_path):
    """ONNX Runtime runs what CUDA cannot on the CPU without a word; an fp16 graph there is ~100x slower."""
    folder = make_tiny_model(tmp_path / "model")
    run([KIT / "make_bundle.py", folder, tmp_path / "fp16", "--precision", "fp16"])
    sys.path.insert(0, str(KIT))
    try:
        from embed_example import BundleEncoder
    finally:
        sys.path.remove(str(KIT))
    with pytest.warns(UserWarning, match="fp16 bundle runs on CPUExecutionProvider, about 100x slower"):
        encoder = BundleEncoder(tmp_path / "fp16")
    assert encoder.encode(["a text"]).shape == (1, 32)


def test_bundle_carries_the_prompts_and_the_example_applies_them(tmp_path):
    from st_onnx import SentenceTransformer

    folder = make_tiny_model(tmp_path / "model")
    model = SentenceTransformer(str(folder), device="cpu", prompts={"query": "the red ", "doc": "a "},
                                default_prompt_name="query", truncate_dim=6)  # a Matryoshka model's
    model.save(str(folder))
    run([KIT / "make_bundle.py", folder, tmp_path / "bundle"])
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["prompts"] == {"query": "the red ", "doc": "a ", "document": ""} and info["default_prompt_name"] == "query"
    assert info["pooling_include_prompt"] is True and info["truncate_dim"] == 6
    for extra, kwargs in (([], {}), (["--prompt-name", "doc"], {"prompt_name": "doc"})):
        npy = tmp_path / "emb.npy"
        run([KIT / "embed_example.py", tmp_path / "bundle", *TEXTS, *extra, "--out", npy])
        assert np.load(npy).shape == (len(TEXTS), 6)
        np.testing.assert_allclose(np.load(npy), model.encode(TEXTS, **kwargs), atol=1e-5)
    assert not np.allclose(model.encode(TEXTS), model.encode(TEXTS, prompt=""), atol=1e-3)  # the prompt mattered


def test_a_model_that_pools_without_the_prompt_deploys_with_prompt_length(tmp_path):
    """INSTRUCTOR-style pooling (include_prompt=False): the bundle lists the optional input, the example feeds
    it, and the result is sentence-transformers' own."""
    st = pytest.importorskip("sentence_transformers")
    folder = make_tiny_model(tmp_path / "model")
    reference = st.SentenceTransformer(str(folder), device="cpu", prompts={"query": "the red dog: "},
                                       default_prompt_name="query")
    reference.set_pooling_include_prompt(False)
    reference.save(str(folder))
    run([KIT / "make_bundle.py", folder, tmp_path / "bundle"])
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["pooling_include_prompt"] is False and info["optional_inputs"] == {"prompt_length": 0}
    assert "prompt_length" not in info["inputs"]
    npy = tmp_path / "emb.npy"
    run([KIT / "embed_example.py", tmp_path / "bundle", *TEXTS, "--out", npy])
    np.testing.assert_allclose(np.load(npy), reference.encode(TEXTS), atol=1e-5)
    # the prompt's tokens were left out: pooling them too gives another embedding
    reference.set_pooling_include_prompt(True)
    assert not np.allclose(np.load(npy), reference.encode(TEXTS), atol=1e-3)


def test_do_lower_case_lowers_inside_the_tokenizer_as_sentence_transformers_6(tmp_path):
    """do_lower_case is a Lowercase step in the tokenizer (sentence-transformers 6), not str.lower() before it: a
    "[MASK]" in a text stays the special token. Torch backend, onnx backend and bundle all tokenize as 6 does."""
    st = pytest.importorskip("sentence_transformers")
    from st_onnx import SentenceTransformer

    folder = make_tiny_model(tmp_path / "model", pooling="cls")
    tokenizer_file = folder / "tokenizer.json"  # a cased tokenizer, so that do_lower_case has work to do
    tokenizer = json.loads(tokenizer_file.read_text())
    tokenizer["normalizer"]["lowercase"] = False
    tokenizer_file.write_text(json.dumps(tokenizer))
    texts = ["The [MASK] SLEEPS", "a [MASK]", "THE CAT"]
    cased_ids = st.SentenceTransformer(str(folder), device="cpu").tokenize(texts)["input_ids"]
    config = folder / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_lower_case": True}))
    reference = st.SentenceTransformer(str(folder), device="cpu")
    ref_ids = reference.tokenize(texts)["input_ids"]
    assert not torch.equal(ref_ids, cased_ids)  # lowering changes the tokens ("THE" is not in the vocabulary)
    assert 4 in ref_ids[0].tolist()  # [MASK] kept whole (str.lower() would give "[", "mask", "]")
    expected = reference.encode(texts)
    torch_model = SentenceTransformer(str(folder), device="cpu")
    assert torch.equal(torch_model.tokenize(texts)["input_ids"], ref_ids)
    onnx_model = SentenceTransformer(str(folder), device="cpu", backend="onnx")
    assert onnx_model.tokenize(texts)["input_ids"].tolist() == ref_ids.tolist()
    np.testing.assert_allclose(onnx_model.encode(texts), expected, atol=1e-5)
    # the bundle's tokenizer.json lowers by itself; the example feeds texts as given
    run([KIT / "make_bundle.py", folder, tmp_path / "bundle"])
    npy = tmp_path / "emb.npy"
    run([KIT / "embed_example.py", tmp_path / "bundle", *texts, "--out", npy])
    np.testing.assert_allclose(np.load(npy), expected, atol=1e-5)
    # a folder saved after loading carries the Lowercase step once; loading it again adds none
    torch_model.save(str(tmp_path / "saved"))
    normalizer = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())["normalizer"]
    assert [step["type"] for step in normalizer["normalizers"]].count("Lowercase") == 1
    again = SentenceTransformer(str(tmp_path / "saved"), device="cpu", backend="onnx")
    assert again.tokenize(texts)["input_ids"].tolist() == ref_ids.tolist()
    assert again.tokenizer.normalizer.__getstate__() == SentenceTransformer(
        str(tmp_path / "saved"), device="cpu").tokenizer.backend_tokenizer.normalizer.__getstate__()


def test_bundle_of_an_older_folder_with_its_transformer_in_0_transformer(tmp_path):
    """sentence-transformers' older folders keep the Transformer in 0_Transformer/: make_bundle refused them
    ("has no tokenizer.json"), where st-onnx loads them."""
    import shutil

    folder = make_tiny_model(tmp_path / "model", dense=16)
    (folder / "0_Transformer").mkdir()
    for name in ("config.json", "model.safetensors", "sentence_bert_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        shutil.move(str(folder / name), str(folder / "0_Transformer" / name))
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (folder / "modules.json").write_text(json.dumps(modules))
    run([KIT / "make_bundle.py", folder, tmp_path / "bundle"])
    npy = tmp_path / "emb.npy"
    run([KIT / "embed_example.py", tmp_path / "bundle", *TEXTS, "--out", npy])
    stack = load_stack(folder)
    with torch.no_grad():
        ref = stack(dict(stack.transformer.tokenize(TEXTS)))["sentence_embedding"].numpy()
    np.testing.assert_allclose(np.load(npy), ref, atol=1e-5)
