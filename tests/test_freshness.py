"""A graph runs only for the files it was exported from: what the fingerprint covers, and the stat record that
spares hashing them (it must never vouch for files that changed while they were hashed or exported)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import SENTENCES, make_tiny_model
from st_onnx import SentenceTransformer, layout
from st_onnx.errors import GraphFileError, ModelFolderError, StaleGraphError
from st_onnx.fingerprint import fingerprint_files, folder_fingerprint
from st_onnx.runtime import graphs


def _onnx(folder, export="auto", precision="fp32"):
    return SentenceTransformer(str(folder), backend="onnx", device="cpu",
                               onnx_options={"export": export, "precision": precision})


@pytest.fixture
def other_weights(tmp_path):
    return make_tiny_model(tmp_path / "other", seed=1) / "model.safetensors"


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (no wait for the racy window), so that stat records get written."""
    monkeypatch.setattr(graphs, "RACY_NS", 0)


def test_weights_saved_right_after_an_export_are_not_vouched_for(tiny_model_copy, other_weights, monkeypatch,
                                                                 settled):
    """Another process saves new weights while this one exports: the stat record written after the export
    must not describe them, or every later load would run the old graph without hashing."""
    import st_onnx.backends.onnx_backend as backend

    real = backend._export

    def export_then_another_save(folder, precision, out_dir):
        out = real(folder, precision, out_dir)
        shutil.copyfile(other_weights, folder / "model.safetensors")
        return out

    monkeypatch.setattr(backend, "_export", export_then_another_save)
    _onnx(tiny_model_copy)
    monkeypatch.setattr(backend, "_export", real)
    with pytest.raises(StaleGraphError, match="other weights"):
        _onnx(tiny_model_copy, export="never")
    np.testing.assert_allclose(_onnx(tiny_model_copy).encode(SENTENCES),
                               SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES), atol=1e-5)


def test_weights_saved_while_the_graph_is_checked_are_not_vouched_for(tiny_model_copy, other_weights, monkeypatch,
                                                                      settled):
    _onnx(tiny_model_copy)
    graphs._stat_paths(layout.fused_graph_path(tiny_model_copy, "fp32"))[0].unlink()  # the next load hashes
    real = graphs.graph_problem

    def check_while_another_saves(graph, manifest):
        shutil.copyfile(other_weights, tiny_model_copy / "model.safetensors")
        return real(graph, manifest)

    monkeypatch.setattr(graphs, "graph_problem", check_while_another_saves)
    _onnx(tiny_model_copy, export="never")  # fingerprinted before the save: this graph was right then
    monkeypatch.setattr(graphs, "graph_problem", real)
    with pytest.raises(StaleGraphError, match="other weights"):
        _onnx(tiny_model_copy, export="never")


def test_the_stat_record_spares_hashing_only_files_settled_before_the_snapshot(tiny_model_copy, monkeypatch):
    """Files changed within RACY_NS before the snapshot leave no record (their next change could keep every
    stat field); settled files get one, and the next load takes the quick path without hashing."""
    monkeypatch.setattr(graphs, "RACY_NS", 10**15)  # every file is "just changed"
    _onnx(tiny_model_copy)
    stat = graphs._stat_paths(layout.fused_graph_path(tiny_model_copy, "fp32"))[0]
    stat.unlink(missing_ok=True)
    _onnx(tiny_model_copy, export="never")
    assert not stat.exists()
    monkeypatch.setattr(graphs, "RACY_NS", 0)
    _onnx(tiny_model_copy, export="never")
    assert stat.is_file()

    def no_hashing(folder):
        raise AssertionError("hashed the weights although the stat record vouches for them")

    monkeypatch.setattr("st_onnx.fingerprint.folder_fingerprint", no_hashing)
    _onnx(tiny_model_copy, export="never")


def test_shards_named_by_their_index_are_weights(tiny_model_copy, other_weights):
    """transformers loads whatever shard names the index lists: they count as weights (the folder can export)
    and in the fingerprint (new shards make the graph stale)."""
    from transformers import AutoModel

    _onnx(tiny_model_copy)
    (tiny_model_copy / "model.safetensors").unlink()
    shutil.copyfile(other_weights, tiny_model_copy / "part-a.safetensors")
    keys = AutoModel.from_pretrained(str(other_weights.parent)).state_dict().keys()
    index = {"metadata": {}, "weight_map": {k: "part-a.safetensors" for k in keys}}
    (tiny_model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert tiny_model_copy / "part-a.safetensors" in fingerprint_files(tiny_model_copy)
    assert graphs.has_weights(tiny_model_copy)
    with pytest.raises(StaleGraphError, match="other weights"):
        _onnx(tiny_model_copy, export="never")
    np.testing.assert_allclose(_onnx(tiny_model_copy).encode(SENTENCES),
                               SentenceTransformer(str(other_weights.parent), device="cpu").encode(SENTENCES),
                               atol=1e-5)


def test_a_model_that_runs_its_own_code_has_that_code_fingerprinted(tiny_model_copy):
    """With ``auto_map`` in its config, the folder's modeling code is part of what the graph computes; without
    it, .py files (a hub repo's train_script.py) leave the fingerprint as earlier versions computed it."""
    before = folder_fingerprint(tiny_model_copy)
    (tiny_model_copy / "train_script.py").write_text("print('training')\n")
    assert folder_fingerprint(tiny_model_copy) == before
    config = json.loads((tiny_model_copy / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (tiny_model_copy / "config.json").write_text(json.dumps(config))
    (tiny_model_copy / "modeling_custom.py").write_text("SCALE = 1.0\n")
    mapped = folder_fingerprint(tiny_model_copy)
    (tiny_model_copy / "modeling_custom.py").write_text("SCALE = 2.0\n")
    assert folder_fingerprint(tiny_model_copy) != mapped


def test_another_precisions_graph_under_this_name_is_not_run(tiny_model_copy):
    _onnx(tiny_model_copy)
    _onnx(tiny_model_copy, precision="int8")
    fp32 = layout.fused_graph_path(tiny_model_copy, "fp32")
    int8 = layout.fused_graph_path(tiny_model_copy, "int8")
    shutil.copyfile(int8, fp32)
    shutil.copyfile(layout.manifest_path(int8), layout.manifest_path(fp32))
    with pytest.raises(GraphFileError, match="'int8' graph by its manifest, where 'fp32' was asked"):
        _onnx(tiny_model_copy, export="never")
    model = _onnx(tiny_model_copy)  # exported again
    assert json.loads(layout.manifest_path(fp32).read_text())["precision"] == "fp32"
    np.testing.assert_allclose(model.encode(SENTENCES),
                               SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES), atol=1e-5)


def test_a_manifest_without_the_graphs_size_and_sha256_describes_no_graph(tiny_model_copy, tmp_path):
    other = make_tiny_model(tmp_path / "other", seed=3)
    _onnx(tiny_model_copy)
    _onnx(other)
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    shutil.copyfile(layout.fused_graph_path(other, "fp32"), graph)
    manifest = json.loads(layout.manifest_path(graph).read_text())
    del manifest["graph_sha256"], manifest["graph_bytes"]
    layout.manifest_path(graph).write_text(json.dumps(manifest))
    graphs._stat_paths(graph)[0].unlink(missing_ok=True)
    with pytest.raises(GraphFileError, match="does not record the graph's size and sha256"):
        _onnx(tiny_model_copy, export="never")


def test_a_folder_without_weights_checks_the_graph_against_the_configs_it_still_holds(tiny_model_copy, tmp_path):
    """No weights, so no fingerprint: the manifest's per-file digests of the configs stand in. A pooling config
    changed since the export is refused; files left out of the folder are not asked for; a save that carried
    the graph re-records them (the configs written again differ in bytes, not in meaning)."""
    _onnx(tiny_model_copy)
    saved = tmp_path / "saved"
    SentenceTransformer(str(tiny_model_copy), device="cpu").save(str(saved))
    want = SentenceTransformer(str(saved), device="cpu").encode(SENTENCES)
    (saved / "model.safetensors").unlink()
    np.testing.assert_allclose(_onnx(saved, export="never").encode(SENTENCES), want, atol=1e-5)  # re-recorded
    (saved / "1_Pooling" / "config.json").unlink()  # a deployment may leave configs out
    np.testing.assert_allclose(_onnx(saved, export="never").encode(SENTENCES), want, atol=1e-5)
    (tiny_model_copy / "model.safetensors").unlink()
    pooling = tiny_model_copy / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(StaleGraphError, match=r"exported from another 1_Pooling/config\.json"):
        _onnx(tiny_model_copy, export="never")


def test_an_edited_manifest_is_checked_again_and_the_graph_decides_its_inputs_and_width(tiny_model_copy, settled):
    """The stat record covered the graph, not its manifest: a manifest edited after a load went unchecked. And
    the manifest's inputs and width were trusted over the graph's own: pairs lost their token types (0.27 from
    torch), a wrong width broke every encode."""
    _onnx(tiny_model_copy)
    _onnx(tiny_model_copy, export="never")  # a stat record now vouches for the files
    path = layout.manifest_path(layout.fused_graph_path(tiny_model_copy, "fp32"))
    intact = json.loads(path.read_text())
    path.write_text(json.dumps({**intact, "graph_sha256": "0" * 64}))
    with pytest.raises(GraphFileError, match="sha256"):
        _onnx(tiny_model_copy, export="never")
    path.write_text(json.dumps({**intact, "inputs": ["input_ids", "attention_mask"], "embedding_dimension": 16}))
    model = _onnx(tiny_model_copy, export="never")
    reference = SentenceTransformer(str(tiny_model_copy), device="cpu")
    pairs = [("the cat sleeps", "a dog runs"), ("hi", "fish swims")]
    np.testing.assert_allclose(model.encode(pairs), reference.encode(pairs), atol=1e-5)
    assert model.get_sentence_embedding_dimension() == 32 and model.encode(SENTENCES).shape == (len(SENTENCES), 32)


@pytest.mark.parametrize("broken", ['{"format": ', "[1, 2]", "{}"])
def test_a_save_leaves_behind_a_graph_whose_manifest_is_unreadable(tiny_model_copy, tmp_path, broken):
    """A derived file: the save failed on it ("not valid JSON; ... re-save the model", or an AttributeError)."""
    _onnx(tiny_model_copy)
    layout.manifest_path(layout.fused_graph_path(tiny_model_copy, "fp32")).write_text(broken)
    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    model.save(tmp_path / "out")
    assert not layout.fused_graph_path(tmp_path / "out", "fp32").exists()
    model.save(tiny_model_copy)  # in place too
    assert not layout.fused_graph_path(tiny_model_copy, "fp32").exists()
    np.testing.assert_allclose(_onnx(tmp_path / "out").encode(SENTENCES), model.encode(SENTENCES), atol=1e-5)


def _with_stale_graphs(folder, other_weights):
    """fp32 and int8 graphs of the weights before ``other_weights`` were saved over them (a fit elsewhere)."""
    from st_onnx.export import export_model_folder

    export_model_folder(folder, "fp32")
    export_model_folder(folder, "int8")
    shutil.copyfile(other_weights, folder / "model.safetensors")
    return folder


def test_an_export_into_a_copy_keeps_its_fresh_graphs_over_the_sources_stale_ones(tiny_model_copy, other_weights,
                                                                                  tmp_path):
    """The copy took the source's stale graphs, then kept out_dir's fresh graph of the other precision only where
    no graph of its name had come along: `st-onnx export SRC OUT --precision int8` after the fp32 one put SRC's
    stale fp32 graph back into OUT (a deployment without the weights then ran it: cosine -0.29)."""
    from st_onnx.export import export_model_folder
    from st_onnx.export.manifest import graph_is_fresh

    src = _with_stale_graphs(tiny_model_copy, other_weights)
    out = tmp_path / "out"
    export_model_folder(src, "fp32", out)
    export_model_folder(src, "int8", out)
    assert sorted(p.name for p in (out / layout.FUSED_DIR).glob("*.onnx")) == ["fp32.onnx", "int8.onnx"]
    for precision in ("fp32", "int8"):
        assert graph_is_fresh(out, layout.fused_graph_path(out, precision)), precision


def test_a_read_only_folders_graph_cache_keeps_each_precision_once_exported(tiny_model_copy, other_weights,
                                                                           tmp_path, monkeypatch):
    """Each export into the cache copied the folder's stale graphs back over the other precision's fresh one:
    loads of int8 and fp32 took turns exporting, and export='never' then refused."""
    from st_onnx.backends.onnx_backend import _export

    src = _with_stale_graphs(tiny_model_copy, other_weights)
    monkeypatch.setattr(graphs, "is_writable", lambda folder: False)  # a read-only mount (root writes anywhere)
    cache = tmp_path / "cache"
    assert graphs.find_graph(src, "int8", cache_folder=cache, exporter=_export).exported
    assert graphs.find_graph(src, "fp32", cache_folder=cache, exporter=_export).exported
    for precision in ("int8", "fp32"):
        assert not graphs.find_graph(src, precision, cache_folder=cache, export="never").exported


def test_loads_at_once_export_a_folder_once(tiny_model_copy, caplog):
    """Each process loading a folder without its graph exported it (web server workers: N times the time and
    memory). Threads calling find_graph stand in for processes: the backend's own lock is per process, the
    folder's lock (flock) is per open file, so it orders these threads as it orders processes."""
    import threading
    import time

    from st_onnx.backends.onnx_backend import _export

    calls, barrier, chosen = [], threading.Barrier(2), []

    def exporter(folder, precision, out_dir):
        calls.append(precision)
        time.sleep(0.3)  # both loads are past their first look before this export is done
        return _export(folder, precision, out_dir)

    def load():
        barrier.wait()
        chosen.append(graphs.find_graph(tiny_model_copy, "int8", exporter=exporter))

    caplog.set_level(logging.INFO, logger="st_onnx")
    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["int8"]
    assert sorted(c.exported for c in chosen) == [False, True]
    assert f"waiting for another export of {tiny_model_copy}" in caplog.text  # a wait is told, not silent


def test_a_read_only_folder_through_a_link_uses_the_graph_its_real_path_exported(tiny_model_copy, tmp_path,
                                                                                 monkeypatch):
    """The graph cache's folder was named after the name given: a folder loaded through a link (/models/current)
    and by its real path waited for one another's lock, then exported twice (found by the review of the change)."""
    import os

    from st_onnx.backends.onnx_backend import _export

    monkeypatch.setattr(graphs, "is_writable", lambda folder: False)
    link = tmp_path / "current"
    os.symlink(tiny_model_copy, link)
    cache = tmp_path / "cache"
    assert graphs.find_graph(tiny_model_copy, "int8", cache_folder=cache, exporter=_export).exported
    assert not graphs.find_graph(link, "int8", cache_folder=cache, export="never").exported


def test_a_load_while_the_graph_is_exported_in_place_waits_for_it(tiny_model_copy, monkeypatch):
    """`st-onnx export M M` takes the manifest away while it places the new graph: a load with export='never'
    in that window failed ("has no manifest"), one with 'auto' exported once more."""
    import threading

    from st_onnx.export import export_model_folder
    from st_onnx.export import exporter as exporter_mod

    export_model_folder(tiny_model_copy, "int8")
    results, real_place = [], exporter_mod.place_graph

    def attempt():
        try:
            results.append(graphs.find_graph(tiny_model_copy, "int8", export="never").exported)
        except Exception as e:  # noqa: BLE001 - what the load raised is what the test reports
            results.append(f"{type(e).__name__}: {e}")

    def place(src, target):  # another load starts while the graph is being placed
        place.load = threading.Thread(target=attempt)
        place.load.start()
        place.load.join(timeout=1)
        return real_place(src, target)

    monkeypatch.setattr(exporter_mod, "place_graph", place)
    export_model_folder(tiny_model_copy, "int8")
    place.load.join()
    assert results == [False]


def test_a_read_only_folders_stat_record_is_kept_in_the_cache(tiny_model_copy, monkeypatch, settled, tmp_path):
    """A read-only folder (a container image) could not keep its stat record beside the graph, so every load
    hashed all its weights again (0.1 s for all-MiniLM-L6-v2, seconds for a large model): the record now goes
    under the graph cache."""
    _onnx(tiny_model_copy)  # the graph, exported while the folder could be written
    graph = layout.fused_graph_path(tiny_model_copy, "fp32")
    monkeypatch.setenv("ST_ONNX_CACHE", str(tmp_path / "cache"))
    beside, cached = graphs._stat_paths(graph)
    beside.unlink()
    real_write = layout.write_json

    def read_only(path, obj):  # the folder is read-only from now on (root writes anywhere: chmod would not do)
        if tiny_model_copy in Path(path).parents:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_write(path, obj)

    monkeypatch.setattr(layout, "write_json", read_only)
    _onnx(tiny_model_copy, export="never")  # hashes once
    assert not beside.exists() and cached.is_file() and tmp_path / "cache" in cached.parents

    def no_hashing(folder):
        raise AssertionError("hashed the weights although the cache's stat record vouches for them")

    monkeypatch.setattr("st_onnx.fingerprint.folder_fingerprint", no_hashing)
    model = _onnx(tiny_model_copy, export="never")
    want = SentenceTransformer(str(tiny_model_copy), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(model.encode(SENTENCES), want, atol=1e-5)


def test_the_look_under_the_folder_lock_keeps_graphs_from_being_placed(tiny_model_copy, other_weights, monkeypatch):
    """The second look (under the folder's lock) only waited for a placement under way: one starting during the
    look took the manifest away from under it, and the load exported again or, with export='never', failed
    (found by the review of the change). Now a placement, which takes the graph folder's lock, waits for it."""
    import fcntl
    import os

    _with_stale_graphs(tiny_model_copy, other_weights)  # stale: the first look fails, the second runs
    graph_dir = layout.fused_graph_path(tiny_model_copy, "fp32").parent
    real_look, seen = graphs._look, []

    def look(*args, **kwargs):
        if kwargs.get("again"):
            fd = os.open(graph_dir, os.O_RDONLY)
            try:  # what a placement would do now
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("a placement could start")
            except BlockingIOError:
                seen.append("a placement waits")
            finally:
                os.close(fd)
        return real_look(*args, **kwargs)

    monkeypatch.setattr(graphs, "_look", look)
    with pytest.raises(StaleGraphError):
        graphs.find_graph(tiny_model_copy, "fp32", export="never")
    assert seen == ["a placement waits"]


def _hashing_fails(monkeypatch):
    """From now on, hashing the weights or a graph fails the test."""
    def weights(folder):
        raise AssertionError(f"hashed the weights of {folder}")

    def graph(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr("st_onnx.fingerprint.folder_fingerprint", weights)
    monkeypatch.setattr("st_onnx.runtime.manifest.file_sha256", graph)


def test_a_load_after_the_export_command_hashes_nothing(tiny_model_copy, monkeypatch, settled):
    """`st-onnx export` in place hashed the weights and wrote the graph, but left no stat record: the first load
    (in a container built so, every start) hashed both again (found by a review of cold starts)."""
    from st_onnx.cli import main

    assert main(["export", str(tiny_model_copy), str(tiny_model_copy), "--precision", "int8"]) == 0
    _hashing_fails(monkeypatch)
    _onnx(tiny_model_copy, export="never", precision="int8")


def test_a_graph_named_by_file_name_is_hashed_once(tiny_model_copy, monkeypatch, settled):
    """onnx_options={'file_name': ...} hashed the weights and the graph on every load, where the lookup by
    precision trusts the stat record."""
    _onnx(tiny_model_copy)
    named = {"file_name": "onnx/st_onnx/fp32.onnx"}
    for path in graphs._stat_paths(layout.fused_graph_path(tiny_model_copy, "fp32")):
        path.unlink(missing_ok=True)
    first = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options=named)
    _hashing_fails(monkeypatch)
    again = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options=named)
    np.testing.assert_array_equal(again.encode(SENTENCES), first.encode(SENTENCES))


def test_unreadable_weights_are_named_with_the_fix(tiny_model_copy, monkeypatch):
    """A folder saved as root and run as another user: hashing the weights raised a bare PermissionError. (Root
    reads any file, so the denial is made here.)"""
    import builtins

    import st_onnx.fingerprint as fingerprint

    def denied(file, *args, **kwargs):
        if Path(file).name == "model.safetensors":
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "open", denied, raising=False)
    with pytest.raises(ModelFolderError, match=r"cannot read .*model.safetensors \(Permission denied\).*chmod a\+r"):
        _onnx(tiny_model_copy)


def test_a_file_name_loads_record_vouches_for_no_other_precision(tiny_model_copy, settled):
    """A file_name load records the graph it ran; the lookup by precision took that record for its own and ran
    an int8 graph copied under fp32's name as fp32 (found by a review of this change)."""
    _onnx(tiny_model_copy, precision="int8")
    graph_dir = layout.fused_graph_path(tiny_model_copy, "fp32").parent
    for suffix in (".onnx", ".json"):
        shutil.copy(graph_dir / f"int8{suffix}", graph_dir / f"fp32{suffix}")
    for record in graph_dir.glob("*.stat.json"):
        record.unlink()
    SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu",
                        onnx_options={"file_name": "onnx/st_onnx/fp32.onnx"})
    assert (graph_dir / "fp32.stat.json").is_file()
    with pytest.raises(GraphFileError, match="is a 'int8' graph by its manifest, where 'fp32' was asked for"):
        _onnx(tiny_model_copy, export="never")
