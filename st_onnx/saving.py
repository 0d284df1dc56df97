"""Write a model folder in the sentence-transformers format, atomically, with a model card."""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import shutil
import stat
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import folders, layout
from .errors import GraphFileError, InvalidInputError, ModelFolderError, NewerGraphError, warn

logger = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    out = {}
    for dist, key in (("transformers", "transformers"), ("torch", "pytorch"), ("st-onnx", "st_onnx")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    # sentence-transformers compares this key with its own version; the folder is in the classic (2.x) format.
    out["sentence_transformers"] = "2.2.2"
    return out


def check_safe_serialization(safe_serialization: Any) -> None:
    if safe_serialization is not True:
        raise InvalidInputError(f"safe_serialization={safe_serialization!r} (pickled pytorch_model.bin) is not "
                                "supported: st-onnx saves weights as safetensors only; leave it True")


def _saved_default_prompt_name(settings: dict[str, Any]) -> str | None:
    """The default prompt name to write: one that is not among the prompts (named before its prompt, or its
    prompt deleted) would make the folder unloadable here and in sentence-transformers, so it is written as null."""
    name, prompts = settings.get("default_prompt_name"), settings.get("prompts", {})
    if name is not None and name not in prompts:
        warn(f"default_prompt_name {name!r} is not one of this model's prompts ({sorted(prompts)}): saved "
             "as null, so that the saved folder loads", UserWarning)
        return None
    return name


def save_model(model, path: str | os.PathLike, model_name: str | None = None, create_model_card: bool = True,
               train_datasets: list[str] | None = None) -> None:
    """Save ``model``'s torch modules (and its still-valid fused graphs) to ``path``, swapped in atomically."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InvalidInputError(f"path must be a folder path (a non-empty string or path); got {path!r}")
    if model_name is not None and not isinstance(model_name, str):  # the model card's title and usage line
        raise InvalidInputError(f"model_name must be a string (the name the model card gives) or None; got "
                                f"{type(model_name).__name__} {model_name!r:.80}")
    path = Path(path)
    stack = model.torch_modules
    source = model.model_path
    with folders.atomic_folder(path) as tmp:
        stack.save(tmp)
        _give_usual_modes(tmp)
        settings = model._settings.to_config() if hasattr(model, "_settings") else {}
        layout.write_json(tmp / layout.ST_CONFIG_JSON, {
            "__version__": versions(), "prompts": settings.get("prompts", {}),
            "default_prompt_name": _saved_default_prompt_name(settings),
            "similarity_fn_name": settings.get("similarity_fn_name") or "cosine",
            **({"truncate_dim": settings["truncate_dim"]} if settings.get("truncate_dim") is not None else {}),
        })
        if create_model_card:
            kept = kept_model_card(model)
            if kept and model_name and not Path(model_name).exists():  # as ST: the card's usage names the model
                kept = kept.replace(f'SentenceTransformer("{_CARD_PLACEHOLDER}"', f'SentenceTransformer("{model_name}"')
            (tmp / "README.md").write_text(kept or model_card(model, model_name or path.name, train_datasets),
                                           encoding="utf-8")
        if source is not None and (Path(source) / layout.FUSED_DIR).is_dir():
            _carry_fused_graphs(Path(source), tmp, stack)
        if path.is_dir():
            keep_foreign_entries(path, tmp)
    logger.info("saved model to %s", path)


def _give_usual_modes(folder: Path) -> None:
    """Files the modules wrote readable as any file the user writes: transformers saves the weights 0600 (through
    a temporary file), and an image built as root then runs as another user that cannot read them."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600:
            folders.give_usual_mode(path)


# What a save owns in a model folder, besides what it writes and the module folders the old modules.json lists:
# files derived from older weights (graphs, weights in any format) and the transformer's config and tokenizer
# files of every kind (a WordPiece save over a BPE folder must not leave vocab.json or added_tokens.json for
# transformers to pick up). Anything else stays, as sentence-transformers leaves it: a trainer's optimizer.pt and
# training_args.bin, an eval/ folder, notes.
_OWNED = re.compile(
    r"^(onnx|openvino|modules\.json|config\.json|config_sentence_transformers\.json|sentence_bert_config\.json"
    r"|(generation|preprocessor|processor)_config\.json|.*\.safetensors(\.index\.json)?"
    r"|pytorch_model.*\.bin(\.index\.json)?|tf_model\.h5|flax_model\.msgpack|tokenizer.*|special_tokens_map\.json"
    r"|added_tokens\.json|vocab\.(txt|json)|merges\.txt|spiece\.model|sentencepiece\.bpe\.model"
    r"|chat_template\.(jinja|json))$"
)


def _old_module_folders(folder: Path) -> set[str]:
    try:
        entries = layout.read_modules_json(folder) if layout.is_st_folder(folder) else []
    except ModelFolderError:  # a broken modules.json: no folder is taken for a module
        return set()
    return {Path(e["path"]).parts[0] for e in entries if Path(e["path"]).parts}


def keep_foreign_entries(old: Path, new: Path, owned: Callable[[str], bool] | None = None) -> None:
    """Carry entries the model does not own (an ``eval/`` folder of CSVs, notes) from the folder being replaced.

    sentence-transformers writes into the folder and leaves such files alone; the atomic swap (of a save, of an
    export into a folder of other weights, of a deployment bundle) must too. ``owned``: which names the new folder
    owns (default: a model folder's, with the old modules.json's module folders). Files are hard-linked where
    possible (no copy of large files), copied otherwise; symbolic links are carried as links.
    """
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    if owned is None:
        modules = _old_module_folders(old)
        owned = lambda name: bool(_OWNED.match(name)) or name in modules  # noqa: E731
    for entry in old.iterdir():  # not a work folder: another write's, or this one's own (made inside ``old``)
        if owned(entry.name) or folders.is_work_entry(entry.name) or (new / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, copy_function=link_or_copy, symlinks=True)
        else:
            link_or_copy(str(entry), str(new / entry.name))


def _carry_fused_graphs(source: Path, target: Path, stack: Any) -> None:
    """Copy the fused graphs that compute the modules just written; drop the others (logged).

    A graph's manifest fingerprint is of the files it was exported from. Files written again (by this
    transformers, as safetensors) differ in bytes even for the same modules, so a graph whose fingerprint no
    longer matches is still carried when its ``module_digest`` equals the saved modules' content digest
    (same settings, same tensors); its manifest then takes the new folder's fingerprint. After training, or any
    change to the weights, the digests differ and the graph is left behind.
    """
    from .export.manifest import write_manifest
    from .fingerprint import folder_fingerprint, source_digests
    from .runtime.manifest import read_manifest

    current = folder_fingerprint(target)
    digest = None
    for graph in sorted((source / layout.FUSED_DIR).glob("*.onnx")):
        newer = False
        try:
            manifest = read_manifest(graph)
        except NewerGraphError:  # carried as it is while it is of these weights: the newer st-onnx checks it
            manifest, newer = layout.read_json(layout.manifest_path(graph), "manifest"), True
        except GraphFileError:  # cut short or edited by hand
            manifest = None
        if not manifest:  # a derived file: left behind, the next load exports
            logger.warning("not carrying %s: its manifest is missing or unreadable", graph.name)
            continue
        restamp = manifest.get("fingerprint") != current
        if restamp:
            digest = digest or stack.content_digest()
            if manifest.get("module_digest") != digest:
                logger.info("not carrying %s: it was exported from other weights", graph.name)
                continue
        dest = target / layout.FUSED_DIR
        folders.copy_graph(graph, dest)
        if restamp and not newer:
            write_manifest(dest / graph.name, {**manifest, "fingerprint": current,
                                               "source_files": source_digests(target)})


class ModelCardData:
    """What the saved model card says beyond the architecture: its metadata and the metrics evaluators reported.

    The fields are sentence-transformers' ``SentenceTransformerModelCardData`` ones that a card shows
    (``language``, ``license``, ``model_name``, ``model_id``, ``base_model``, ``tags``, ``train_datasets``,
    ``eval_datasets``); ``SentenceTransformer(model_card_data=...)`` takes this class or sentence-transformers'
    own. Its evaluators call ``model.model_card_data.set_evaluation_metrics(...)`` after computing their metrics,
    so they run against an st-onnx model; ``save`` lists the latest metrics of each in the card's "Evaluation".
    """

    FIELDS = ("language", "license", "model_name", "model_id", "base_model", "tags", "train_datasets",
              "eval_datasets")

    def __init__(self, language: str | list[str] | None = None, license: str | None = None,
                 model_name: str | None = None, model_id: str | None = None, base_model: str | None = None,
                 tags: list[str] | None = None, train_datasets: list | None = None,
                 eval_datasets: list | None = None) -> None:
        self.language = [language] if isinstance(language, str) else list(language or [])
        self.license = license
        self.model_name = model_name
        self.model_id = model_id
        self.base_model = base_model
        self.tags = list(tags or [])
        self.train_datasets = list(train_datasets or [])
        self.eval_datasets = list(eval_datasets or [])
        self.eval_results: dict[str, dict[str, Any]] = {}  # evaluator name -> {"metrics", "epoch", "step"}

    @classmethod
    def from_any(cls, data: Any) -> "ModelCardData":
        """This class, or the same fields read from sentence-transformers' SentenceTransformerModelCardData."""
        if data is None or isinstance(data, cls):
            return data if data is not None else cls()
        if not all(hasattr(data, name) for name in ("language", "license", "model_name")):
            raise InvalidInputError(f"model_card_data must be a ModelCardData or sentence-transformers' "
                                    f"SentenceTransformerModelCardData; got {type(data).__name__}")
        return cls(**{name: getattr(data, name, None) for name in cls.FIELDS})

    def front_matter(self) -> str:
        """The YAML lines of the card's metadata that these fields fill."""
        lines = []
        if self.language:
            lines += ["language:"] + [f"- {yaml_scalar(x)}" for x in self.language]
        if self.license:
            lines.append(f"license: {yaml_scalar(self.license)}")
        if self.base_model:
            lines.append(f"base_model: {yaml_scalar(self.base_model)}")
        return "".join(line + "\n" for line in lines)

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: float = 0, step: int = 0) -> None:
        name = getattr(evaluator, "name", "") or type(evaluator).__name__
        values = {str(k): float(v) for k, v in (metrics or {}).items() if isinstance(v, numbers.Real)}  # numpy too
        self.eval_results[name] = {"evaluator": type(evaluator).__name__, "metrics": values, "epoch": epoch,
                                   "step": step}

    def card_comment(self, train_datasets: list[str]) -> str:
        """These fields and metrics as a comment at the foot of the card st-onnx writes, so that a model loaded
        from that folder writes them again (``from_card``) when its card is written again under a new name.
        ``train_datasets``: the names the card lists (``save``'s own, else these fields')."""
        fields = {name: getattr(self, name) for name in self.FIELDS if getattr(self, name)}
        fields["train_datasets"] = train_datasets
        fields["eval_results"] = self.eval_results
        text = json.dumps(fields, ensure_ascii=False, default=str).replace(">", "\\u003e")  # no "-->" inside
        return f"{_CARD_DATA_MARK}{text} -->\n"

    @classmethod
    def from_card(cls, text: str) -> "ModelCardData | None":
        """The fields a card st-onnx wrote records (``card_comment``); None for any other card, or one that
        records none."""
        _, mark, rest = text.rpartition(_CARD_DATA_MARK)
        try:
            fields = json.loads(rest.partition(" -->")[0]) if mark and is_own_card(text) else None
            if not isinstance(fields, dict):
                return None
            data = cls(**{name: fields[name] for name in cls.FIELDS if name in fields})
        except (ValueError, TypeError):  # edited by hand: written afresh, as a card that recorded nothing
            return None
        results = fields.get("eval_results")
        for name, result in (results.items() if isinstance(results, dict) else []):
            metrics = result.get("metrics") if isinstance(result, dict) else None
            if isinstance(metrics, dict) and isinstance(result.get("evaluator"), str):  # else dropped, as edited
                data.eval_results[str(name)] = {**result, "metrics": {
                    str(k): float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}}
        return data

    def markdown(self) -> str:
        if not self.eval_results:
            return ""
        lines = ["## Evaluation", ""]
        for name, result in self.eval_results.items():
            lines += [f"### {result['evaluator']}: {name}", "", "| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in result["metrics"].items()] + [""]
        return "\n".join(lines)


# Words YAML reads as booleans or null rather than strings ("no" is Norwegian's language code)
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}


def yaml_scalar(value: Any) -> str:
    """``value`` as a YAML string: plain when it is a simple word or id starting with a letter (en, apache-2.0,
    org/name) that YAML does not read as a boolean or null, else quoted (a JSON string is valid YAML): numbers,
    dates and ``no`` stay strings."""
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z][\w./-]*", text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)


_CARD_DATA_MARK = "<!-- st-onnx card data: "
_CARD_PLACEHOLDER = "sentence_transformers_model_id"  # what sentence-transformers' cards name the model before it has one


def folder_card(folder: Path | None, model_card_data: Any = None) -> tuple[ModelCardData, str | None]:
    """A loaded model's card data (``model_card_data``, validated) and the card text its folder came with: only a
    sentence-transformers folder's, as there (a transformers checkpoint's card is another model's), and none
    where card data was given. A card st-onnx wrote gives back the fields it recorded (it is written again on
    save, under the new name)."""
    data = ModelCardData.from_any(model_card_data)
    if model_card_data is not None or folder is None or not layout.is_st_folder(folder) \
            or not (folder / "README.md").is_file():
        return data, None
    text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    return ModelCardData.from_card(text) or data, text


def kept_model_card(model) -> str | None:
    """The card the model was loaded with, when a save should keep it, as sentence-transformers keeps it (its
    license, language and datasets stay): not when the model was trained here, evaluated (metrics to report),
    given ``model_card_data``, or when the card is one st-onnx wrote (derived, written again with the new name)."""
    text = getattr(model, "_model_card_text", None)
    card_data = getattr(model, "model_card_data", None)
    if not text or (card_data is not None and card_data.eval_results):
        return None
    return None if is_own_card(text) else text


def is_own_card(text: str) -> bool:
    """Whether ``text`` is a card st-onnx wrote (its front matter's tags hold st-onnx)."""
    front = text.split("\n---", 1)[0] if text.startswith("---\n") else ""
    return "\n- st-onnx\n" in front + "\n"


def model_card(model, model_name: str, train_datasets: list[str] | None) -> str:
    stack = model.torch_modules
    dim = model.get_sentence_embedding_dimension()  # truncate_dim's when set: what the saved model encodes to
    card_data = getattr(model, "model_card_data", None) or ModelCardData()
    given = train_datasets or card_data.train_datasets or []
    names = [str(d.get("id") or d.get("name")) if isinstance(d, dict) else str(d)  # card data holds dicts
             for d in ([given] if isinstance(given, str) else given)]  # a single name is one dataset
    datasets = "".join(f"- {yaml_scalar(d)}\n" for d in names)
    tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "st-onnx"]
    tags += [t for t in card_data.tags if t not in tags]
    front = "---\n" + card_data.front_matter() + "library_name: sentence-transformers\n" \
            "pipeline_tag: sentence-similarity\ntags:\n" + "".join(f"- {yaml_scalar(t)}\n" for t in tags)
    if datasets:
        front += "datasets:\n" + datasets
    front += "---\n\n"
    load_id = json.dumps(card_data.model_id or model_name)  # the usage's string: the Hub id, else the folder's name
    title = " ".join(str(card_data.model_name or model_name).split())  # one line, whatever the name holds
    modules = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(stack))
    return front + f"""# {title}

A [sentence-transformers](https://www.SBERT.net) model saved by st-onnx: it maps text to a {dim}-dimensional
dense vector space.

## Usage

```python
from st_onnx import SentenceTransformer
model = SentenceTransformer({load_id})                  # torch modules (sentence_transformers loads it too)
fast = SentenceTransformer({load_id}, backend="onnx")   # st-onnx's fused ONNX graph on ONNX Runtime
embeddings = fast.encode(["This is an example sentence", "Each sentence is converted"])
```

## Architecture

```
SentenceTransformer(
{modules}
)
```
""" + ("\n" + card_data.markdown() if card_data.eval_results else "") + "\n" + card_data.card_comment(names)
