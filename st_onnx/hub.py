"""The Hugging Face Hub: load a model by id, push a model to a repo. The only importer of huggingface_hub.

Loading (``SentenceTransformer("org/name")`` -> ``resolve_model_path``): the repo's file list is read, the files a
sentence-transformers model needs are picked (``select_files``: no TensorFlow/Flax/Rust weights, no other ONNX
exports, no ``pytorch_model.bin`` beside a ``model.safetensors``) and downloaded with ``snapshot_download`` into
the huggingface_hub cache layout (``cache_folder``, else ``SENTENCE_TRANSFORMERS_HOME``, else ``HF_HOME/hub``). With
``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, the cached snapshot is used.

Pushing (``model.save_to_hub``): the repo is created, the model is saved into a temporary folder (its model card
only if the repo has no README.md yet, or ``replace_model_card``) and the folder is uploaded in one commit.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported; this module asks its
``constants`` at call time, so those settings apply exactly as huggingface_hub applies them.

Failures raise ``ModelNotFoundError`` (loading; a ``FileNotFoundError``) or ``HubError`` (pushing), naming the
repo id and the fix. A token is never put into a message, a log line or a file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import posixpath
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .errors import HubError, InvalidInputError, ModelNotFoundError

logger = logging.getLogger(__name__)

# Files a sentence-transformers model never needs (fnmatch patterns; '*' also matches '/').
SKIPPED_FILES = (
    "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.gguf", "*.mlmodel", "*.mlpackage/*",  # other frameworks' weights
    "onnx/*", "openvino/*", "coreml/*",  # other exports (sentence-transformers' and optimum's ONNX/OpenVINO graphs)
    "optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin", "checkpoint-*/*",  # training leftovers
)
# Always fetched: st-onnx's fused graphs and their manifests (used by backend='onnx', checked for staleness).
FUSED_FILES = ("onnx/st_onnx/*",)

OFFLINE_HINT = "HF_HUB_OFFLINE=1 is set"

# The Hub's original checkpoints, from before repos had owners: a bare name among them is that repo; any other bare
# name is sentence-transformers' ("all-MiniLM-L6-v2" -> "sentence-transformers/all-MiniLM-L6-v2"), the rule
# sentence-transformers applies (its util.misc.ORIGINAL_TRANSFORMER_MODELS).
_UNOWNED_CHECKPOINTS = frozenset(
    [f"albert-{size}-v{v}" for size in ("base", "large", "xlarge", "xxlarge") for v in (1, 2)]
    + [f"bert-{name}" for name in (
        "base-uncased", "base-cased", "large-uncased", "large-cased", "base-chinese", "base-german-cased",
        "base-german-dbmdz-cased", "base-german-dbmdz-uncased", "base-multilingual-cased",
        "base-multilingual-uncased", "base-cased-finetuned-mrpc", "large-cased-whole-word-masking",
        "large-uncased-whole-word-masking", "large-cased-whole-word-masking-finetuned-squad",
        "large-uncased-whole-word-masking-finetuned-squad")]
    + [f"distilbert-{name}" for name in (
        "base-uncased", "base-cased", "base-german-cased", "base-multilingual-cased",
        "base-cased-distilled-squad", "base-uncased-distilled-squad", "base-uncased-finetuned-sst-2-english")]
    + ["roberta-base", "roberta-large", "roberta-large-mnli", "roberta-base-openai-detector",
       "roberta-large-openai-detector", "distilroberta-base", "camembert-base", "xlm-roberta-base",
       "xlm-roberta-large"]
    + [f"xlm-roberta-large-finetuned-{name}" for name in (
        "conll02-dutch", "conll02-spanish", "conll03-english", "conll03-german")]
    + [f"xlm-{name}" for name in (
        "clm-ende-1024", "clm-enfr-1024", "mlm-100-1280", "mlm-17-1280", "mlm-en-2048", "mlm-ende-1024",
        "mlm-enfr-1024", "mlm-enro-1024", "mlm-tlm-xnli15-1024", "mlm-xnli15-1024")]
    + ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt", "ctrl", "transfo-xl-wt103",
       "xlnet-base-cased", "xlnet-large-cased"]
    + [f"t5-{size}" for size in ("small", "base", "large", "3b", "11b")]
)


def hub_model_id(name: str) -> str:
    """The Hub repo a model name means, as sentence-transformers reads it: an owner-less name other than the
    original transformers checkpoints is one of sentence-transformers' own models."""
    if "/" not in name and name.lower() not in _UNOWNED_CHECKPOINTS:
        return f"sentence-transformers/{name}"
    return name


# -- loading ------------------------------------------------------------------------------------------------------
def select_files(paths: Iterable[str], include: Iterable[str] = ()) -> list[str]:
    """The repo files a sentence-transformers model needs, out of ``paths`` (the repo's file list).

    ``include``: fnmatch patterns of files to fetch anyway (e.g. ``"onnx/model.onnx"``).
    """
    paths = list(paths)
    include = tuple(include)
    with_safetensors = {posixpath.dirname(p) for p in paths if p.endswith((".safetensors", ".safetensors.index.json"))}
    selected = []
    for path in paths:
        if _matches(path, include) or _matches(path, FUSED_FILES):
            selected.append(path)
        elif _matches(path, SKIPPED_FILES) or ("/" not in path and path.endswith((".onnx", ".onnx_data"))):
            continue
        elif posixpath.basename(path).startswith("pytorch_model") and posixpath.dirname(path) in with_safetensors:
            continue  # the same weights as model.safetensors, in the older format
        else:
            selected.append(path)
    return selected


def resolve_model_path(model_id: str, cache_folder: str | os.PathLike | None = None, token: bool | str | None = None,
                       *, revision: str | None = None, include: Iterable[str] = (),
                       local_files_only: bool = False) -> Path:
    """Download (or find in the cache) the model ``model_id`` and return its local snapshot folder.

    Args:
        model_id: a Hub id, ``namespace/name`` (or a bare canonical name).
        cache_folder: the cache root; None: ``SENTENCE_TRANSFORMERS_HOME``, else huggingface_hub's (``HF_HOME/hub``).
        token: a token string, True (the saved login / ``HF_TOKEN``), False (none), None (huggingface_hub's default).
        revision: a branch, tag or commit; None: the default branch.
        include: fnmatch patterns of files to fetch although ``select_files`` skips them (e.g. ``"onnx/model.onnx"``).
        local_files_only: never ask the Hub: the cached snapshot or ModelNotFoundError (as HF_HUB_OFFLINE=1).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    cache_dir = _cache_dir(cache_folder)
    if local_files_only or constants.is_offline_mode():
        return _cached_snapshot(model_id, cache_dir, revision, include, failure=None,
                                local_files_only=local_files_only)
    try:
        # a bounded wait (huggingface_hub's for metadata, HF_HUB_ETAG_TIMEOUT): a proxy or endpoint that accepts
        # and never answers would otherwise hold the constructor forever, short of the cache fallback below
        info = HfApi(token=token, **_library()).model_info(model_id, revision=revision,
                                                           timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"{model_id!r} is neither a local folder nor a valid Hub id ({e}); pass the path of a model folder or "
            "a Hub id such as 'sentence-transformers/all-MiniLM-L6-v2'"
        ) from e
    except (HfHubHTTPError, *_network_errors()) as e:
        # as huggingface_hub does: a snapshot already cached still loads (a warning says why the Hub was not used)
        return _cached_snapshot(model_id, cache_dir, revision, include, failure=e)
    files = select_files([s.rfilename for s in info.siblings or []], include)
    if not [f for f in files if posixpath.basename(f) not in (".gitattributes", "README.md")]:
        raise ModelNotFoundError(f"Hub repo {model_id!r} holds no model files; check the id or push a model to it")
    return _download(model_id, cache_dir, revision, token, files)


def _download(model_id: str, cache_dir: str, revision: str | None, token, files: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    logger.info("downloading %d files of %r into %s", len(files), model_id, cache_dir)
    try:
        folder = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                   allow_patterns=_exact_patterns(files), **_library())
    except (HfHubHTTPError, LocalEntryNotFoundError, *_network_errors()) as e:
        raise _load_error(model_id, e) from e
    return Path(folder)


def _cached_snapshot(model_id: str, cache_dir: str, revision: str | None, include: Iterable[str],
                     failure: BaseException | None, local_files_only: bool = False) -> Path:
    """The cached snapshot of ``model_id`` (complete for ``select_files``), or ModelNotFoundError saying why not.

    ``failure``: why the Hub was not asked (None: offline mode), raised as the error when nothing is cached.
    """
    from huggingface_hub import constants, get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import (CachedRepoTreeNotFoundError, HfHubHTTPError, HFValidationError,
                                        IncompleteSnapshotError, LocalEntryNotFoundError)

    why = "local_files_only=True was passed" if local_files_only else OFFLINE_HINT
    if failure is not None:
        why = f"the Hub at {constants.ENDPOINT} cannot be reached ({_reason(failure)})"
    try:
        tree = get_cached_repo_tree(model_id, revision=revision, cache_dir=cache_dir)
        patterns = _exact_patterns(select_files([f.path for f in tree], include))
    except CachedRepoTreeNotFoundError:
        patterns = None  # no cached file listing (an older cache): take the snapshot folder as it is
    except HFValidationError as e:
        raise ModelNotFoundError(f"{model_id!r} is neither a local folder nor a valid Hub id ({e})") from e
    try:
        folder = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                   allow_patterns=patterns)
    except LocalEntryNotFoundError as e:
        if isinstance(failure, HfHubHTTPError):
            raise _load_error(model_id, failure) from failure
        state = "is only partly in" if isinstance(e, IncompleteSnapshotError) else "is not in"
        fix = ("check the network connection and HF_ENDPOINT, then retry" if failure is not None else
               "pass local_files_only=False to download it once" if local_files_only else
               "unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) to download it once")
        at = f" at revision {revision!r}" if revision is not None else ""
        raise ModelNotFoundError(
            f"model {model_id!r}{at} is not a local folder and {state} the Hugging Face cache {cache_dir}, and {why}. "
            f"Pass the path of a local model folder instead (e.g. one written by model.save(path)), or {fix}"
        ) from (failure or e)
    if failure is None:
        logger.info("using the cached snapshot of %r (%s): %s", model_id, why, folder)
    else:
        logger.warning("could not ask the Hub at %s for %r (%s); using its cached snapshot %s",
                       constants.ENDPOINT, model_id, _reason(failure), folder)
    return Path(folder)


def _cache_dir(cache_folder: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    if cache_folder is None:
        cache_folder = os.environ.get("SENTENCE_TRANSFORMERS_HOME") or constants.HF_HUB_CACHE
    return str(Path(cache_folder).expanduser())


def _load_error(model_id: str, e: BaseException) -> ModelNotFoundError:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RevisionNotFoundError

    where = f"the Hub at {constants.ENDPOINT}"
    status = _status(e)
    local = "or pass the path of a local model folder"
    if isinstance(e, GatedRepoError):
        msg = (f"model {model_id!r} is gated on {where} ({status}): request access on its page, then pass "
               f"token='hf_...' (a token of the account granted access), {local}")
    elif isinstance(e, RevisionNotFoundError):
        msg = f"model {model_id!r} has no such revision on {where}: check the branch, tag or commit, {local}"
    elif status == 401:
        msg = (f"{where} refused access to model {model_id!r} (401 Unauthorized): no valid token was sent, and the "
               f"repo is private, gated or does not exist. Check the id; if it is private pass token='hf_...' "
               f"(a token with read access to {model_id!r}), set HF_TOKEN or run `hf auth login`, {local}")
    elif status == 403:
        msg = (f"{where} forbids this token to read model {model_id!r} (403 Forbidden): use a token with read "
               f"access to {model_id!r}, {local}")
    elif status == 404:
        msg = (f"model {model_id!r} is not a local folder and was not found on {where} (404 Not Found): check the "
               f"id (namespace/name); if the repo is private pass token='hf_...', {local}")
    else:
        msg = (f"could not download model {model_id!r} from {where} ({_reason(e)}): check the network connection "
               f"and HF_ENDPOINT and retry, {local}")
    return ModelNotFoundError(msg)


# -- pushing ------------------------------------------------------------------------------------------------------
def save_to_hub(model, repo_name: str, organization: str | None = None, private: bool | None = None,
                commit_message: str | None = "Add new SentenceTransformer model.",
                local_model_path: str | os.PathLike | None = None,
                exist_ok: bool = False, replace_model_card: bool = False, train_datasets: list[str] | None = None,
                token: bool | str | None = None) -> str:
    """Create the repo ``organization/repo_name``, upload the model (or ``local_model_path``), return the commit URL.

    As sentence-transformers 2.x: without ``organization`` (and no '/' in ``repo_name``) the repo goes to the
    token's user; the model card is written unless the repo already has a README.md (``replace_model_card`` forces
    it); ``local_model_path`` uploads that folder instead of saving the model.
    """
    if commit_message is None:
        commit_message = "Add new SentenceTransformer model."
    return push(model, _join_repo_id(repo_name, organization), private=private, commit_message=commit_message,
                local_model_path=local_model_path, exist_ok=exist_ok, replace_model_card=replace_model_card,
                train_datasets=train_datasets, token=token)


def push_to_hub(model, repo_id: str, token: bool | str | None = None, private: bool | None = None,
                safe_serialization: bool = True, commit_message: str | None = None,
                local_model_path: str | None = None, exist_ok: bool = False, replace_model_card: bool = False,
                train_datasets: list[str] | None = None, revision: str | None = None,
                create_pr: bool = False) -> str:
    """sentence-transformers 3+'s ``push_to_hub``: ``save_to_hub`` with the repo id whole (a bare name goes to the
    token's user). Weights are always safetensors; pushing to a branch or as a pull request is not supported."""
    from .saving import check_safe_serialization

    check_safe_serialization(safe_serialization)
    if revision is not None or create_pr:
        raise InvalidInputError(f"push_to_hub(revision={revision!r}, create_pr={create_pr!r}) is not supported: "
                                "st-onnx pushes to the main branch; for a branch or a pull request, save the "
                                "model (model.save(path)) and upload it with huggingface_hub.upload_folder")
    if commit_message is None:
        commit_message = "Add new SentenceTransformer model" + (
            "" if getattr(model, "backend", "torch") == "torch" else f" with an {model.backend} backend")
    return push(model, repo_id, private=private, commit_message=commit_message, local_model_path=local_model_path,
                exist_ok=exist_ok, replace_model_card=replace_model_card, train_datasets=train_datasets, token=token)


def push(model, repo_id: str, *, private: bool | None, commit_message: str, local_model_path: str | None,
         exist_ok: bool, replace_model_card: bool, train_datasets: list[str] | None,
         token: bool | str | None) -> str:
    """Create ``repo_id`` (the token's user's when it has no '/'), upload, return the commit URL."""
    from huggingface_hub import HfApi, constants

    if not isinstance(repo_id, str) or not repo_id.strip("/"):
        raise InvalidInputError(f"repo_id must be 'name' or 'owner/name'; got {repo_id!r}")
    if local_model_path is not None and not Path(local_model_path).is_dir():
        raise InvalidInputError(f"local_model_path {str(local_model_path)!r} is not a folder; pass a model folder "
                                "(one written by model.save(path)) or leave it None to upload this model")
    if constants.is_offline_mode():
        raise HubError(f"cannot push to {repo_id!r}: {OFFLINE_HINT}. Unset HF_HUB_OFFLINE (or set it to 0) to "
                       "push, or save the model locally with model.save(path)")
    api = HfApi(token=_require_token(token, repo_id), **_library())
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        if not exist_ok and api.repo_exists(repo_id):  # before the save below, which may take minutes
            raise _exists_error(repo_id)
        keep_card = not replace_model_card and api.file_exists(repo_id, "README.md")  # False: no such repo yet
        with contextlib.ExitStack() as cleanup:
            folder = local_model_path
            if folder is None:  # saved before the repo is made: a save that fails (a full disk) makes no empty repo
                folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="st-onnx-push-"))) / "model"
                model.save(folder, model_name=repo_id, create_model_card=not keep_card,
                           train_datasets=train_datasets)
            _create_repo(api, repo_id, private, exist_ok)
            commit = _upload(api, repo_id, folder, commit_message, keep_card)
    except HubError:
        raise
    except Exception as e:
        mapped = _push_error(repo_id, e)
        if mapped is None:
            raise
        raise mapped from e
    logger.info("pushed %r: %s", repo_id, commit.commit_url)
    return commit.commit_url


def _join_repo_id(repo_name: str, organization: str | None) -> str:
    if not isinstance(repo_name, str) or not repo_name.strip("/"):
        raise InvalidInputError(f"repo_name must be a non-empty string such as 'my-model'; got {repo_name!r}")
    if "/" in repo_name:
        namespace, name = repo_name.split("/", 1)
        if organization is not None and organization != namespace:
            raise InvalidInputError(
                f"repo_name {repo_name!r} names the namespace {namespace!r} but organization={organization!r}; "
                f"give the namespace once: repo_name={name!r}, organization={organization!r}, or "
                f"repo_name={repo_name!r} alone"
            )
        return repo_name
    return f"{organization}/{repo_name}" if organization else repo_name


def _require_token(token: bool | str | None, repo_id: str) -> str:
    """The token to push with: the one given, else the saved login or HF_TOKEN; HubError when there is none."""
    from huggingface_hub import get_token

    if token is not None and not isinstance(token, (bool, str)):
        raise InvalidInputError(f"token must be a Hugging Face token string, or True/False; got "
                                f"{type(token).__name__} {token!r}")
    if isinstance(token, str) and token:
        return token
    found = get_token() if token is not False else None
    if not found:
        raise HubError(
            f"pushing to {repo_id!r} needs a Hugging Face token with write access, and none was found: pass "
            "token='hf_...' to SentenceTransformer(...), set the HF_TOKEN environment variable, or run "
            "`hf auth login` (tokens: https://huggingface.co/settings/tokens)"
        )
    return found


def _create_repo(api, repo_id: str, private: bool | None, exist_ok: bool) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private, exist_ok=exist_ok)
    except HfHubHTTPError as e:
        if _status(e) == 409:
            raise _exists_error(repo_id) from e
        raise


def _exists_error(repo_id: str) -> HubError:
    return HubError(f"the Hub repo {repo_id!r} already exists (409 Conflict): pass exist_ok=True to push into it (a "
                    "new commit; its README.md is kept unless replace_model_card=True), or choose another repo_name")


def _upload(api, repo_id: str, folder: str | os.PathLike, commit_message: str, keep_card: bool):
    logger.info("uploading %s to %r%s", folder, repo_id, " (keeping the repo's README.md)" if keep_card else "")
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                             ignore_patterns=["README.md"] if keep_card else None)


def _push_error(repo_id: str, e: BaseException) -> HubError | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    where = f"the Hub at {constants.ENDPOINT}"
    local = "or save the model locally with model.save(path)"
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else "your user"
    status = _status(e)
    if isinstance(e, _network_errors()):
        return HubError(f"cannot reach {where} to push {repo_id!r} ({_reason(e)}): check the network connection "
                        f"and HF_ENDPOINT, then retry, {local}")
    if not isinstance(e, HfHubHTTPError):
        return None
    if status == 401:
        msg = (f"{where} rejected the token while pushing to {repo_id!r} (401 Unauthorized): the token is invalid "
               "or expired. Create a token with write access at https://huggingface.co/settings/tokens and pass "
               "token='hf_...', set HF_TOKEN or run `hf auth login`")
    elif status == 403:
        msg = (f"{where} forbids this token to write to {repo_id!r} (403 Forbidden): use a write token of a member "
               f"of {namespace!r}, or push to your own namespace (organization=None)")
    elif status == 404:
        msg = (f"{where} did not find {repo_id!r} while pushing (404 Not Found): check the organization "
               f"{namespace!r} exists and the token may write to it")
    else:
        msg = f"pushing to {repo_id!r} failed on {where} ({_reason(e)}): retry, {local}"
    return HubError(msg)


# -- small helpers ------------------------------------------------------------------------------------------------
def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _exact_patterns(paths: list[str]) -> list[str]:
    """fnmatch patterns matching exactly these paths (glob characters in names escaped)."""
    return [glob.escape(p) for p in paths]


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'the Hub cannot be reached' (huggingface_hub's HTTP client is httpx2)."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return (httpx2.TransportError, OfflineModeIsEnabled)


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _reason(e: BaseException) -> str:
    status = _status(e)
    return f"HTTP {status}" if status is not None else type(e).__name__


def _library() -> dict[str, Any]:
    try:
        version = metadata.version("st-onnx")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"library_name": "st-onnx", "library_version": version}
