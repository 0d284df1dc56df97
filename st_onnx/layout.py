"""The on-disk format of a model folder: file names, and reading/writing its JSON configs (writes go through
``folders``, which replaces files and folders whole).

Plain json and pathlib only: the ONNX-only path reads model folders without torch.

A model folder in the sentence-transformers format::

    modules.json                      the module list: idx, name, path, type
    config_sentence_transformers.json versions, prompts, similarity_fn_name
    sentence_bert_config.json         the Transformer module's options (max_seq_length, do_lower_case)
    config.json, model.safetensors, tokenizer.json, ...   the transformer (transformers' format)
    1_Pooling/config.json             the Pooling module
    2_Dense/config.json + model.safetensors
    3_Normalize/
    onnx/model.onnx                   sentence-transformers' transformer-only graph (never written here)
    onnx/st_onnx/<precision>.onnx     st-onnx's fused graph: token ids -> finished embedding
    onnx/st_onnx/<precision>.json     its manifest: weights fingerprint, precision, versions, parity report
    onnx/st_onnx/fp16-packed.onnx     the fp16 graph in ONNX Runtime's packing mode (CUDA only; opt-in) + .json
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ModelFolderError
from .folders import atomic_file

logger = logging.getLogger(__name__)

MODULES_JSON = "modules.json"
ST_CONFIG_JSON = "config_sentence_transformers.json"
SBERT_CONFIG_JSON = "sentence_bert_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
HF_CONFIG_JSON = "config.json"
FUSED_DIR = "onnx/st_onnx"
PRECISIONS = ("fp32", "fp16", "int8")
PACKED_SUFFIX = "-packed"
# How the exporter lays out a fused graph (which fusions, for which target): recorded in the manifest as "layout".
# 1: every ORT fusion for every precision. 2: CPU graphs (fp32, int8) keep Attention, SkipLayerNormalization and
# BiasGelu unfused (export/optimize.py: 1.3x-1.7x faster on CPUs). A graph of an older layout computes the same
# embeddings, only slower: with torch weights at hand and export="auto" it is re-exported once.
GRAPH_LAYOUT = 2

# How a manifest's module_digest (modules/stack.py content_digest) was computed: a digest recorded under another
# scheme (before this prefix: "sha256:...", which also hashed the model config's "architectures") is not
# comparable, and is read as no digest at all, as a graft's: comparing it would call unchanged modules changed.
MODULE_DIGEST_SCHEME = "st-onnx-modules/2:"

# modules.json "type" strings, written in the classic spelling every sentence-transformers release loads.
MODULE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}


def module_kind(type_name: str) -> str:
    """Map a modules.json type (any sentence-transformers spelling, or st-onnx's own) to a kind name.

    A class of another package (a repository's own ``custom_st.Pooling``) is refused, not replaced by st-onnx's
    module of the same name: st-onnx runs no repository code, and its own module would compute other embeddings.
    """
    last = type_name.rsplit(".", 1)[-1]
    if not type_name.startswith(("sentence_transformers.", "st_onnx.")):
        raise ModelFolderError(
            f"modules.json names the module class {type_name!r}, which is neither sentence-transformers' nor "
            f"st-onnx's (a repository's own code, which st-onnx does not run); allowed: "
            f"{', '.join(MODULE_TYPES.values())}, or another sentence-transformers spelling of these"
        )
    if last not in MODULE_TYPES:
        raise ModelFolderError(
            f"modules.json names a module type st-onnx does not know: {type_name!r}; "
            f"known: {', '.join(MODULE_TYPES)} (in any sentence-transformers spelling)"
        )
    return last


def fused_graph_path(folder: str | os.PathLike, precision: str) -> Path:
    """Where the fused graph for ``precision`` lives inside a model folder."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision {precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
    return Path(folder) / FUSED_DIR / f"{precision}.onnx"


def packed_graph_path(graph_path: str | os.PathLike) -> Path:
    """Where the packing-mode version of a fused graph goes: beside it, ``<precision>-packed.onnx``."""
    graph_path = Path(graph_path)
    return graph_path.with_name(f"{graph_path.stem}{PACKED_SUFFIX}.onnx")


def export_command(precision: str | None, model_dir: Any = "MODEL_DIR", out_dir: Any = "MODEL_DIR") -> str:
    """The `st-onnx export` line that writes the ``precision`` graph (the CLI's default is fp32): a message that
    names the command without the precision sends the user to export fp32 and fail again."""
    wanted = f" --precision {precision}" if precision in PRECISIONS and precision != "fp32" else ""
    model_dir, out_dir = (p if p in ("MODEL_DIR", "OUT_DIR", "NEW_DIR") else shlex.quote(str(p))
                          for p in (model_dir, out_dir))  # a path with spaces stays one argument
    return f"st-onnx export {model_dir} {out_dir}{wanted}"


def graph_precision(graph_path: str | os.PathLike) -> str | None:
    """The precision a graph's file name says (``int8.onnx``, ``fp16-packed.onnx``), else None."""
    stem = Path(graph_path).name.split(".")[0].removesuffix(PACKED_SUFFIX)
    return stem if stem in PRECISIONS else None


def manifest_path(graph_path: str | os.PathLike) -> Path:
    return Path(graph_path).with_suffix(".json")


def graph_data_path(graph_path: str | os.PathLike) -> Path:
    """Where a graph too large for one protobuf (2 GB) keeps its weights: ``fp32.onnx`` -> ``fp32.onnx.data``
    beside it (ONNX Runtime's own naming). Graphs that fit have no such file."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.name + ".data")


def read_json(path: str | os.PathLike, what: str | None = None) -> Any:
    """Read a JSON file, raising ModelFolderError that names the file when it is missing or broken."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ModelFolderError(f"{what or path.name} is missing: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path} is not valid JSON ({e}); restore the file or re-save the model") from e


def read_json_if_exists(path: str | os.PathLike, default: Any = None) -> Any:
    return read_json(path) if Path(path).is_file() else default


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a reader (another process loading the model) sees the old file or the
    new one, never a half-written one."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_modules_json(folder: str | os.PathLike) -> list[dict]:
    """The validated module list of a sentence-transformers folder."""
    path = Path(folder) / MODULES_JSON
    entries = read_json(path)
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"{path} must hold a non-empty JSON list of modules; got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "type" not in entry or "path" not in entry:
            raise ModelFolderError(
                f"{path}: entry {i} must be an object with 'type' and 'path' keys; got {entry!r}"
            )
        if not isinstance(entry["type"], str) or not isinstance(entry["path"], str) or (
                isinstance(entry.get("idx", 0), bool) or not isinstance(entry.get("idx", 0), int)):
            raise ModelFolderError(f"{path}: entry {i} must have a string 'type' and 'path' and a whole-number "
                                   f"'idx'; got {entry!r}")
        module_kind(entry["type"])
        _check_module_path(entry["path"], path)
    return sorted(entries, key=lambda e: e.get("idx", 0))


def _check_module_path(value: str, where: Path) -> None:
    """A module path stays inside the model folder (as sentence-transformers 6 requires): a folder cannot make
    st-onnx load weights, a tokenizer or config from elsewhere on the disk."""
    from pathlib import PureWindowsPath

    parts = PureWindowsPath(value)  # splits on both separators, and sees 'C:' and '\\server' anchors too
    if parts.anchor or ".." in parts.parts or "\0" in value:
        raise ModelFolderError(f"{where} names the module path {value!r}; allowed: a relative path inside the "
                               "model folder without '..' (such as '1_Pooling', or '' for the folder itself)")


def is_length_limit(value: Any) -> bool:
    """Whether ``value`` is a real sequence length limit: a positive int below transformers' "no limit"
    placeholder (tokenizer configs write 1e30 when a tokenizer has none)."""
    return isinstance(value, int) and 0 < value < 100_000


def read_transformer_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The Transformer options stored in a folder, in the classic or the sentence-transformers 6 spelling.

    Torch-free (the ONNX-only path reads it too); ``modules.transformer`` re-exports it.
    """
    folder = Path(folder)
    raw = read_json_if_exists(folder / SBERT_CONFIG_JSON, {}) or {}
    config: dict[str, Any] = {}
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{folder / SBERT_CONFIG_JSON} holds a JSON {type(raw).__name__}; allowed: an object "
                               "(max_seq_length, do_lower_case, ...)")
    if "max_seq_length" in raw and raw["max_seq_length"] is not None:
        value = raw["max_seq_length"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelFolderError(f"{folder / SBERT_CONFIG_JSON} has max_seq_length {value!r}; allowed: a positive "
                                   "whole number of tokens, or null (the tokenizer's limit)")
        config["max_seq_length"] = value
    else:
        # sentence-transformers 6 keeps the limit in the tokenizer's config, capped at the position embeddings
        # when it loads (a tokenizer saying 512 over 128 positions gets 128)
        tok = read_json_if_exists(folder / TOKENIZER_CONFIG_JSON, {}) or {}
        limit = tok.get("model_max_length")
        if is_length_limit(limit):
            positions = (read_json_if_exists(folder / HF_CONFIG_JSON, {}) or {}).get("max_position_embeddings")
            config["max_seq_length"] = min(limit, positions) if is_length_limit(positions) else limit
    check_text_transformer(raw, f"{folder / SBERT_CONFIG_JSON}")
    config["do_lower_case"] = bool(raw.get("do_lower_case", False))
    for key in ("model_args", "tokenizer_args", "config_args"):
        # as sentence-transformers: a folder cannot turn trust_remote_code on for itself (only the caller can)
        given = raw.get(key) if isinstance(raw.get(key), dict) else {}
        args = {k: v for k, v in given.items() if k != "trust_remote_code"}
        if args:
            config[key] = args
    return config


# sentence-transformers 6's Transformer settings at the values that embed plain text as the classic module does
_TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
_PLAIN_TEXT = {"transformer_task": "feature-extraction", "module_output_name": "token_embeddings"}
_TOKEN_CHANGING = ("processing_kwargs", "query_length", "document_length", "query_expansion")


def check_text_transformer(config: dict[str, Any], where: str) -> None:
    """Raise ModelFolderError, naming the settings, when a Transformer's config (``sentence_bert_config.json``,
    or a sentence-transformers module's ``get_config_dict()``) uses sentence-transformers 6 settings that change
    which tokens it embeds: another task or output, a modality beyond text (a ``"message"`` entry renders every
    text through the chat template), processing kwargs or per-task lengths. st-onnx tokenizes plain text as the
    classic Transformer does; dropping them would give other embeddings without a word."""
    problems = [f"{key}={config[key]!r}" for key, default in _PLAIN_TEXT.items()
                if config.get(key) not in (None, default)]
    if config.get("modality_config") not in (None, _TEXT_MODALITY):
        problems.append(f"modality_config={config['modality_config']!r}")
    problems += [f"{key}={config[key]!r}" for key in _TOKEN_CHANGING if config.get(key)]
    if problems:
        raise ModelFolderError(
            f"{where} has {', '.join(problems)}; st-onnx embeds plain text as the classic Transformer module does "
            f"(allowed: modality_config {_TEXT_MODALITY}, no {', '.join(_TOKEN_CHANGING)})"
        )


def check_no_chat_template(folder: str | os.PathLike) -> None:
    """Refuse a plain transformers folder whose tokenizer has a chat template: sentence-transformers 6 builds
    its Transformer with a ``"message"`` modality there and renders every text through the template."""
    folder = Path(folder)
    tok = read_json_if_exists(folder / TOKENIZER_CONFIG_JSON, {}) or {}
    if (isinstance(tok, dict) and tok.get("chat_template")) or (folder / "chat_template.jinja").is_file():
        raise ModelFolderError(
            f"{folder} is a plain transformers folder whose tokenizer has a chat template: sentence-transformers 6 "
            "would embed every text rendered through that template, which st-onnx does not do. Build the model "
            "from st-onnx's modules to embed plain text: SentenceTransformer(modules=[st_onnx.models.Transformer(path), "
            "st_onnx.models.Pooling(dim, ...)])"
        )


def transformer_folder(folder: str | os.PathLike) -> Path:
    """The folder of a model's Transformer module (the model folder itself for a plain transformers folder)."""
    folder = Path(folder)
    if not is_st_folder(folder):
        return folder
    for entry in read_modules_json(folder):
        if module_kind(entry["type"]) == "Transformer":
            return folder / entry["path"]
    raise ModelFolderError(f"{folder / MODULES_JSON} lists no Transformer module; st-onnx needs one first")


def is_st_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MODULES_JSON).is_file()
