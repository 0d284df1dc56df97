"""TextTokenizer: a model's ``tokenizer.json`` run with ``tokenizers`` alone (no transformers, no torch).

It reproduces what the torch Transformer module's ``tokenize`` feeds the model: texts as given, not stripped, as
in sentence-transformers 6 (lowered by the tokenizer with ``do_lower_case``), pairs and one-text dicts accepted, truncation at
``max_seq_length`` (longest first, on the tokenizer's ``truncation_side``), special tokens added. transformers
builds a BERT-style tokenizer's normalizer from ``tokenizer_config.json`` (and the module's saved
``tokenizer_args``), taking only the vocabulary from ``tokenizer.json``; where those settings
(``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``) are given, they win here too
(``configured_normalizer``). The exporter checks that the two tokenizers agree before it exports
(``export.verify.check_tokenizer``). Two differences are deliberate and invisible in the embeddings:

- the fixed padding some ``tokenizer.json`` files carry (all-MiniLM-L6-v2 pads every text to 128) is switched
  off; texts are encoded unpadded and each batch is padded only to its own longest text (``pad``);
- features are numpy int64 arrays, the types the fused graph consumes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer

from .. import layout
from ..errors import InvalidInputError, ModelFolderError, positive_int

FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Tokenizer classes whose model_input_names include token_type_ids (transformers' defaults). Others (and the
# generic fast tokenizer) return none, and the torch module then runs with the model's default: zeros.
_TYPE_ID_CLASSES = ("Bert", "Albert", "Electra", "Deberta", "Ernie", "MobileBert", "ConvBert", "Funnel",
                    "RoFormer", "SqueezeBert", "LayoutLM", "Splinter", "Nezha", "XLNet", "Led", "Mega")


def text_columns(texts: Sequence[Any]) -> list[list[str]]:
    """Split inputs into one column (strings, one-text dicts) or two (pairs), as the torch module does."""
    if texts and isinstance(texts[0], dict):
        return [[str(next(iter(t.values()))) for t in texts]]
    if texts and isinstance(texts[0], (tuple, list)):
        return [[str(t[0]) for t in texts], [str(t[1]) for t in texts]]
    return [list(texts)]


def model_max_seq_length(folder: Path) -> int:
    """``max_seq_length`` as the Transformer module resolves it: its config (which already takes the tokenizer's
    limit, capped at the position embeddings), else the position embeddings, else 512."""
    config = layout.read_transformer_config(folder)
    if "max_seq_length" in config:
        return int(config["max_seq_length"])
    positions = (layout.read_json_if_exists(folder / layout.HF_CONFIG_JSON, {}) or {}).get("max_position_embeddings")
    return int(positions) if layout.is_length_limit(positions) else 512


def uses_token_type_ids(folder: Path) -> bool:
    """Whether transformers' tokenizer for this folder returns token_type_ids: tokenizer_config.json's
    ``model_input_names``, else its ``tokenizer_class``, else, as transformers picks the class then,
    config.json's ``model_type`` (bert-base-uncased's tokenizer config names neither)."""
    config = layout.read_json_if_exists(folder / layout.TOKENIZER_CONFIG_JSON, {}) or {}
    names = config.get("model_input_names")
    if isinstance(names, list):
        return "token_type_ids" in names
    if config.get("tokenizer_class"):
        return str(config["tokenizer_class"]).startswith(_TYPE_ID_CLASSES)
    model_type = str((layout.read_json_if_exists(folder / layout.HF_CONFIG_JSON, {}) or {}).get("model_type") or "")
    return model_type.replace("-", "").replace("_", "").lower().startswith(
        tuple(c.lower() for c in _TYPE_ID_CLASSES))


def configured_pad_token(folder: Path) -> str | None:
    """The ``pad_token`` that tokenizer_config.json (or special_tokens_map.json) names, as transformers reads it."""
    for name in (layout.TOKENIZER_CONFIG_JSON, "special_tokens_map.json"):
        config = layout.read_json_if_exists(folder / name, {}) or {}
        token = config.get("pad_token") if isinstance(config, dict) else None
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str):
            return token
    return None


def tokenizer_settings(folder: Path) -> dict[str, Any]:
    """What transformers' tokenizer is built with: tokenizer_config.json, overridden by the Transformer module's
    saved ``tokenizer_args`` (sentence_bert_config.json), as transformers' ``from_pretrained`` merges them."""
    config = layout.read_json_if_exists(folder / layout.TOKENIZER_CONFIG_JSON, {}) or {}
    args = layout.read_transformer_config(folder).get("tokenizer_args", {})
    settings = {**(config if isinstance(config, dict) else {}), **args}
    if not _builds_bert_normalizer(folder, settings):  # a generic tokenizer runs tokenizer.json's normalizer
        settings = {k: v for k, v in settings.items() if k not in _BERT_NORMALIZER_KEYS}
    return settings


TRUNCATION_SIDES = ("right", "left")
# tokenizer_config.json keys that BERT-style tokenizer classes turn into their BertNormalizer's settings, and
# those classes (transformers 5: BertTokenizer and its subclasses and aliases, MPNet, Funnel, RoFormer,
# Splinter), by tokenizer_class or, where the config names none, by the model type AutoTokenizer maps to them.
_BERT_NORMALIZER_KEYS = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
                         "tokenize_chinese_chars": "handle_chinese_chars"}
_BERT_NORMALIZER_CLASSES = ("Bert", "DistilBert", "ConvBert", "Electra", "LayoutLM", "MobileBert", "SqueezeBert",
                            "MPNet", "Funnel", "RoFormer", "Splinter", "RetriBert", "MegatronBert")
_BERT_NORMALIZER_MODEL_TYPES = ("bert", "convbert", "distilbert", "electra", "ernie", "funnel", "layoutlm",
                                "megatron-bert", "mobilebert", "mpnet", "nezha", "nomic_bert", "retribert",
                                "roformer", "splinter", "squeezebert")


def _builds_bert_normalizer(folder: Path, settings: dict[str, Any]) -> bool:
    name = settings.get("tokenizer_class")
    if isinstance(name, str) and name:
        return name.startswith(_BERT_NORMALIZER_CLASSES) and not name.startswith("BertJapanese")
    config = layout.read_json_if_exists(folder / layout.HF_CONFIG_JSON, {}) or {}
    return isinstance(config, dict) and config.get("model_type") in _BERT_NORMALIZER_MODEL_TYPES


def configured_normalizer(tokenizer: Tokenizer, settings: dict[str, Any]) -> Tokenizer:
    """``tokenizer`` with its BertNormalizer set as ``settings`` say (the keys given; others as the file has
    them): BERT-style tokenizer classes build that normalizer from their config, not from tokenizer.json."""
    import json

    given = {}
    for key, field in _BERT_NORMALIZER_KEYS.items():
        if key not in settings:
            continue
        value = settings[key]
        if not (isinstance(value, bool) or (key == "strip_accents" and value is None)):
            raise ModelFolderError(f"the tokenizer setting {key!r} is {value!r}; allowed: true or false"
                                   + (" (or null)" if key == "strip_accents" else ""))
        given[field] = value
    if not given:
        return tokenizer
    spec = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    bert = [step for step in steps if isinstance(step, dict) and step.get("type") == "BertNormalizer"]
    if all(all(step.get(f) == v for f, v in given.items()) for step in bert):  # none, or as the file has them
        return tokenizer
    for step in bert:
        step.update(given)
    return Tokenizer.from_str(json.dumps(spec))


def lowercase_first(normalizer: Any) -> Any:
    """``normalizer`` with a Lowercase step in front, as sentence-transformers 6 applies ``do_lower_case``; the
    same normalizer when it already holds one (a tokenizer saved after that is not lowered twice).

    Lowering inside the tokenizer, not with ``str.lower`` before it, matters: special tokens are matched before
    normalization, so "[MASK]" in a text stays one token, and the tokenizer lowers character by character
    (a word-final capital sigma becomes "σ", where Python writes "ς")."""
    from tokenizers.normalizers import Lowercase, Sequence as NormalizerSequence

    if isinstance(normalizer, Lowercase):
        return normalizer
    if isinstance(normalizer, NormalizerSequence):
        if any(isinstance(step, Lowercase) for step in normalizer):
            return normalizer
        return NormalizerSequence([Lowercase(), *normalizer])
    return NormalizerSequence([Lowercase()] if normalizer is None else [Lowercase(), normalizer])


TOKENIZE_CHARS = 1 << 20  # characters per tokenizers call (about 40 MB of transient Encodings)


def char_chunks(sizes: Sequence[int], max_chars: int) -> list[tuple[int, int]]:
    """(start, stop) slices of consecutive items, each at most ``max_chars`` characters (at least one item)."""
    out, start, chars = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and chars + n > max_chars:
            out.append((start, i))
            start, chars = i, 0
        chars += n
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


def _set_truncation(tokenizer: Tokenizer, max_length: int, side: str) -> None:
    check_room_for_text(max_length, tokenizer.num_special_tokens_to_add(False))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first", direction=side)


def _find_pad_id(tokenizer: Tokenizer, pad_token: str | None) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in (pad_token, "[PAD]", "<pad>", "<|pad|>"):
        if not isinstance(token, str):
            continue
        idx = tokenizer.token_to_id(token)
        if idx is not None:
            return idx
    return 0


def check_room_for_text(max_seq_length: int, special_tokens: int, what: str = "texts") -> None:
    """Refuse a limit below the special tokens: tokenizers then leave the input untruncated, without a word."""
    if max_seq_length < special_tokens:
        raise InvalidInputError(f"max_seq_length {max_seq_length} leaves no room for {what}: the tokenizer adds "
                                f"{special_tokens} special tokens to each; allowed: {special_tokens} or more")


class TokenIds:
    """One text's token ids (and segment ids for pairs), compact: a tokenizers Encoding also keeps its tokens,
    offsets and masks, several times the memory, for the whole chunk being encoded."""

    __slots__ = ("ids", "type_ids")

    def __init__(self, ids: np.ndarray, type_ids: np.ndarray | None = None) -> None:
        self.ids = ids
        self.type_ids = type_ids

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """Encode texts into unpadded encodings, and pad a batch of them into numpy features."""

    def __init__(self, tokenizer: Tokenizer, max_seq_length: int, do_lower_case: bool = False,
                 pad_id: int | None = None, type_ids: bool = True, pad_token: str | None = None,
                 truncation_side: str = "right") -> None:
        if truncation_side not in TRUNCATION_SIDES:
            raise InvalidInputError(f"truncation_side is {truncation_side!r}; allowed: 'right' or 'left'")
        self._settings_lock = threading.RLock()  # setters from several threads: one consistent tokenizer state
        self.truncation_side = truncation_side
        self.do_lower_case = bool(do_lower_case)
        if self.do_lower_case:  # a copy: the caller's tokenizer keeps its normalizer
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.normalizer = lowercase_first(tokenizer.normalizer)
        self._tokenizer = tokenizer
        self.type_ids = bool(type_ids)
        self._pad_token = pad_token  # the tokenizer config's pad_token (Qwen: '<|endoftext|>')
        self.pad_id = _find_pad_id(tokenizer, pad_token) if pad_id is None else int(pad_id)
        self.max_seq_length = max_seq_length

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, exported: dict[str, Any] | None = None) -> "TextTokenizer":
        """Load the tokenizer of a model folder (its Transformer module's ``tokenizer.json``).

        ``exported``: the graph's manifest; in a folder of just the graph and ``tokenizer.json`` (no
        ``sentence_bert_config.json``, no ``config.json``), its ``max_seq_length`` and ``do_lower_case``, the
        settings the graph was exported and verified with, stand in for the files. A full folder's own settings
        always win: the manifest's may predate a changed ``max_seq_length``, which does not re-export the graph.
        """
        folder = layout.transformer_folder(folder)
        path = folder / layout.TOKENIZER_JSON
        if not path.is_file():
            raise ModelFolderError(
                f"{path} is missing: the onnx backend needs the fast tokenizer file; save it with "
                "transformers' AutoTokenizer.from_pretrained(...).save_pretrained(folder)"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a broken file
            raise ModelFolderError(f"{path} cannot be read by tokenizers ({e}); restore the file") from e
        config, settings = layout.read_transformer_config(folder), tokenizer_settings(folder)
        tokenizer = configured_normalizer(tokenizer, settings)
        side = settings.get("truncation_side", "right")
        if side not in TRUNCATION_SIDES:
            raise ModelFolderError(f"{folder} gives the tokenizer truncation_side {side!r}; allowed: 'right' or "
                                   "'left'")
        max_seq_length, lower = model_max_seq_length(folder), config["do_lower_case"]
        bare = not (folder / layout.SBERT_CONFIG_JSON).is_file() and not (folder / layout.HF_CONFIG_JSON).is_file()
        if bare and exported:
            if layout.is_length_limit(exported.get("max_seq_length")):
                max_seq_length = int(exported["max_seq_length"])
            lower = bool(exported.get("do_lower_case", lower))
        inputs = exported.get("inputs") if exported else None  # what transformers' tokenizer gave at export
        type_ids = "token_type_ids" in inputs if isinstance(inputs, list) else uses_token_type_ids(folder)
        return cls(tokenizer, max_seq_length, lower, type_ids=type_ids, pad_token=configured_pad_token(folder),
                   truncation_side=side)

    def __getstate__(self) -> dict[str, Any]:  # a pickled model (DataLoader workers, process pools): no lock
        state = self.__dict__.copy()
        del state["_settings_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._settings_lock = threading.RLock()

    # -- settings -------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        """Accept a ``tokenizers.Tokenizer`` or a transformers fast tokenizer (its backend is used). It runs as
        given, as in sentence-transformers: ``do_lower_case`` is applied when the model loads, not to a
        tokenizer set afterwards; a transformers tokenizer's ``model_max_length`` becomes ``max_seq_length``,
        as there (unless it is transformers' "no limit" placeholder), and its ``truncation_side`` is kept."""
        backend = getattr(value, "backend_tokenizer", value)
        if not isinstance(backend, Tokenizer):
            raise InvalidInputError(
                f"tokenizer must be a tokenizers.Tokenizer or a transformers fast tokenizer; got {type(value).__name__}"
            )
        with self._settings_lock:
            pad_token = getattr(value, "pad_token", None) or self._pad_token
            side = getattr(value, "truncation_side", None)
            side = side if side in TRUNCATION_SIDES else self.truncation_side
            pad_id = _find_pad_id(backend, pad_token)  # before no_padding() drops the padding's pad_id
            limit = getattr(value, "model_max_length", None)
            limit = positive_int(limit if layout.is_length_limit(limit) else self._max_seq_length, "max_seq_length")
            # set up before it is published: a call in another thread never sees tokenizer.json's padding
            _set_truncation(backend, limit, side)
            self._pad_token, self.truncation_side, self.pad_id = pad_token, side, pad_id
            self._max_seq_length, self._tokenizer = limit, backend

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        value = positive_int(value, "max_seq_length")
        with self._settings_lock:  # the recorded limit and the tokenizer's truncation change together
            _set_truncation(self._tokenizer, value, self.truncation_side)
            self._max_seq_length = value

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[Any]) -> list[TokenIds]:
        """Unpadded, truncated token ids of strings, (a, b) pairs or one-text dicts."""
        if not texts:
            return []
        columns = text_columns(texts)
        pairs = len(columns) == 2
        if pairs:  # a pair takes more special tokens than a text: a limit they fill leaves pairs untruncated
            check_room_for_text(self._max_seq_length, self._tokenizer.num_special_tokens_to_add(True), "pairs")
        batch = columns[0] if not pairs else list(zip(columns[0], columns[1]))
        sizes = [len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in batch]
        out: list[TokenIds] = []
        # tokenizers keeps every token of a truncated text (Encoding.overflowing): tens of bytes per character
        # until the Encodings are dropped, so each call is bounded in characters, not only in texts
        for start, stop in char_chunks(sizes, TOKENIZE_CHARS):
            encodings: list[Encoding] = self._tokenizer.encode_batch(batch[start:stop], add_special_tokens=True)
            out.extend(TokenIds(np.array(e.ids, dtype=np.int32),
                                np.array(e.type_ids, dtype=np.int8) if pairs and self.type_ids else None)
                       for e in encodings)
        return out

    def prompt_length(self, prompt: str) -> int:
        """Tokens ``prompt`` contributes at the start of every text: its ids without a trailing special token."""
        encoding = self._tokenizer.encode(prompt, add_special_tokens=True)
        ids = encoding.ids
        if not ids:
            return 0
        # as sentence-transformers: a last token with a special id, added by the post-processor or spelled in
        # the prompt itself (a decoder's tokenizer adds none, and "query <|endoftext|>" ends in one)
        special = encoding.special_tokens_mask[-1] or self._tokenizer.id_to_token(ids[-1]) in self._special_tokens()
        return len(ids) - 1 if special else len(ids)

    def _special_tokens(self) -> set[str]:
        return {t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special}

    def pad(self, encodings: Sequence[TokenIds], names: Sequence[str] = FEATURE_NAMES,
            dtype: Any = np.int64) -> dict[str, np.ndarray]:
        """Features of a batch, padded to its longest encoding (right padding)."""
        n = len(encodings)
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((n, width), self.pad_id, dtype=dtype)
        mask = np.zeros((n, width), dtype=dtype)
        types = np.zeros((n, width), dtype=dtype) if "token_type_ids" in names else None
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            if types is not None and e.type_ids is not None:
                types[i, :k] = e.type_ids
        out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: out[name] for name in names}

    def __call__(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        """Features of ``texts`` in their order, padded to the longest (what ``model.tokenize`` returns)."""
        names = FEATURE_NAMES if self.type_ids else FEATURE_NAMES[:2]
        return self.pad(self.encode(list(texts)), names)
