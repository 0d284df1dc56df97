"""Paths a coverage run found no test reaching (error paths, fallbacks, cleanup, a fork that waits out its limit),
each checked for what a user sees there."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from helpers import rename_fails
from st_onnx import InputExample, SentenceTransformer, folders, layout, losses
from st_onnx.errors import GraphFileError, InvalidInputError, ModelFolderError, NewerGraphError

EXAMPLES = [InputExample(texts=["the cat", "a cat"], label=0.9), InputExample(texts=["a dog", "the car"], label=0.1)]


def _fit(model, ckpt, **kw):
    model.fit([(DataLoader(EXAMPLES, batch_size=2), losses.CosineSimilarityLoss(model))], epochs=1,
              show_progress_bar=False, checkpoint_path=str(ckpt), checkpoint_save_steps=1, **kw)


# 1. a resumable job's first run (checkpoints.py 81, 111-113; fit.py 254)
def test_resume_true_before_any_checkpoint_trains_from_the_start(tiny_model_dir, tmp_path, caplog):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with caplog.at_level(logging.WARNING, logger="st_onnx"):
        _fit(model, tmp_path / "ckpt", resume_from_checkpoint=True)  # the folder does not exist yet
    assert "no checkpoint under" in caplog.text and [p.name for p in (tmp_path / "ckpt").iterdir()] == ["1"]
    with pytest.raises(InvalidInputError, match="is not a checkpoint folder"):
        _fit(model, tmp_path / "ckpt", resume_from_checkpoint=str(tmp_path))
    with pytest.raises(InvalidInputError, match="written for 1 train objectives; fit got 2"):
        model.fit([(DataLoader(EXAMPLES, batch_size=2), losses.CosineSimilarityLoss(model))] * 2,
                  show_progress_bar=False, checkpoint_path=str(tmp_path / "ckpt"), resume_from_checkpoint=True)


# 2. onnx_options['session_options'] with a key SessionOptions lacks (onnx_backend.py 514)
@pytest.mark.parametrize("key", ["bogus", "_private"])
def test_unknown_session_option_is_refused(tiny_model_copy, key):
    with pytest.raises(InvalidInputError, match=f"session_options'\\] has '{key}'"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx",
                            onnx_options={"session_options": {key: 1}})


# 3. a deployment folder (graph + tokenizer, no weights) loaded again: the stat record spares the sha256
#    (graphs.py 96-97: never taken in the suite, whose files are always too fresh to vouch for)
def test_weightless_folder_second_load_skips_hashing_the_graph(tiny_model_copy, tmp_path, monkeypatch):
    from st_onnx.runtime import graphs
    from st_onnx.runtime import manifest as manifest_mod

    SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    dep = tmp_path / "dep"
    shutil.copytree(tiny_model_copy, dep, ignore=shutil.ignore_patterns("*.safetensors", "*.stat.json", ".*"))
    monkeypatch.setattr(graphs, "RACY_NS", 0)  # files count as settled at once: a snapshot may vouch for them
    hashed = []
    real = manifest_mod.file_sha256
    monkeypatch.setattr(manifest_mod, "file_sha256", lambda p, *a, **k: hashed.append(p) or real(p, *a, **k))
    first = SentenceTransformer(str(dep), device="cpu", backend="onnx").encode(["hi"])
    assert len(hashed) == 1 and layout.fused_graph_path(dep, "fp32").with_suffix(".stat.json").is_file()
    second = SentenceTransformer(str(dep), device="cpu", backend="onnx").encode(["hi"])
    assert len(hashed) == 1 and (first == second).all()


# 4. broken manifests through the public checks (manifest.py 123-129, 172, 186-187)
@pytest.mark.parametrize("text, says", [('{"format": ', "not valid JSON"), ("[1]", "is not a JSON object"),
                                        ('{"format": "x"}', "format 'x'"), ("\udcff", "not valid JSON")])
def test_broken_manifest_is_a_graph_file_error(tiny_model_copy, text, says):
    from st_onnx.export import check_fresh, check_graph, graph_is_fresh

    SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    layout.manifest_path(graph).write_bytes(text.encode("utf-8", "surrogateescape"))
    for check in (check_graph, lambda g: check_fresh(tiny_model_copy, g)):
        with pytest.raises(GraphFileError, match=says):
            check(graph)
    assert graph_is_fresh(tiny_model_copy, graph) is False


def test_manifest_naming_other_inputs_is_refused(tiny_model_copy):
    from st_onnx.export import check_graph

    SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    manifest = json.loads(layout.manifest_path(graph).read_text())
    layout.manifest_path(graph).write_text(json.dumps({**manifest, "inputs": ["input_ids"]}))
    with pytest.raises(GraphFileError, match="its manifest names inputs \\['input_ids'\\]"):
        check_graph(graph, verify_hash=False)


# 5. a weightless folder: a newer st-onnx's graph, a broken or missing tokenizer.json (graphs.py 84-85,
#    tokenize.py 247, 253-254)
def test_weightless_folder_errors(tiny_model_copy):
    SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    (tiny_model_copy / "model.safetensors").unlink()
    manifest_path = layout.manifest_path(layout.fused_graph_path(tiny_model_copy, "fp32"))
    good = manifest_path.read_text()
    manifest_path.write_text(json.dumps({**json.loads(good), "layout": layout.GRAPH_LAYOUT + 1}))
    with pytest.raises(NewerGraphError, match="newer st-onnx"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    manifest_path.write_text(good)
    (tiny_model_copy / "tokenizer.json").write_text("{bad")
    with pytest.raises(ModelFolderError, match="cannot be read by tokenizers"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    (tiny_model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer.json is missing"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")


# 6. malformed folder files 
@pytest.mark.parametrize("name, content, says", [
    ("modules.json", [], "non-empty JSON list"), ("modules.json", {}, "non-empty JSON list"),
    ("modules.json", [{"path": ""}], "entry 0 must be an object with 'type' and 'path'"),
    ("modules.json", ["x"], "entry 0 must be an object"),
    ("config_sentence_transformers.json", [1], "must hold a JSON object"),
    ("sentence_bert_config.json", [1], "holds a JSON list"),
])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_malformed_folder_files_are_model_folder_errors(tiny_model_copy, name, content, says, backend):
    (tiny_model_copy / name).write_text(json.dumps(content))
    with pytest.raises(ModelFolderError, match=says):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)


def test_onnx_backend_refuses_modules_without_a_transformer(tiny_model_copy):
    entry = {"idx": 0, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    (tiny_model_copy / "modules.json").write_text(json.dumps([entry]))
    with pytest.raises(ModelFolderError, match="lists no Transformer module"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")


# 7. pools: the default devices, and what is not a pool (pool.py 279, 293-299, 363, 371)
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_pool_with_default_devices_and_foreign_pool_objects(tiny_model_copy, backend):
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend=backend)
    with model.start_multi_process_pool() as pool:
        assert pool.devices == ["cpu"]
        assert model.encode_multi_process(["a cat", "the dog runs"], pool).shape == (2, 32)
    with pytest.raises(InvalidInputError, match="pool must be what start_multi_process_pool returned"):
        model.encode_multi_process(["a"], {"input": None})
    with pytest.raises(InvalidInputError, match="pool must be what start_multi_process_pool returned"):
        model.stop_multi_process_pool("pool")


# 8. a fork that waits out FORK_WAIT_S for another thread's run (session.py 225-226)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_fork_goes_ahead_after_fork_wait_and_the_run_finishes(tiny_model_copy, monkeypatch, caplog):
    from st_onnx.runtime import session as session_mod

    model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    expected = model.encode(["the cat"])
    monkeypatch.setattr(session_mod, "FORK_WAIT_S", 0.3)
    ort_session = model._backend._encoder.session
    real = ort_session._session

    class Slow:
        def __getattr__(self, name):
            return getattr(real, name)

        def run(self, *args, **kwargs):
            time.sleep(2)
            return real.run(*args, **kwargs)

    monkeypatch.setattr(ort_session, "_session", Slow())
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("e", model.encode(["the cat"])))
    thread.start()
    time.sleep(0.5)
    with caplog.at_level(logging.WARNING, logger="st_onnx"):
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        waited = time.monotonic() - start
    os.waitpid(pid, 0)
    thread.join(10)
    assert waited >= 0.25 and "fork() went ahead after waiting" in caplog.text
    assert (out["e"] == expected).all()
    monkeypatch.setattr(ort_session, "_session", real)
    assert (model.encode(["the cat"]) == expected).all()  # the gate let runs start again


# 9. atomic_folder: a rename error that is not 'cannot move' leaves the folder as it was (folders.py)
def test_atomic_folder_reraises_other_rename_errors_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "a"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    rename_fails(target, OSError(errno.ENAMETOOLONG, "File name too long", str(target)), monkeypatch)
    with pytest.raises(OSError, match="File name too long"):
        with folders.atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and [p.name for p in target.iterdir()] == ["keep.txt"]


# 10. save keeps the user's files where hard links fail (another file system) (saving.py 116-117)
def test_save_copies_foreign_entries_where_hard_links_fail(tiny_model_dir, tmp_path, monkeypatch):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "m"
    model.save(str(target))
    (target / "notes.txt").write_text("mine")
    (target / "eval").mkdir()
    (target / "eval" / "s.csv").write_text("x")

    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    model.save(str(target))
    assert (target / "notes.txt").read_text() == "mine" and (target / "eval" / "s.csv").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


# 11. the graph cache's default place (graphs.py 125-126: the suite always sets ST_ONNX_CACHE)
def test_default_cache_root(monkeypatch, tmp_path):
    from st_onnx.runtime.graphs import default_cache_root

    monkeypatch.delenv("ST_ONNX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / "st_onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path(os.path.expanduser("~")) / ".cache" / "st_onnx"


# 12. the kit's example: an unknown prompt name (export/embed_example.py 49-51)
def test_embed_example_refuses_an_unknown_prompt_name(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "export"))
    from embed_example import BundleEncoder

    encoder = BundleEncoder.__new__(BundleEncoder)
    encoder.info = {"prompts": {"query": "q: "}, "default_prompt_name": None}
    assert encoder.prompt() == "" and encoder.prompt("query") == "q: "
    with pytest.raises(ValueError, match="prompt 'doc' is not in the bundle; allowed: \\['query'\\]"):
        encoder.prompt("doc")
