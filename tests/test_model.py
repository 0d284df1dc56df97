"""The facade and the torch backend: loading, saving, tokenize, max_seq_length, and clear errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SENTENCES, cannot_swap
from st_onnx import SentenceTransformer, folders, layout
from st_onnx.errors import DiskFullError, InvalidInputError, ModelFolderError, ModelNotFoundError
from st_onnx.models import Dense, Normalize, Pooling, Transformer


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return SentenceTransformer(str(tiny_model_dir), device="cpu")


def test_empty_input_gives_empty_matrix_of_embedding_width(model):
    out = model.encode([])
    assert isinstance(out, np.ndarray) and out.shape == (0, 32)
    assert model.encode([], convert_to_tensor=True).shape == (0, 32)


def test_single_string_gives_one_vector_and_order_is_kept(model):
    batch = model.encode(SENTENCES, batch_size=2)
    for i, text in enumerate(SENTENCES):
        np.testing.assert_allclose(model.encode(text), batch[i], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(sentences=None), "got None"),
        (dict(sentences=["ok", None]), "sentences[1]"),
        (dict(sentences=["ok", 3]), "sentences[1] is 3"),
        (dict(sentences=["ok"], batch_size=0), "batch_size"),
        (dict(sentences=["ok"], batch_size=-4), "-4"),
        (dict(sentences=["ok"], output_value="cls"), "'cls'"),
        (dict(sentences=["ok"], device="tpu"), "'tpu'"),
        (dict(sentences={"b", "a"}), "got set (unordered"),
        (dict(sentences=b"hi"), "got bytes (decode it first)"),
        (dict(sentences=["a b", ("c", "d")]), "sentences[0] is a str, sentences[1] is a pair"),
        (dict(sentences=["ok"], batch_size=np.float64(2)), "batch_size must be a positive int"),
    ],
)
def test_bad_encode_arguments_name_the_value(model, kwargs, fragment):
    with pytest.raises(InvalidInputError) as err:
        model.encode(**kwargs)
    assert fragment in str(err.value)


def test_inputs_are_read_as_sentence_transformers_reads_them(model):
    """A tuple is a batch (a pair is an item of a list), numpy arrays and integers are welcome."""
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model.model_path), device="cpu")
    two = ("first sentence", "second sentence")
    assert model.encode(two).shape == reference.encode(two).shape == (2, 32)
    np.testing.assert_allclose(model.encode(two), reference.encode(list(two)), atol=1e-5)
    np.testing.assert_allclose(model.encode([two]), reference.encode([two]), atol=1e-5)  # one pair
    np.testing.assert_allclose(model.encode(np.array("hello")), model.encode("hello"))  # a 0-d array: one text
    np.testing.assert_allclose(model.encode(t for t in two), model.encode(two))  # a generator: a batch (README)
    np.testing.assert_allclose(model.encode(np.array(list(two)), batch_size=np.int64(1), truncate_dim=np.int32(8)),
                               reference.encode(list(two), truncate_dim=8), atol=1e-5)
    before = model.max_seq_length
    model.max_seq_length = np.int64(20)
    assert model.max_seq_length == 20 and type(model.max_seq_length) is int
    model.max_seq_length = before


def test_missing_folder_and_broken_modules_json(tmp_path, tiny_model_dir):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SentenceTransformer(str(tmp_path / "nope" / "deeper"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "modules.json").write_text("[{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        SentenceTransformer(str(broken))
    (broken / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Unknown"}]))
    with pytest.raises(ModelFolderError, match="'x.Unknown'"):
        SentenceTransformer(str(broken))
    with pytest.raises(InvalidInputError, match="backend"):
        SentenceTransformer(str(tiny_model_dir), backend="tensorflow")
    with pytest.raises(InvalidInputError, match="model_name_or_path"):
        SentenceTransformer()


def test_hub_id_offline_fails_with_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        SentenceTransformer("some-org/not-cached-model", cache_folder=str(tmp_path))
    assert "some-org/not-cached-model" in str(err.value) and "local" in str(err.value)


def test_tokenize_strings_pairs_and_dicts(model):
    single = model.tokenize(["the cat sleeps", "a dog"])
    assert set(single) >= {"input_ids", "attention_mask"} and single["input_ids"].shape[0] == 2
    pairs = model.tokenize([("the cat", "a dog runs"), ("hi", "yes")])
    assert (pairs["token_type_ids"][0] == 1).any()
    as_dicts = model.tokenize([{"text": "the cat sleeps"}, {"text": "a dog"}])
    assert torch.equal(as_dicts["input_ids"], single["input_ids"])


def test_max_seq_length_truncates_and_rejects_bad_values(tiny_model_dir):
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert m.max_seq_length == m.get_max_seq_length() == 64
    long_text = " ".join(["cat"] * 200)
    assert m.tokenize([long_text])["input_ids"].shape[1] == 64
    m.max_seq_length = 10
    assert m.tokenize([long_text])["input_ids"].shape[1] == 10
    assert m.encode(long_text, output_value="token_embeddings").shape == (10, 32)
    with pytest.raises(InvalidInputError, match="max_seq_length"):
        m.max_seq_length = 0


def test_tokenizer_can_be_replaced(tiny_model_dir):
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    tok = m.tokenizer
    assert tok.is_fast
    m.tokenizer = tok
    assert m.tokenizer is tok


def test_modules_build_a_model_and_save_round_trips(tmp_path, tiny_model_dir):
    t = Transformer(str(tiny_model_dir), max_seq_length=32)
    modules = [t, Pooling(32, pooling_mode="max"), Dense(32, 8, activation_function=torch.nn.ReLU()), Normalize()]
    built = SentenceTransformer(modules=modules, device="cpu")
    built.save(tmp_path / "out", model_name="tiny-test")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "tiny-test" in card and "sentence-transformers" in card
    loaded = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert loaded.max_seq_length == 32
    assert isinstance(loaded[2].activation_function, torch.nn.ReLU)
    np.testing.assert_allclose(loaded.encode(SENTENCES), built.encode(SENTENCES), atol=1e-6)


def test_saved_folder_has_the_permissions_of_the_umask(tmp_path, tiny_model_dir):
    # temp folders and files are made 0700/0600; once renamed into place they must read like any others
    old = os.umask(0o022)
    try:
        SentenceTransformer(str(tiny_model_dir), device="cpu").save(tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert len(folders) >= 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in folders)
    # every file, model.safetensors too: transformers' save_pretrained writes it 0600 (through a temporary file),
    # which a folder saved as root and run as another user (a container image) could not read
    files = [p for p in out.rglob("*") if p.is_file()]
    assert out / "model.safetensors" in files
    assert {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
            if stat.S_IMODE(p.stat().st_mode) != 0o644} == {}


def test_a_failed_save_leaves_no_half_written_folder(tmp_path, tiny_model_dir, monkeypatch):
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "target"
    m.save(target)
    before = sorted(p.name for p in target.rglob("*"))

    def boom(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Pooling, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        m.save(target)
    with pytest.raises(OSError):
        m.save(tmp_path / "fresh")
    assert sorted(p.name for p in target.rglob("*")) == before
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_legacy_pickle_weights_load_with_weights_only(tmp_path, tiny_model_dir):
    folder = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, folder)
    dense_dir = folder / "2_Dense"
    dense = Dense(32, 4)
    dense.save(dense_dir)
    torch.save(dense.state_dict(), dense_dir / "pytorch_model.bin")
    (dense_dir / "model.safetensors").unlink()
    entries = json.loads((folder / "modules.json").read_text())
    entries.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    for i, e in enumerate(entries):
        e["idx"] = i
    (folder / "modules.json").write_text(json.dumps(entries))
    m = SentenceTransformer(str(folder), device="cpu")
    assert m.encode("the cat").shape == (4,)
    torch.testing.assert_close(m[2].linear.weight, dense.linear.weight)


def test_untrusted_dense_activation_is_refused(tmp_path):
    folder = tmp_path / "d"
    Dense(4, 2).save(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["activation_function"] = "os.system"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="os.system"):
        Dense.load(folder)


def test_token_and_use_auth_token_together_are_refused(tiny_model_dir):
    with pytest.raises(InvalidInputError, match="both token and use_auth_token"):  # a ValueError, as in 6
        SentenceTransformer(str(tiny_model_dir), device="cpu", token="hf_a", use_auth_token="hf_b")


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case, error, match", [
    ("max_seq_length 'abc'", ModelFolderError, r"sentence_bert_config\.json has max_seq_length 'abc'; allowed"),
    ("max_seq_length 0", ModelFolderError, r"sentence_bert_config\.json has max_seq_length 0"),
    ("max_seq_length 12.7", ModelFolderError, r"sentence_bert_config\.json has max_seq_length 12\.7"),
    ("max_seq_length true", ModelFolderError, r"sentence_bert_config\.json has max_seq_length True"),
    ("module path 5", ModelFolderError, r"modules\.json: entry 1 must have a string 'type' and 'path'"),
    ("module idx 'x'", ModelFolderError, r"modules\.json: entry 1 .* whole-number 'idx'"),
    ("pooling config a list", ModelFolderError, r"1_Pooling/config\.json holds a JSON list; allowed: an object"),
    ("pooling_mode 3", InvalidInputError, r"pooling_mode must be a mode or a list of modes; got 3"),
])
def test_config_values_of_the_wrong_type_are_named(tiny_model_copy, case, error, match):
    """They gave bare int()/TypeError tracebacks (a float length was cut to 12 silently), and the CLI printed
    them whole."""
    folder = tiny_model_copy
    edits = {
        "max_seq_length": lambda v: _edit_json(folder / "sentence_bert_config.json",
                                               lambda c: c.update(max_seq_length=v)),
        "module path 5": lambda: _edit_json(folder / "modules.json", lambda m: m[1].update(path=5)),
        "module idx 'x'": lambda: _edit_json(folder / "modules.json", lambda m: m[1].update(idx="x")),
        "pooling config a list": lambda: (folder / "1_Pooling" / "config.json").write_text("[1]"),
        "pooling_mode 3": lambda: (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"embedding_dimension": 32, "pooling_mode": 3})),
    }
    if case.startswith("max_seq_length"):
        edits["max_seq_length"]({"'abc'": "abc", "0": 0, "12.7": 12.7, "true": True}[case.split(" ", 1)[1]])
    else:
        edits[case]()
    for backend in ("torch", "onnx"):
        with pytest.raises(error, match=match):
            SentenceTransformer(str(folder), device="cpu", backend=backend)


def test_unknown_pooling_mode_is_refused():
    with pytest.raises(InvalidInputError, match="'median'"):
        Pooling(8, pooling_mode="median")


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_pooling_mode_is_refused_not_read_as_mean(empty):
    """sentence-transformers 6 builds a 0-dimensional pooling from it; it was read as "mean" here, silently."""
    with pytest.raises(InvalidInputError, match="at least one mode"):
        Pooling(8, pooling_mode=empty)
    pooling = Pooling(8)
    with pytest.raises(InvalidInputError, match="at least one mode"):
        pooling.pooling_mode = empty
    assert pooling.pooling_mode == "mean" and Pooling(8, pooling_mode=None).get_sentence_embedding_dimension() == 8


def test_save_over_a_folder_keeps_foreign_files_but_drops_derived_ones(tmp_path, tiny_model_dir):
    """As sentence-transformers, a save leaves the user's files (a trainer's state, eval results, notes); it drops
    what derives from older weights: graphs, weights, another tokenizer's files, old module folders."""
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "target"
    m.save(target)
    mine = {"eval/similarity_evaluation_results.csv": "epoch,steps\n", "notes.txt": "mine", "optimizer.pt": "o",
            "scheduler.pt": "s", "training_args.bin": "t", "trainer_state.json": "{}", "config_notes.json": "{}",
            "2024_eval/scores.csv": "x", "1_experiment_notes/n.txt": "n", "checkpoint-500/rng_state.pth": "r"}
    stale = ["onnx/model.onnx", "7_Dense/config.json", "vocab.json", "added_tokens.json", "generation_config.json",
             "chat_template.jinja", "tf_model.h5", "pytorch_model.bin"]
    for name in [*mine, *stale]:
        (target / name).parent.mkdir(exist_ok=True)
        (target / name).write_text(mine.get(name, "older"))
    modules = json.loads((target / "modules.json").read_text())  # 7_Dense: a module of the model saved before
    modules.append({"idx": 7, "name": "7", "path": "7_Dense", "type": "sentence_transformers.models.Dense"})
    (target / "modules.json").write_text(json.dumps(modules))
    m.save(target)
    assert {name: (target / name).read_text() for name in mine} == mine
    assert [name for name in stale if (target / Path(name).parts[0]).exists()] == []


@pytest.mark.parametrize("how", ["mount point", "unwritable parent"])
def test_a_folder_that_cannot_be_swapped_is_saved_into_in_place(tmp_path, tiny_model_dir, monkeypatch, how):
    """A container's volume or a folder in a parent this user cannot write: sentence-transformers writes into it;
    the swap failed (EBUSY, EACCES) and left a whole model copy beside it."""
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "target"
    m.save(target)
    (target / "notes.txt").write_text("mine")
    (target / "eval").mkdir()
    (target / "eval" / "scores.csv").write_text("x")
    (target / "pytorch_model.bin").write_text("older")  # derived from older weights: goes
    cannot_swap(how, target, monkeypatch)
    m.save(target)
    assert (target / "notes.txt").read_text() == "mine" and (target / "eval" / "scores.csv").read_text() == "x"
    assert not (target / "pytorch_model.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # no copy, no work folder left beside it
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]
    np.testing.assert_allclose(SentenceTransformer(str(target), device="cpu").encode(["a cat"]),
                               m.encode(["a cat"]), atol=1e-6)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fails", ["copy onto the volume", "folder copy onto the volume", "rename in it"])
def test_a_volume_that_fills_up_or_fails_during_an_in_place_save_keeps_its_model(tmp_path, tiny_model_dir,
                                                                                 monkeypatch, fails):
    """The in-place fill deleted each old entry and then moved the new one across file systems: a full volume
    half-way left half a model.safetensors beside the old config, and the whole new copy was deleted too (found
    by a disk-full review). The new files now come onto the volume whole before any old one moves."""
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "vol"
    m.save(target)
    (target / "notes.txt").write_text("mine")
    before = _files(target)
    cannot_swap("mount point", target, monkeypatch)
    if fails == "copy onto the volume":
        real_move = shutil.move

        def move(src, dst, *args, **kwargs):  # the copy from the parent's file system fills the volume
            if Path(src).name == "model.safetensors":
                Path(dst).write_bytes(Path(src).read_bytes()[:1000])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_move(src, dst, *args, **kwargs)

        monkeypatch.setattr(shutil, "move", move)
    elif fails == "folder copy onto the volume":  # copytree gathers its errors into one shutil.Error, no errno
        real_move = shutil.move

        def move(src, dst, *args, **kwargs):
            if Path(src).name == "1_Pooling":
                raise shutil.Error([(str(src), str(dst), "[Errno 28] No space left on device")])
            return real_move(src, dst, *args, **kwargs)

        monkeypatch.setattr(shutil, "move", move)
    else:
        swap_replace, failed = os.replace, []  # cannot_swap's: the volume itself cannot be renamed

        def replace(src, dst, *args, **kwargs):
            if Path(dst) == target / "config.json" and not failed:  # new entries half in place already
                failed.append(dst)
                raise OSError(errno.EIO, "Input/output error", str(dst))
            return swap_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info:
        m.save(target)
    monkeypatch.undo()
    assert _files(target) == before
    if fails != "rename in it":  # a full disk is named as such, with the folder
        assert isinstance(info.value, DiskFullError) and f"writing into {target} " in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["vol"]
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]


def test_an_in_place_fill_moves_read_only_folders_and_keeps_their_mode(tmp_path, tiny_model_dir, monkeypatch):
    """Linux lets a user move a folder into another only with write access to it: the swap of a volume's entries
    failed over a read-only folder, such as the user's eval/ (found by the review of the change). Root skips the
    check, so the kernel's rule is added to cannot_swap's os.replace."""
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "vol"
    m.save(target)
    (target / "eval").mkdir()
    (target / "eval" / "scores.csv").write_text("x")
    os.chmod(target / "eval", 0o555)
    os.chmod(target / "1_Pooling", 0o555)
    cannot_swap("mount point", target, monkeypatch)
    swap_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).is_dir() and not Path(src).is_symlink() and Path(src).parent != Path(dst).parent \
                and not os.stat(src).st_mode & stat.S_IWUSR:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return swap_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    m.save(target)
    monkeypatch.undo()
    assert (target / "eval" / "scores.csv").read_text() == "x"
    assert stat.S_IMODE(os.stat(target / "eval").st_mode) == 0o555
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]
    os.chmod(target / "eval", 0o755)


def test_a_save_onto_a_full_disk_says_so_naming_the_folder(tmp_path, tiny_model_dir, monkeypatch):
    """safetensors and tokenizers report a full disk in their own exception types, with the OS error's text only
    (SafetensorError, Exception), and Python's write() names no file: the user learnt neither that the disk was
    full nor which one (found by a disk-full review). A DiskFullError (an OSError, errno ENOSPC) names it."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(DiskFullError, match=f"No space left on device writing into {tmp_path / 'out'} "
                                            r"\([\d,]+ MB free there now.*\(SafetensorError: Error while") as info:
        m.save(tmp_path / "out")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DiskFullError, match=r"writing into .*bundle .*\(Exception: No space left on device \(os"):
        with folders.atomic_folder(tmp_path / "bundle"):  # tokenizers' Tokenizer.save on a full disk
            raise Exception("No space left on device (os error 28)")
    with pytest.raises(ValueError, match="^not a disk$"):  # any other error passes unchanged
        with folders.atomic_folder(tmp_path / "bundle"):
            raise ValueError("not a disk")
    assert list(tmp_path.iterdir()) == []
    # a volume's copy is written beside it first: the free space is the disk's where that write went
    (tmp_path / "vol").mkdir()
    cannot_swap("mount point", tmp_path / "vol", monkeypatch)
    monkeypatch.setattr(folders, "_other_disk", lambda a, b: True)
    with pytest.raises(DiskFullError, match=f"writing into {tmp_path / 'vol'} .*MB free now on the disk of "
                                            f"{tmp_path}"):
        m.save(tmp_path / "vol")


def test_a_json_write_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    """Manifests, stat records, modules.json and configs are written beside and renamed over: never half a file."""
    path = tmp_path / "config.json"
    layout.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        layout.write_json(path, {"b": 2, "c": object()})  # json.dump fails after writing '{"b": 2, "c": '
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, tiny_model_dir, monkeypatch):
    import os

    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    target = tmp_path / "target"
    m.save(target)
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target and Path(src).name.startswith(".target.tmp-"):  # the new folder, not the old one
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        m.save(target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_save_refuses_a_file_writes_through_a_link_and_removes_abandoned_work_folders(tmp_path, tiny_model_dir):
    import time

    m = SentenceTransformer(str(tiny_model_dir), device="cpu")
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("keep")
    with pytest.raises(FileExistsError, match="a_file"):  # as sentence-transformers
        m.save(str(in_the_way))
    assert in_the_way.read_text() == "keep"
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    m.save(str(link))
    assert link.is_symlink() and (real / "modules.json").is_file()
    killed, running = tmp_path / ".real.tmp-killed", tmp_path / ".real.tmp-running"  # a save killed mid-way
    for work in (killed, running):
        work.mkdir()
        (work / "model.safetensors").write_text("partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(killed, (two_days_ago, two_days_ago))
    m.save(str(link))
    assert not killed.exists() and running.is_dir()  # another process may still be writing the recent one
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.tmp-running", "a_file", "link", "real"]


def test_model_card_data_keeps_numeric_metrics_of_any_kind():
    import numpy as np

    from st_onnx.saving import ModelCardData

    class Evaluator:
        name = "dev"

    data = ModelCardData()
    data.set_evaluation_metrics(Evaluator(), {"f32": np.float32(0.5), "f64": np.float64(0.25), "py": 1, "s": "x"})
    assert data.eval_results["dev"]["metrics"] == {"f32": 0.5, "f64": 0.25, "py": 1.0}
    assert "| f32 | 0.5000 |" in data.markdown() and "### Evaluator: dev" in data.markdown()
    assert ModelCardData().markdown() == ""


HAND_WRITTEN_CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\ndatasets:\n- s2orc\n---\n\n# The owner's card\n"


def test_card_front_matter_keeps_every_name_a_string_and_the_usage_is_python(tiny_model_dir, tmp_path):
    """YAML reads no, yes, 1.5 or 2024-01-01 as other types unless quoted; a name with quotes or a newline must
    not break the usage snippet or the heading."""
    import ast

    yaml = pytest.importorskip("yaml")
    from st_onnx.saving import ModelCardData

    data = ModelCardData(language=["en", "no"], tags=["yes", "1.5", "2024-01-01", "on"])
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", model_card_data=data)
    model.save(str(tmp_path / "card"), model_name='say "hi"\nnow', train_datasets="org/one")
    card = (tmp_path / "card" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == ["en", "no"] and front["datasets"] == ["org/one"]
    assert front["tags"][-4:] == ["yes", "1.5", "2024-01-01", "on"]
    assert '\n# say "hi" now\n' in card
    ast.parse(card.split("```python\n")[1].split("```")[0])  # the usage snippet compiles


def test_save_keeps_the_card_the_model_came_with_until_it_changes(tiny_model_copy, tmp_path):
    """As sentence-transformers: a loaded model saved again keeps its folder's README.md (license, language...);
    a card st-onnx wrote, a model given card data or evaluated, gets a new card."""
    from st_onnx.saving import ModelCardData

    # a card st-onnx wrote is derived: written again, with the new name
    SentenceTransformer(str(tiny_model_copy), device="cpu").save(str(tmp_path / "again"), model_name="acme/new")
    assert "# acme/new" in (tmp_path / "again" / "README.md").read_text()
    (tiny_model_copy / "README.md").write_text(HAND_WRITTEN_CARD)
    SentenceTransformer(str(tiny_model_copy), device="cpu").save(str(tmp_path / "kept"), model_name="acme/x")
    assert (tmp_path / "kept" / "README.md").read_text() == HAND_WRITTEN_CARD
    onnx_model = SentenceTransformer(str(tiny_model_copy), device="cpu", backend="onnx")
    onnx_model.save(str(tmp_path / "kept_onnx"))
    assert (tmp_path / "kept_onnx" / "README.md").read_text() == HAND_WRITTEN_CARD
    # card data given: its fields fill the new card
    data = ModelCardData(language=["en", "de"], license="mit", model_name="Tiny fine-tuned", tags=["legal"])
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", model_card_data=data)
    assert model.model_card_data is data and model.model_card_data.license == "mit"
    model.save(str(tmp_path / "data"))
    card = (tmp_path / "data" / "README.md").read_text()
    front = card.split("\n---\n")[0]
    assert "language:\n- en\n- de\n" in front and "license: mit" in front and front.endswith("\n- legal")
    assert "# Tiny fine-tuned" in card and "s2orc" not in card
    # metrics to report: a new card holds them
    model = SentenceTransformer(str(tiny_model_copy), device="cpu")
    model.model_card_data.set_evaluation_metrics(type("Eval", (), {"name": "sts-dev"})(), {"spearman": 0.5})
    model.save(str(tmp_path / "evaluated"))
    assert "sts-dev" in (tmp_path / "evaluated" / "README.md").read_text()
    with pytest.raises(InvalidInputError, match="model_card_data must be a ModelCardData"):
        SentenceTransformer(str(tiny_model_copy), device="cpu", model_card_data={"license": "mit"})


def test_a_card_written_again_keeps_what_it_recorded(tiny_model_copy, tmp_path):
    """A card st-onnx wrote is written again on save (the new name), and, as sentence-transformers keeps a loaded
    model's card, its license, language, datasets, tags and metrics stay: they were lost on load -> save."""
    from st_onnx.saving import ModelCardData

    data = ModelCardData(language="de", license="mit", tags=["legal"])
    model = SentenceTransformer(str(tiny_model_copy), device="cpu", model_card_data=data)
    model.model_card_data.set_evaluation_metrics(type("Eval", (), {"name": "sts-dev"})(), {"spearman": 0.8})
    model.save(str(tmp_path / "a"), train_datasets=["acme/pairs"])
    first = (tmp_path / "a" / "README.md").read_text()
    SentenceTransformer(str(tmp_path / "a"), device="cpu").save(str(tmp_path / "b"), model_name="acme/b")
    again = (tmp_path / "b" / "README.md").read_text()
    assert "# acme/b" in again and again.replace("acme/b", "a") == first
    for kept in ("language:\n- de\n", "license: mit", "- legal\n", "- acme/pairs\n", "| spearman | 0.8000 |"):
        assert kept in again, kept
    # an edited record is not trusted: the card is written afresh, or without the metrics it cannot read
    (tmp_path / "a" / "README.md").write_text(first.replace('"license": "mit"', '"license": '))
    SentenceTransformer(str(tmp_path / "a"), device="cpu").save(str(tmp_path / "c"))
    assert "license" not in (tmp_path / "c" / "README.md").read_text().split("\n---\n")[0]
    (tmp_path / "a" / "README.md").write_text(first.replace('"metrics": {', '"metrics": {"note": "x", ', 1)
                                              .replace('"evaluator": "Eval"', '"evaluator": 5'))
    SentenceTransformer(str(tmp_path / "a"), device="cpu").save(str(tmp_path / "d"))
    card = (tmp_path / "d" / "README.md").read_text()
    assert "license: mit" in card and "spearman" not in card


def test_a_transformers_checkpoint_card_is_not_kept(tmp_path):
    """As sentence-transformers 6: a plain transformers folder's README (a fill-mask card) describes another
    model; the saved sentence-transformers folder gets its own card."""
    from helpers import make_tiny_transformer

    raw = make_tiny_transformer(tmp_path / "raw")
    (raw / "README.md").write_text("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n---\n# tiny-bert\n")
    SentenceTransformer(str(raw), device="cpu").save(str(tmp_path / "out"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "fill-mask" not in card


def test_the_card_states_the_truncated_dimension(tmp_path):
    from helpers import make_tiny_model

    model = SentenceTransformer(str(make_tiny_model(tmp_path / "tiny", dense=16)), device="cpu", truncate_dim=8)
    model.save(str(tmp_path / "out"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert " 8-dimensional" in card and "16-dimensional" not in card


def test_prompts_in_the_newer_positional_place_are_refused_naming_the_order(tiny_model_dir):
    """sentence-transformers 2.4+ take prompts fourth: here that is cache_folder (2.x's order), and a dict
    there would silently drop the prompts and name a cache folder after them."""
    with pytest.raises(InvalidInputError, match=r"cache_folder must be a folder path; got dict .*2\.x's"):
        SentenceTransformer(str(tiny_model_dir), None, "cpu", {"query": "query: "}, "query")
    with pytest.raises(InvalidInputError, match="use_auth_token must be a token string or True/False; got int"):
        SentenceTransformer(str(tiny_model_dir), None, "cpu", None, 5)
    model = SentenceTransformer(str(tiny_model_dir), None, "cpu", None, None, prompts={"query": "query: "},
                                default_prompt_name="query")
    assert model.prompts["query"] == "query: " and model.default_prompt_name == "query"


def test_a_prompt_name_as_the_fifth_argument_is_refused_naming_the_order(tiny_model_dir, tmp_path):
    """sentence-transformers 2.4-5 take default_prompt_name fifth: here that is use_auth_token, and 'query' was kept
    as a token (unused for a folder) while encode ran without the prompt."""
    SentenceTransformer(str(tiny_model_dir), device="cpu", prompts={"query": "query: "}).save(str(tmp_path / "m"))
    with pytest.raises(InvalidInputError, match=r"use_auth_token is 'query', the name of one of this model's "
                                                r"prompts.*default_prompt_name=\.\.\. by name"):
        SentenceTransformer(str(tmp_path / "m"), None, "cpu", None, "query")
    assert SentenceTransformer(str(tmp_path / "m"), None, "cpu", None, "hf_token").prompts["query"] == "query: "


def test_cuda_takes_what_nn_module_cuda_takes(tiny_model_dir, monkeypatch):
    """An index, a torch.device or nothing; a torch.device raised TypeError from int() before reaching CUDA."""
    import torch

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    asked = []
    monkeypatch.setattr(model, "to", lambda device: asked.append(device) or model)
    model.cuda(torch.device("cuda", 1)), model.cuda(torch.device("cuda")), model.cuda(2), model.cuda()
    model.cuda(np.int64(3))
    assert asked == ["cuda:1", "cuda", "cuda:2", "cuda", "cuda:3"]


def test_onnx_options_without_the_onnx_backend_are_refused(tiny_model_dir):
    """They would be ignored: the torch modules run, at fp32, whatever the options ask."""
    with pytest.raises(InvalidInputError, match="onnx_options apply to backend='onnx' only; backend is 'torch'"):
        SentenceTransformer(str(tiny_model_dir), device="cpu", onnx_options={"precision": "int8"})


def test_save_into_the_working_directory(tiny_model_dir, tmp_path, monkeypatch):
    """save('.') swaps the folder in and the process stays in the folder of that name (it was left in the one
    moved aside, then deleted: every relative path failed); a folder holding the working directory is refused;
    an empty path is no folder."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    model.save(".")
    assert Path(os.getcwd()) == here and Path("modules.json").is_file() and Path("notes.txt").read_text() == "mine"
    np.testing.assert_allclose(SentenceTransformer(".", device="cpu").encode(SENTENCES), model.encode(SENTENCES),
                               atol=1e-6)
    (here / "sub").mkdir()
    monkeypatch.chdir(here / "sub")
    with pytest.raises(InvalidInputError, match="holds the working directory"):
        model.save(str(here))
    assert (here / "modules.json").is_file() and Path(os.getcwd()) == here / "sub"
    with pytest.raises(InvalidInputError, match="path must be a folder path .*; got ''"):
        model.save("")


def test_tokenize_checks_its_items_and_dense_its_activation(tiny_model_dir):
    from st_onnx.models import Dense

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match=r"sentences\[0\] is \['a', 'b', 'c'\]"):
        model.tokenize([["a", "b", "c"]])  # the third text was dropped silently
    with pytest.raises(InvalidInputError, match=r"sentences\[1\] is None"):
        model.tokenize(["a", None])
    with pytest.raises(InvalidInputError, match="activation_function must be a torch.nn activation module"):
        Dense(32, 16, activation_function="tanh")  # encode failed later, and its save could not be loaded
    for function in (torch.tanh, torch.nn.functional.relu):  # saved as 'builtins.*', which no load takes
        with pytest.raises(InvalidInputError, match=r"activation module .*got (builtin_function_or_method|function) "):
            Dense(32, 16, activation_function=function)
    assert isinstance(Dense(32, 16, activation_function=None).activation_function, torch.nn.Identity)


def test_a_pooling_mode_given_twice_survives_save(tmp_path):
    """Pooling(dim, pooling_mode=("mean", "mean")) (64-d, as in sentence-transformers 6) was saved as the classic
    booleans, which hold each mode once: the saved folder embedded in 32 dimensions, silently."""
    from helpers import make_tiny_transformer

    from st_onnx.models import Pooling, Transformer

    transformer = Transformer(str(make_tiny_transformer(tmp_path / "hf")), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode=("mean", "mean"))], device="cpu")
    before = model.encode(["a cat sleeps"])
    model.save(tmp_path / "saved")
    after = SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(["a cat sleeps"])
    assert before.shape == after.shape == (1, 64)
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_a_file_given_as_the_model_is_named_a_file(tiny_model_dir):
    from st_onnx.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="config.json' is a file; model_name_or_path must be a model folder"):
        SentenceTransformer(str(tiny_model_dir / "config.json"), device="cpu")
