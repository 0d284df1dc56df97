"""Another process saving into a model folder while this one loads, exports or saves it (a training job writing
checkpoints into the folder a service loads). A save swaps a whole new folder in; each test forces one
interleaving by running that save at one step (found by a review of concurrent processes, which saw every one of
them with real processes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import SENTENCES, make_tiny_model
from st_onnx import SentenceTransformer
from st_onnx.errors import ModelFolderError, StaleGraphError


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Folders A and B: other weights, other pooling, each with its fp32 graph (which their saves carry)."""
    root = tmp_path_factory.mktemp("two")
    a = make_tiny_model(root / "A", pooling="mean", dense=16, seed=0)
    b = make_tiny_model(root / "B", pooling="cls", dense=16, seed=1)
    for folder in (a, b):
        SentenceTransformer(str(folder), backend="onnx", device="cpu")
    return a, b


@pytest.fixture
def folder_of_a(two_models, tmp_path):
    return Path(shutil.copytree(two_models[0], tmp_path / "M"))


def _embeddings(folder, **kwargs):
    return SentenceTransformer(str(folder), device="cpu", **kwargs).encode(SENTENCES)


def _once(action):
    """``action`` the first time the returned function runs, then nothing."""
    done = []

    def run():
        if not done:
            done.append(True)
            action()
    return run


def test_a_torch_load_overlapping_a_save_is_one_saves_model(two_models, folder_of_a, monkeypatch):
    """The save landed between the Transformer's load and the Pooling's: A's transformer with B's pooling and
    Dense, embeddings of no saved model (21% of loads under alternating saves)."""
    from st_onnx.modules import stack as stack_mod

    a, b = two_models
    save_b = _once(lambda: SentenceTransformer(str(b), device="cpu").save(str(folder_of_a)))
    transformer = stack_mod._KINDS["Transformer"]
    real = transformer.load
    monkeypatch.setattr(transformer, "load", staticmethod(lambda *a, **kw: (real(*a, **kw), save_b())[0]))
    got = _embeddings(folder_of_a)
    monkeypatch.undo()
    np.testing.assert_allclose(got, _embeddings(b), atol=1e-5)  # loaded again, whole: B's


def test_an_onnx_load_overlapping_a_save_runs_one_saves_graph_and_settings(two_models, folder_of_a, monkeypatch):
    """The graph checked and the tokenizer settings read were A's, the graph file ONNX Runtime opened B's."""
    from st_onnx.backends import onnx_backend

    a, b = two_models
    save_b = _once(lambda: SentenceTransformer(str(b), device="cpu").save(str(folder_of_a)))
    real = onnx_backend.OrtSession
    monkeypatch.setattr(onnx_backend, "OrtSession", lambda *a, **kw: (save_b(), real(*a, **kw))[1])
    model = SentenceTransformer(str(folder_of_a), backend="onnx", device="cpu", onnx_options={"export": "never"})
    monkeypatch.undo()
    np.testing.assert_allclose(model.encode(SENTENCES), _embeddings(b, backend="onnx"), atol=1e-5)
    assert model._backend.manifest["fingerprint"] == SentenceTransformer(str(b), backend="onnx")._backend.manifest[
        "fingerprint"]


def test_what_an_onnx_model_reads_later_from_a_replaced_folder_must_be_what_it_runs(two_models, folder_of_a):
    """An onnx model reads its folder again later: its torch modules on first use (model[i], save), a pool's
    sessions. After a save of other weights there, save() wrote B's weights for a model encoding with A's graph,
    and a pool ran B's graph beside encode's A."""
    a, b = two_models
    model = SentenceTransformer(str(folder_of_a), backend="onnx", device="cpu")
    before = model.encode(SENTENCES)
    SentenceTransformer(str(b), device="cpu").save(str(folder_of_a))  # the training job's next checkpoint
    with pytest.raises(StaleGraphError, match="was replaced by a save of other weights since this model loaded"):
        model.save(str(folder_of_a.parent / "copy"))
    with pytest.raises(StaleGraphError, match="was replaced by a save since this model loaded"):
        model.start_multi_process_pool(["cpu"])
    np.testing.assert_array_equal(model.encode(SENTENCES), before)  # its own graph, loaded already, still runs
    plain = make_tiny_model(folder_of_a.parent / "plain", pooling="cls", dense=16, seed=1)  # no graph
    SentenceTransformer(str(plain), device="cpu").save(str(folder_of_a))
    with pytest.raises(StaleGraphError, match="was replaced by a save since this model loaded"):  # not a raw
        model._backend.new_session("cpu")                                                           # OSError
    # the same weights saved again (a new folder, the graph carried along): nothing to refuse
    model = SentenceTransformer(str(folder_of_a), backend="onnx", device="cpu")
    SentenceTransformer(str(folder_of_a), device="cpu").save(str(folder_of_a))
    assert model._backend.new_session("cpu").provider == "CPUExecutionProvider"
    np.testing.assert_allclose(model[1].get_sentence_embedding_dimension(), 32)


def test_an_export_overlapping_a_save_is_refused_naming_the_folder(two_models, folder_of_a, monkeypatch):
    """The export's work folder went with the folder the save swapped out (a raw FileNotFoundError of an internal
    file); or, with saves of B then of A again while the modules loaded, B's graph was stamped with A's
    fingerprint and every later load ran it."""
    from st_onnx.export import exporter

    a, b = two_models
    shutil.rmtree(folder_of_a / "onnx")
    model_a, model_b = SentenceTransformer(str(a), device="cpu"), SentenceTransformer(str(b), device="cpu")
    real = exporter._optimize
    monkeypatch.setattr(exporter, "_optimize", lambda *args, **kw: (model_b.save(str(folder_of_a)),
                                                                    real(*args, **kw))[1])
    with pytest.raises(ModelFolderError, match=f"{folder_of_a} was replaced by a save while its int8 graph"):
        exporter.export_model_folder(folder_of_a, "int8")
    monkeypatch.undo()
    model_a.save(str(folder_of_a))
    import st_onnx.modules

    real_load = st_onnx.modules.load_stack

    def load_between_two_saves(folder, *args, **kwargs):
        model_b.save(str(folder_of_a))
        stack = real_load(folder, *args, **kwargs)
        model_a.save(str(folder_of_a))  # the folder holds A again: A's fingerprint
        return stack

    monkeypatch.setattr(st_onnx.modules, "load_stack", load_between_two_saves)
    with pytest.raises(ModelFolderError, match="was replaced by a save while its modules loaded"):
        exporter.export_model_folder(folder_of_a, "fp32")


def test_a_load_that_every_try_overlaps_a_save_says_so(two_models, folder_of_a, monkeypatch):
    """The last of the load's tries failed on a file the save moved away, and that error went out as a broken
    folder ('modules.json names 1_Pooling, which is not a folder') (found by the review of the change)."""
    from st_onnx.modules import stack as stack_mod

    a, b = two_models
    models = [SentenceTransformer(str(m), device="cpu") for m in (b, a)]
    transformer = stack_mod._KINDS["Transformer"]
    real, calls = transformer.load, []

    def load(*args, **kwargs):
        calls.append(1)
        models[len(calls) % 2].save(str(folder_of_a))
        if len(calls) == 3:
            raise ModelFolderError(f"modules.json names '1_Pooling', which is not a folder in {folder_of_a}")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformer, "load", staticmethod(load))
    with pytest.raises(ModelFolderError, match="was replaced by a save 3 times while it loaded"):
        SentenceTransformer(str(folder_of_a), device="cpu")


@pytest.mark.parametrize("step", ["moving the folder aside", "putting the new one in place"])
def test_a_save_racing_another_at_either_rename_ends_whole_or_says_so(two_models, folder_of_a, monkeypatch, step):
    """Another process's save moved the folder aside just before this one tried to (a raw FileNotFoundError
    saying M did not exist), or put its folder in place while this one found none (a raw ENOTEMPTY of the
    temporary folder) (found by the review of the change)."""
    a, b = two_models
    x = SentenceTransformer(str(a), device="cpu")
    real_replace, other_aside = os.replace, folder_of_a.parent / ".M.old-999999999"

    if step == "putting the new one in place":
        real_replace(folder_of_a, other_aside)  # the other save is between its two renames: no folder to move

    def replace(src, dst, *args, **kwargs):
        if step == "moving the folder aside" and Path(src) == folder_of_a and not other_aside.exists():
            real_replace(folder_of_a, other_aside)  # the other save's first rename, a moment earlier
        if step == "putting the new one in place" and Path(dst) == folder_of_a and not folder_of_a.exists():
            shutil.copytree(b, folder_of_a)  # the other save's second rename lands first
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    if step == "moving the folder aside":
        x.save(str(folder_of_a))  # its folder takes the place; the other save's second rename then says so
    else:
        with pytest.raises(FileExistsError, match=f"another save into {folder_of_a} finished while this one"):
            x.save(str(folder_of_a))
    monkeypatch.undo()
    assert [p.name for p in folder_of_a.parent.iterdir() if p.name.startswith(".M.tmp")] == []
    np.testing.assert_allclose(_embeddings(folder_of_a), _embeddings(a if step == "moving the folder aside" else b),
                               atol=1e-6)


def test_a_save_that_another_save_overtakes_leaves_no_copy_behind(two_models, folder_of_a, monkeypatch):
    """Save X moved the folder aside, save Y put its own in place, X's second rename failed: a raw ENOTEMPTY of
    X's temporary folder, and X's .M.old-PID, a whole model, stayed behind."""
    a, b = two_models
    x, y = SentenceTransformer(str(a), device="cpu"), SentenceTransformer(str(b), device="cpu")
    real_replace, real_getpid = os.replace, os.getpid

    def y_saves_whole():
        monkeypatch.setattr(os, "getpid", lambda: real_getpid() + 1)  # another process: another .M.old name
        y.save(str(folder_of_a))
        monkeypatch.setattr(os, "getpid", real_getpid)

    y_once = _once(y_saves_whole)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if Path(src) == folder_of_a:
            y_once()

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FileExistsError, match=f"another save into {folder_of_a} finished while this one was"):
        x.save(str(folder_of_a))
    monkeypatch.undo()
    assert [p.name for p in folder_of_a.parent.iterdir() if p.name.startswith(".")] == []
    np.testing.assert_allclose(_embeddings(folder_of_a), _embeddings(b), atol=1e-6)  # Y's, whole
