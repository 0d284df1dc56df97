"""st_onnx.hub against a local stand-in Hub (tests/hub_server.py) on 127.0.0.1: push, load, offline, errors.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when it is imported (conftest sets HF_HUB_OFFLINE=1 first), so
the ``hub`` fixture points its ``constants`` at the server for one test; ``test_env_settings_in_a_fresh_process``
checks the environment variables themselves in subprocesses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import SENTENCES
from hub_server import HubServer

from st_onnx import SentenceTransformer, hub
from st_onnx.errors import HubError, InvalidInputError, ModelNotFoundError

TOKEN = "hf_TestTokenAlice0123456789abcdef"  # alice: member of 'acme'
BOB_TOKEN = "hf_TestTokenBob0123456789abcdefgh"  # bob: no organization
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A running local Hub; huggingface_hub pointed at it, online, with no saved token; shut down afterwards."""
    from huggingface_hub import constants

    srv = HubServer(tokens={TOKEN: "alice", BOB_TOKEN: "bob"}, orgs={"alice": ["acme"]})
    url = srv.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "SENTENCE_TRANSFORMERS_HOME"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_embeddings(tiny_model_dir):
    return SentenceTransformer(str(tiny_model_dir), device="cpu").encode(SENTENCES)


def _load(repo_id: str, cache: Path, token=None) -> SentenceTransformer:
    return SentenceTransformer(repo_id, cache_folder=cache, use_auth_token=token, device="cpu")


def _hub_files(paths: list[str]) -> dict[str, bytes]:
    return {p: f"content of {p}".encode() for p in paths}


# -- round trip ---------------------------------------------------------------------------------------------------
def test_round_trip_push_load_then_offline(server, tiny_model_dir, tiny_embeddings, tmp_path, monkeypatch):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    url = model.save_to_hub("tiny", organization="acme")

    sha = server.repos["acme/tiny"].snapshot("main")[0]
    assert url == f"{server.url}/acme/tiny/commit/{sha}"
    pushed = server.files("acme/tiny")
    assert {"modules.json", "config.json", "tokenizer.json", "1_Pooling/config.json", "README.md"} <= set(pushed)
    assert "# acme/tiny" in pushed["README.md"].decode()

    cache = tmp_path / "cache"
    loaded = _load("acme/tiny", cache, TOKEN)
    assert loaded.model_path == cache / "models--acme--tiny" / "snapshots" / sha
    np.testing.assert_array_equal(loaded.encode(SENTENCES), tiny_embeddings)

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(server.requests)
    again = _load("acme/tiny", cache)  # no token, no network: the cached snapshot
    assert len(server.requests) == before
    assert again.model_path == loaded.model_path
    np.testing.assert_array_equal(again.encode(SENTENCES), tiny_embeddings)


def test_env_settings_in_a_fresh_process(server, tmp_path):
    """HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub at import."""
    sha = server.add_repo("acme/env", _hub_files(["modules.json", "config.json", "tf_model.h5"]))
    home = tmp_path / "hf-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "SENTENCE_TRANSFORMERS"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_OFFLINE="0", NO_PROXY="127.0.0.1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO_ROOT))
    code = "import sys; from st_onnx.hub import resolve_model_path; print(resolve_model_path(sys.argv[1]))"

    def run(**extra) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, "acme/env"], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    online = run()
    assert online.returncode == 0, online.stderr
    snapshot = home / "hub" / "models--acme--env" / "snapshots" / sha
    assert Path(online.stdout.strip()) == snapshot
    assert sorted(p.name for p in snapshot.iterdir()) == [".gitattributes", "config.json", "modules.json"]

    before = len(server.requests)
    cached = run(HF_HUB_OFFLINE="1")
    assert cached.returncode == 0, cached.stderr
    assert Path(cached.stdout.strip()) == snapshot
    assert len(server.requests) == before

    missing = subprocess.run([sys.executable, "-c", code, "acme/absent"], env={**env, "HF_HUB_OFFLINE": "1"},
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode != 0
    assert "ModelNotFoundError" in missing.stderr and "'acme/absent'" in missing.stderr


# -- which files are fetched --------------------------------------------------------------------------------------
REPO_FILES = [
    "modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "README.md",
    "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot",
    "onnx/model.onnx", "onnx/model_O4.onnx", "onnx/model_qint8_avx512.onnx", "openvino/openvino_model.xml",
    "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors", "2_Dense/pytorch_model.bin",
    "onnx/st_onnx/fp32.onnx", "onnx/st_onnx/fp32.json", "optimizer.pt", "training_args.bin",
]
NEEDED = {
    "modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "README.md",
    "model.safetensors", "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors",
    "onnx/st_onnx/fp32.onnx", "onnx/st_onnx/fp32.json",
}


def test_select_files_keeps_what_a_model_needs():
    assert set(hub.select_files(REPO_FILES)) == NEEDED
    assert set(hub.select_files(REPO_FILES, include=["onnx/model.onnx"])) == NEEDED | {"onnx/model.onnx"}
    # no safetensors beside it: pytorch_model.bin is the weights
    assert hub.select_files(["config.json", "pytorch_model.bin", "tf_model.h5"]) == ["config.json",
                                                                                      "pytorch_model.bin"]


def test_load_downloads_only_the_needed_files(server, tmp_path):
    sha = server.add_repo("acme/full", _hub_files(REPO_FILES))
    folder = hub.resolve_model_path("acme/full", cache_folder=tmp_path / "cache")
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == NEEDED | {".gitattributes"}
    fetched = {p.rsplit(f"/resolve/{sha}/", 1)[1] for p in server.paths_requested("GET") if "/resolve/" in p}
    assert fetched == got  # skipped files were never requested

    extra = hub.resolve_model_path("acme/full", cache_folder=tmp_path / "cache", include=["onnx/model.onnx"])
    assert (extra / "onnx" / "model.onnx").read_bytes() == b"content of onnx/model.onnx"


# -- pushing ------------------------------------------------------------------------------------------------------
def _folder_with_graph(tiny_model_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(tiny_model_dir, dest)
    (dest / "onnx" / "st_onnx").mkdir(parents=True)
    (dest / "onnx" / "st_onnx" / "fp32.onnx").write_bytes(b"graph bytes")
    (dest / "onnx" / "st_onnx" / "fp32.json").write_text('{"fingerprint": "x"}')
    return dest


def test_push_local_folder_keeps_or_replaces_the_model_card(server, tiny_model_dir, tmp_path):
    server.add_repo("acme/carded", {"README.md": b"# the owner's own card\n"})
    folder = _folder_with_graph(tiny_model_dir, tmp_path / "folder")
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)

    url = model.save_to_hub("acme/carded", local_model_path=str(folder), exist_ok=True, commit_message="mine")
    files = server.files("acme/carded")
    assert url.endswith(server.repos["acme/carded"].snapshot("main")[0])
    assert files["README.md"] == b"# the owner's own card\n"
    assert files["onnx/st_onnx/fp32.onnx"] == b"graph bytes" and "onnx/st_onnx/fp32.json" in files
    assert files["modules.json"] == (folder / "modules.json").read_bytes()

    model.save_to_hub("carded", organization="acme", local_model_path=str(folder), exist_ok=True,
                      replace_model_card=True)
    assert server.files("acme/carded")["README.md"] == (folder / "README.md").read_bytes()


def test_push_model_keeps_existing_card_and_defaults_to_the_users_namespace(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    model.save_to_hub("mine", train_datasets=["sentence-transformers/stsb"])  # no organization: alice's
    card = server.files("alice/mine")["README.md"].decode()
    assert "# alice/mine" in card and "- sentence-transformers/stsb" in card

    server.add_repo("alice/kept", {"README.md": b"hand-written\n"})
    model.save_to_hub("kept", exist_ok=True)
    assert server.files("alice/kept")["README.md"] == b"hand-written\n"
    assert "modules.json" in server.files("alice/kept")


def test_save_to_hub_takes_the_newer_keywords(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")  # no token of its own: the call's
    url = model.save_to_hub(repo_id="acme/newer", token=TOKEN)
    assert url.endswith(server.repos["acme/newer"].snapshot("main")[0])
    assert "modules.json" in server.files("acme/newer")
    with pytest.raises(InvalidInputError, match="repo_name and repo_id are two names"):
        model.save_to_hub("acme/a", repo_id="acme/b", token=TOKEN)
    with pytest.raises(InvalidInputError, match="safe_serialization=False"):
        model.save_to_hub("acme/c", token=TOKEN, safe_serialization=False)
    assert "acme/a" not in server.repos and "acme/c" not in server.repos


def test_token_is_never_written_or_logged(server, tiny_model_dir, tmp_path, caplog):
    for name in ("", "huggingface_hub", "httpx2", "st_onnx"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    model.save_to_hub("secret-check", organization="acme", private=True)
    loaded = _load("acme/secret-check", tmp_path / "cache", TOKEN)
    loaded.save(tmp_path / "resaved")
    with pytest.raises(HubError) as exists:
        model.save_to_hub("secret-check", organization="acme")

    assert server.repos["acme/secret-check"].private
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    leaks += [p for p, content in server.files("acme/secret-check").items() if TOKEN.encode() in content]
    assert leaks == []
    assert caplog.records and TOKEN not in caplog.text
    assert TOKEN not in str(exists.value) and TOKEN not in repr(loaded) and TOKEN not in repr(model)


def test_push_to_hub_takes_the_repo_id_whole_and_keeps_the_prompts(server, tiny_model_dir, tiny_model_copy,
                                                                    tmp_path):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", prompts={"query": "the "},
                                default_prompt_name="query")
    url = model.push_to_hub("acme/pushed", token=TOKEN, private=True)
    assert url.endswith(server.repos["acme/pushed"].snapshot("main")[0])
    assert server.repos["acme/pushed"].private
    loaded = _load("acme/pushed", tmp_path / "cache", TOKEN)
    assert loaded.prompts == {"query": "the ", "document": ""} and loaded.default_prompt_name == "query"
    np.testing.assert_allclose(loaded.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)

    onnx_model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", use_auth_token=TOKEN)
    onnx_model.push_to_hub("bare", exist_ok=True)  # no owner: the token's user; the model's own token
    assert "modules.json" in server.files("alice/bare")
    assert server.repos["alice/bare"].messages[-1] == "Add new SentenceTransformer model with an onnx backend"
    assert server.repos["acme/pushed"].messages[-1] == "Add new SentenceTransformer model"


def test_push_to_hub_refuses_what_it_does_not_do(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    with pytest.raises(InvalidInputError, match="revision='dev', create_pr=False.*upload_folder"):
        model.push_to_hub("acme/x", revision="dev")
    with pytest.raises(InvalidInputError, match="create_pr=True"):
        model.push_to_hub("acme/x", create_pr=True)
    with pytest.raises(InvalidInputError, match="safe_serialization=False"):
        model.push_to_hub("acme/x", safe_serialization=False)
    with pytest.raises(InvalidInputError, match="repo_id must be"):
        model.push_to_hub("")
    assert "acme/x" not in server.repos


# -- errors --------------------------------------------------------------------------------------------------------
def test_push_to_an_existing_repo_needs_exist_ok(server, tiny_model_dir, monkeypatch):
    server.add_repo("acme/taken", {"README.md": b"x\n"})
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    monkeypatch.setattr(type(model), "save", lambda *a, **kw: pytest.fail("saved for a push that cannot happen"))
    with pytest.raises(HubError, match=r"'acme/taken' already exists.*exist_ok=True"):
        model.save_to_hub("taken", organization="acme")


def test_a_push_whose_local_save_fails_makes_no_repo(server, tiny_model_dir, monkeypatch):
    """The repo was created before the model was saved to upload: a save that failed (a full temporary folder)
    left an empty repo, and the same call again met 409 Conflict (found by a disk-full review)."""
    import errno

    from st_onnx.modules.pooling import Pooling

    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    with monkeypatch.context() as m:
        m.setattr(Pooling, "save", lambda self, path: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        with pytest.raises(OSError, match="No space left"):
            model.save_to_hub("full", organization="acme")
    assert "acme/full" not in server.repos
    model.save_to_hub("full", organization="acme")  # the same call, with room again
    assert "modules.json" in server.files("acme/full")


def test_push_without_a_token(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(HubError, match=r"'acme/tokenless' needs a Hugging Face token.*token='hf_.*HF_TOKEN"):
        model.save_to_hub("tokenless", organization="acme")
    assert not any(path.startswith("/api/repos") for _, path in server.requests)


def test_push_with_a_rejected_token_401(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token="hf_NotAValidToken")
    with pytest.raises(HubError, match=r"rejected the token.*'acme/x'.*401.*write access") as info:
        model.save_to_hub("x", organization="acme")
    assert "hf_NotAValidToken" not in str(info.value)


def test_push_to_a_foreign_organization_403(server, tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=BOB_TOKEN)
    with pytest.raises(HubError, match=r"'acme/bobs'.*403"):
        model.save_to_hub("bobs", organization="acme")


def test_push_argument_errors(server, tiny_model_dir, tmp_path, offline):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    with pytest.raises(InvalidInputError, match=r"'acme/x'.*organization='other'"):
        model.save_to_hub("acme/x", organization="other")
    with pytest.raises(InvalidInputError, match=r"local_model_path .*nowhere.* is not a folder"):
        model.save_to_hub("x", local_model_path=str(tmp_path / "nowhere"))
    with pytest.raises(HubError, match=r"cannot push to 'acme/x': HF_HUB_OFFLINE=1.*model.save\(path\)"):
        model.save_to_hub("x", organization="acme")


def test_load_a_revision_and_local_files_only(server, tiny_model_dir, tiny_model_copy, tmp_path):
    first = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    first.push_to_hub("acme/versions")
    old_sha = server.repos["acme/versions"].snapshot("main")[0]
    second = SentenceTransformer(str(tiny_model_copy), device="cpu", use_auth_token=TOKEN,
                                 prompts={"q": "the "}, default_prompt_name="q")  # a default prompt: other embeddings
    second.push_to_hub("acme/versions", exist_ok=True)
    cache = tmp_path / "cache"

    with pytest.raises(ModelNotFoundError, match="local_files_only=True was passed.*local_files_only=False"):
        SentenceTransformer("acme/versions", cache_folder=cache, device="cpu", local_files_only=True)
    old = SentenceTransformer("acme/versions", cache_folder=cache, device="cpu", use_auth_token=TOKEN,
                              revision=old_sha)
    assert old.model_path.name == old_sha and old.default_prompt_name is None
    np.testing.assert_allclose(old.encode(SENTENCES), first.encode(SENTENCES), atol=1e-6)
    new = SentenceTransformer("acme/versions", cache_folder=cache, device="cpu", use_auth_token=TOKEN)
    assert new.default_prompt_name == "q"
    assert not np.allclose(new.encode(SENTENCES), old.encode(SENTENCES), atol=1e-3)  # the revisions differ
    np.testing.assert_allclose(new.encode(SENTENCES), second.encode(SENTENCES), atol=1e-6)

    before = len(server.requests)
    cached = SentenceTransformer("acme/versions", cache_folder=cache, device="cpu", local_files_only=True)
    assert len(server.requests) == before and cached.model_path == new.model_path
    with pytest.raises(ModelNotFoundError, match=f"'acme/versions' at revision '{'0' * 40}' is not a local folder"):
        SentenceTransformer("acme/versions", cache_folder=cache, device="cpu", local_files_only=True,
                            revision="0" * 40)  # not the cached one: the error names the revision asked for
    assert len(server.requests) == before


def test_load_missing_repo_404(server, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"'acme/nope'.*404.*local model folder") as info:
        _load("acme/nope", tmp_path / "cache", TOKEN)
    assert isinstance(info.value, FileNotFoundError)


def test_load_private_repo_needs_a_token_401(server, tmp_path):
    server.add_repo("acme/private", _hub_files(["config.json"]), private=True)
    with pytest.raises(ModelNotFoundError, match=r"refused access to model 'acme/private' \(401.*pass token='hf_"):
        hub.resolve_model_path("acme/private", cache_folder=tmp_path / "cache")
    folder = hub.resolve_model_path("acme/private", cache_folder=tmp_path / "cache", token=TOKEN)
    assert (folder / "config.json").read_bytes() == b"content of config.json"
    # as huggingface_hub does: once cached, a refused listing falls back to the cached snapshot
    assert hub.resolve_model_path("acme/private", cache_folder=tmp_path / "cache") == folder


def test_load_offline_and_not_cached(server, tmp_path, offline):
    before = len(server.requests)
    with pytest.raises(ModelNotFoundError, match=r"'acme/absent'.*HF_HUB_OFFLINE.*path of a local model folder"):
        _load("acme/absent", tmp_path / "cache")
    assert len(server.requests) == before


def test_load_offline_from_a_partial_cache(server, tmp_path, monkeypatch):
    server.add_repo("acme/partial", _hub_files(["modules.json", "config.json"]))
    folder = hub.resolve_model_path("acme/partial", cache_folder=tmp_path / "cache")
    (folder / "config.json").unlink()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match=r"'acme/partial' .*only partly in the Hugging Face cache"):
        hub.resolve_model_path("acme/partial", cache_folder=tmp_path / "cache")


def test_unreachable_hub_falls_back_to_the_cache(server, tmp_path, caplog):
    server.add_repo("acme/cached", _hub_files(["config.json"]))
    cache = tmp_path / "cache"
    folder = hub.resolve_model_path("acme/cached", cache_folder=cache)
    server.stop()  # the endpoint now refuses connections
    assert hub.resolve_model_path("acme/cached", cache_folder=cache) == folder
    assert "could not ask the Hub" in caplog.text and "'acme/cached'" in caplog.text
    with pytest.raises(ModelNotFoundError, match=r"'acme/other'.*cannot be reached.*local model folder"):
        hub.resolve_model_path("acme/other", cache_folder=cache)


def test_a_graph_over_2_gb_travels_through_the_hub_with_its_data_file(server, tiny_model_copy, tmp_path,
                                                                      monkeypatch):
    """Pushed with its weights file, fetched into the Hub cache (both files links into blobs/), run as it is."""
    from st_onnx.export import export_model_folder, graph_files

    monkeypatch.setattr(graph_files, "MAX_PROTO_BYTES", 4096)  # the tiny graph takes the path of one over 2 GB
    export_model_folder(tiny_model_copy, "fp32")
    model = SentenceTransformer(str(tiny_model_copy), backend="onnx", device="cpu", onnx_options={"export": "never"})
    model.push_to_hub("acme/large", token=TOKEN)
    pushed = set(server.files("acme/large"))
    assert {"onnx/st_onnx/fp32.onnx", "onnx/st_onnx/fp32.onnx.data", "onnx/st_onnx/fp32.json"} <= pushed
    loaded = SentenceTransformer("acme/large", cache_folder=tmp_path / "cache", backend="onnx", device="cpu",
                                 use_auth_token=TOKEN, onnx_options={"export": "never"})
    data = loaded.model_path / "onnx" / "st_onnx" / "fp32.onnx.data"
    assert data.is_symlink() and data.resolve().parent.name == "blobs"
    np.testing.assert_array_equal(loaded.encode(SENTENCES), model.encode(SENTENCES))


def test_a_token_that_is_no_string_is_refused_not_swapped_for_the_saved_login(server, tiny_model_dir, monkeypatch):
    """token=12345 (a number from a config file) would have pushed with HF_TOKEN or the saved login instead."""
    monkeypatch.setenv("HF_TOKEN", "hf_saved_login_token")
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match="token must be a Hugging Face token string, or True/False; got int"):
        model.push_to_hub("acme/numbers", token=12345)
    assert not any(path.startswith("/api/repos") for _, path in server.requests)


def test_save_to_hub_refuses_a_token_in_privates_place(server, tiny_model_dir, monkeypatch):
    """sentence-transformers 3-6 put token third, where 2.x's save_to_hub has private: the token string would have
    been sent as the privacy flag and the push made with HF_TOKEN's (another account's) login."""
    monkeypatch.setenv("HF_TOKEN", BOB_TOKEN)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(InvalidInputError, match=r"got str as private.*token third; pass token="):
        model.save_to_hub("alice/mine", None, TOKEN)
    assert not any(path.startswith("/api/repos") for _, path in server.requests)


def test_save_to_hub_refuses_the_newer_order_that_asks_for_a_private_repo(server, tiny_model_dir):
    """save_to_hub(repo, None, None, True) asks sentence-transformers 3-6 for a private repo; in 2.x's order the True
    is the commit message, and the model went to a public repo with a commit titled 'True'."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", use_auth_token=TOKEN)
    with pytest.raises(InvalidInputError, match=r"commit_message=True .*pass private=, token= and safe_serialization="):
        model.save_to_hub("alice/secret", None, None, True)
    with pytest.raises(InvalidInputError, match=r"local_model_path=False"):  # 3-6: safe_serialization fifth
        model.save_to_hub("alice/secret", None, None, None, False)
    assert not any(path.startswith("/api/repos") for _, path in server.requests)
    url = model.save_to_hub("alice/secret", None, True, None)  # 2.x's: private third; no message, its default
    repo = server.repos["alice/secret"]
    assert "alice/secret" in url and repo.private and repo.messages[-1] == "Add new SentenceTransformer model."


def test_a_prompt_name_as_the_fifth_argument_for_a_hub_id_is_refused_naming_the_order(server, tiny_model_dir,
                                                                                      tmp_path, monkeypatch):
    """2.4-5 put default_prompt_name fifth: for a Hub id, 'query' went to the Hub as the token, and the 401 said the
    repo was private, gated or missing."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu", prompts={"query": "query: "},
                                use_auth_token=TOKEN)
    model.push_to_hub("alice/prompted")
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "cache"))
    with pytest.raises(InvalidInputError, match=r"use_auth_token is 'query', which is no Hugging Face token.*2\.4 to "
                                                r"5 put default_prompt_name fifth"):
        SentenceTransformer("alice/prompted", None, "cpu", None, "query")
    assert SentenceTransformer("alice/prompted", None, "cpu", None, TOKEN).prompts["query"] == "query: "


def _push_folder(server, repo_id: str, folder: Path) -> str:
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
             if p.is_file() and "st_onnx" not in p.parts}
    return server.add_repo(repo_id, files)


def test_a_bare_name_is_a_sentence_transformers_model_as_there(server, tiny_model_dir, tmp_path, monkeypatch):
    """SentenceTransformer('all-MiniLM-L6-v2') means sentence-transformers/all-MiniLM-L6-v2 (online, and offline
    from the cache sentence-transformers fills); it was asked of the Hub as 'all-MiniLM-L6-v2' and not found."""
    from huggingface_hub import constants

    sha = _push_folder(server, "sentence-transformers/tiny-st", tiny_model_dir)
    cache = tmp_path / "cache"
    model = SentenceTransformer("tiny-st", cache_folder=cache, device="cpu")
    assert model.model_path == cache / "models--sentence-transformers--tiny-st" / "snapshots" / sha
    with pytest.raises(ModelNotFoundError, match="'bert-base-uncased'"):  # an original checkpoint: its own repo
        SentenceTransformer("bert-base-uncased", cache_folder=cache, device="cpu")
    assert "/api/models/bert-base-uncased" in server.paths_requested("GET")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert SentenceTransformer("tiny-st", cache_folder=cache, device="cpu").model_path == model.model_path


def test_original_checkpoint_names_match_in_any_case_as_in_sentence_transformers():
    assert hub.hub_model_id("BERT-base-uncased") == "BERT-base-uncased"  # not sentence-transformers/BERT-...
    assert hub.hub_model_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_sentence_transformers_home_is_the_cache_root(server, tmp_path, monkeypatch):
    """A cache moved to another disk with SENTENCE_TRANSFORMERS_HOME is where downloads go and offline loads look."""
    from huggingface_hub import constants

    sha = server.add_repo("acme/home", _hub_files(["modules.json", "config.json"]))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st-home"))
    assert hub.resolve_model_path("acme/home") == tmp_path / "st-home" / "models--acme--home" / "snapshots" / sha
    assert not (tmp_path / "hf-cache").exists()


def test_token_false_pushes_with_no_saved_login(server, tiny_model_dir, monkeypatch):
    """token=False means: not the saved login, not HF_TOKEN; the push is refused, not made as that account."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    with pytest.raises(HubError, match="needs a Hugging Face token"):
        model.save_to_hub("nologin", organization="acme", token=False)
    assert "acme/nologin" not in server.repos


@pytest.mark.parametrize("value", [0, None, "yes"])
def test_safe_serialization_other_than_true_is_refused(value):
    """0 asked for pickled weights as False does: refused alike, not written as safetensors without a word."""
    from st_onnx.saving import check_safe_serialization

    check_safe_serialization(True)
    with pytest.raises(InvalidInputError, match="safe_serialization"):
        check_safe_serialization(value)


def test_a_hub_that_accepts_and_never_answers_times_out(server, tmp_path, monkeypatch):
    """A stalled proxy or endpoint held the constructor forever (no timeout on the metadata call)."""
    import socket
    import threading

    from huggingface_hub import constants

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []  # accepted, never answered
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    outcome = []

    def load():
        try:
            hub.resolve_model_path("acme/stalled", cache_folder=tmp_path / "cache")
        except Exception as e:  # noqa: BLE001 - the test looks at it below
            outcome.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=60)
    listener.close()
    assert not worker.is_alive(), "still waiting on a Hub that never answers after 60 s"
    assert isinstance(outcome[0], ModelNotFoundError) and "cannot be reached" in str(outcome[0])


def test_a_repo_without_model_files_is_named(server, tmp_path):
    server.add_repo("acme/empty", _hub_files([".gitattributes", "README.md"]))
    with pytest.raises(ModelNotFoundError, match="Hub repo 'acme/empty' holds no model files"):
        hub.resolve_model_path("acme/empty", cache_folder=tmp_path / "cache")


def test_token_and_revision_of_the_wrong_type_are_refused(tiny_model_dir, monkeypatch):
    """token=12345 was dropped for HF_TOKEN's login; revision=3 failed inside huggingface_hub's URL quoting."""
    monkeypatch.setenv("HF_TOKEN", "hf_someone_else")
    with pytest.raises(InvalidInputError, match="token must be a token string or True/False; got int"):
        SentenceTransformer(str(tiny_model_dir), device="cpu", token=12345)
    with pytest.raises(InvalidInputError, match="revision must be a branch, tag or commit id string; got int 3"):
        SentenceTransformer("acme/x", device="cpu", revision=3)


def test_cache_folder_with_a_tilde_is_the_home_folder_for_graphs_too(tiny_model_dir, tmp_path, monkeypatch):
    """Downloads expand '~' in cache_folder; the graph cache (read-only folders, modules=[...]) made a folder
    named '~' in the working directory."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    modules = list(SentenceTransformer(str(tiny_model_dir), device="cpu").torch_modules)
    SentenceTransformer(modules=modules, backend="onnx", device="cpu", cache_folder="~/models")
    assert not (cwd / "~").exists() and (home / "models" / "st_onnx_graphs").is_dir()
