"""EncodeOptions: the validated arguments of ``encode``, checked once at the public boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InvalidInputError, positive_int

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)


@dataclass(frozen=True)
class EncodeOptions:
    batch_size: int = 32
    show_progress_bar: bool = False
    output_value: str | None = "sentence_embedding"
    convert_to_numpy: bool = True
    convert_to_tensor: bool = False
    device: str | None = None
    normalize_embeddings: bool = False
    truncate_dim: int | None = None  # keep the first N dimensions of sentence embeddings (before normalizing)
    precision: str = "float32"  # embedding quantization after normalizing (st_onnx.quantization)
    prompt_length: int | None = None  # tokens of a prompt that pooling leaves out (include_prompt=False)
    prompt_tokens: int | None = None  # the prompt's token count, which output_value=None dicts report

    @classmethod
    def from_args(
        cls,
        batch_size: Any = 32,
        show_progress_bar: Any = None,
        output_value: Any = "sentence_embedding",
        convert_to_numpy: Any = True,
        convert_to_tensor: Any = False,
        device: Any = None,
        normalize_embeddings: Any = False,
        truncate_dim: Any = None,
        precision: Any = "float32",
    ) -> "EncodeOptions":
        batch_size = positive_int(batch_size, "batch_size")
        if output_value not in OUTPUT_VALUES:
            raise InvalidInputError(
                f"output_value {output_value!r} is not supported; allowed: 'sentence_embedding', 'token_embeddings', None"
            )
        truncate_dim = check_truncate_dim(truncate_dim)
        precision = "float32" if precision is None else precision  # None: as sentence-transformers, no quantization
        if precision != "float32":
            from ..quantization import check_precision

            check_precision(precision)
            if output_value is None:  # as sentence-transformers, which fails on it
                raise InvalidInputError(f"precision {precision!r} quantizes sentence or token embeddings; got "
                                        "output_value None (use precision='float32' with it)")
        if show_progress_bar is None:
            import logging

            show_progress_bar = logging.getLogger("st_onnx").getEffectiveLevel() <= logging.INFO
        if convert_to_tensor:
            convert_to_numpy = False
        return cls(
            batch_size=batch_size,
            show_progress_bar=bool(show_progress_bar),
            output_value=output_value,
            convert_to_numpy=bool(convert_to_numpy),
            convert_to_tensor=bool(convert_to_tensor),
            device=None if device is None else str(device),
            normalize_embeddings=bool(normalize_embeddings),
            truncate_dim=truncate_dim,
            precision=precision,
        )


def check_truncate_dim(truncate_dim: Any) -> int | None:
    return None if truncate_dim is None else positive_int(truncate_dim, "truncate_dim", or_none=True)


def as_input_list(sentences: Any) -> tuple[list, bool]:
    """Return (list of inputs, was_single) after checking every item is a string, a pair or a one-text dict.

    As in sentence-transformers, a single input is a string (or a one-text dict); any other sequence, a tuple of
    two strings included, is a batch (a pair is encoded as an item of a list: ``[("question", "answer")]``).
    """
    if sentences is None:
        raise InvalidInputError("sentences must be a string or a list of strings; got None")
    if hasattr(sentences, "tolist") and not isinstance(sentences, list):
        sentences = sentences.tolist()  # numpy arrays (a 0-d array of one string is that string), pandas Series
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, dict):
        check_item(sentences, None)
        return [sentences], True
    if isinstance(sentences, (bytes, bytearray, set, frozenset)):
        raise InvalidInputError(f"sentences must be a string or a list of strings; got {type(sentences).__name__}"
                                + (" (decode it first)" if isinstance(sentences, (bytes, bytearray)) else
                                   " (unordered: pass a list, so that embeddings come back in a known order)"))
    try:
        items = list(sentences)
    except TypeError as e:
        raise InvalidInputError(
            f"sentences must be a string or a list of strings; got {type(sentences).__name__}"
        ) from e
    check_one_kind(items, "sentences")
    return items, False


def check_one_kind(items: list, name: str) -> None:
    """InvalidInputError unless every item is valid (``check_item``) and of one kind: the first item decides how
    all are read (a text after a pair would be read as a pair of characters)."""
    first: dict[str, int] = {}  # kind -> index of its first item
    for i, item in enumerate(items):
        first.setdefault(check_item(item, i), i)
    if len(first) > 1:
        where = ", ".join(f"{name}[{i}] is a {kind}" for kind, i in first.items())
        raise InvalidInputError(f"the inputs mix {' and '.join(sorted(first))}; allowed: one kind per call: texts, "
                                f"pairs or one-text dicts ({where})")


def check_item(item: Any, index: int | None) -> str:
    """The kind of one input ('str', 'pair' or 'dict'), or InvalidInputError naming it (``index`` None: the single
    input)."""
    if isinstance(item, str):
        _check_encodable(item, index)
        return "str"
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item):
        for text in item:
            _check_encodable(text, index)
        return "pair"
    if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), str):
        _check_encodable(next(iter(item.values())), index)
        return "dict"
    raise InvalidInputError(
        f"{_where(index)} is {item!r} ({type(item).__name__}); allowed: a str, a (str, str) pair, "
        "or a dict with one str value"
    )


def _where(index: int | None) -> str:
    return "sentences" if index is None else f"sentences[{index}]"


def _check_encodable(text: str, index: int | None) -> None:
    """A text the tokenizer can read: one with a lone surrogate (what bytes decoded with
    errors='surrogateescape' leave) failed the whole call with a message naming no text."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"{_where(index)} holds {text[e.start:e.end]!r} at character {e.start}, which is not valid Unicode "
            "(a lone surrogate, as bytes decoded with errors='surrogateescape' leave); allowed: text that encodes "
            "as UTF-8. Decode the bytes again, e.g. with errors='replace'"
        ) from None


def text_length(item: Any) -> int:
    """Character length used to sort inputs (sentence-transformers sorts by it, longest first)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(len(v) for v in item.values())
    return sum(len(s) for s in item)


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices ordering inputs longest first: numpy's default argsort of negated lengths, as sentence-transformers
    sorts, so the torch backend forms the very batches sentence-transformers forms (same padding per text)."""
    import numpy as np

    return np.argsort([-n for n in lengths]).tolist()


def restore_order(items: list, order: Sequence[int]) -> list:
    """Undo ``length_order``: ``result[order[i]] = items[i]``."""
    out: list = [None] * len(items)
    for pos, idx in enumerate(order):
        out[idx] = items[pos]
    return out
