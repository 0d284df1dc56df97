"""What every evaluator shares: the ``__call__`` contract, paired scores in numpy, the 2.x CSV file.

Evaluators call only ``model.encode(..., convert_to_numpy=True)`` and compute with numpy, so they run on
either backend and import no torch (the ONNX backend stays torch-free).
"""

from __future__ import annotations

import csv
import logging
import os
from enum import Enum
from typing import Any

import numpy as np

from ..errors import InvalidInputError, allowed

logger = logging.getLogger(__name__)


class SimilarityFunction(Enum):
    """sentence-transformers 2.x's similarity functions (``from_name`` also takes 3.x's string names)."""

    COSINE = 0
    EUCLIDEAN = 1
    MANHATTAN = 2
    DOT_PRODUCT = 3

    @classmethod
    def from_name(cls, value: Any) -> "SimilarityFunction":
        if isinstance(value, cls):
            return value
        if isinstance(value, Enum):  # sentence-transformers' own SimilarityFunction (values "cosine", "dot", ...)
            value = value.value
        names = {"cosine": cls.COSINE, "cos_sim": cls.COSINE, "euclidean": cls.EUCLIDEAN,
                 "manhattan": cls.MANHATTAN, "dot": cls.DOT_PRODUCT, "dot_product": cls.DOT_PRODUCT,
                 "dot_score": cls.DOT_PRODUCT}
        if isinstance(value, str) and value.lower() in names:
            return names[value.lower()]
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2, 3):
            return cls(value)
        raise InvalidInputError(f"similarity function {allowed(value, list(names) + [m.name for m in cls])}")


def paired_scores(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise similarity of two embedding matrices; distances negated so that higher is more similar."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    return {
        "cosine": dot / np.maximum(norms, 1e-12),
        "euclidean": -np.linalg.norm(a - b, axis=1),
        "manhattan": -np.sum(np.abs(a - b), axis=1),
        "dot": dot,
    }


def encode(model, sentences: list, batch_size: int, show_progress_bar: bool, truncate_dim: int | None = None,
           **kwargs) -> np.ndarray:
    """``model.encode`` to numpy; ``truncate_dim`` (sentence-transformers 2.7+) only when set, so models whose encode
    lacks it still run."""
    if truncate_dim is not None:
        kwargs["truncate_dim"] = truncate_dim
    return np.asarray(model.encode(list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar,
                                   convert_to_numpy=True, **kwargs))


def encode_unique(model, columns: list[list], batch_size: int, show_progress_bar: bool,
                  truncate_dim: int | None = None) -> list[np.ndarray]:
    """Encode each distinct text of several columns once; return one embedding matrix per column."""
    unique = list(dict.fromkeys(text for column in columns for text in column))
    embeddings = encode(model, unique, batch_size, show_progress_bar, truncate_dim)
    index = {text: i for i, text in enumerate(unique)}
    return [embeddings[[index[t] for t in column]] for column in columns]


def check_older_order(evaluator: str, order: str, newer: str, *, name: Any, **flags: Any) -> None:
    """Refuse what a call in sentence-transformers 3+'s positional order leaves in 2.x's places (a list or a number as
    ``name``, a string as a flag or ``batch_size``): built, not at the first evaluation, after an epoch of training."""
    wrong = {} if name is None or isinstance(name, str) else {"name": name}
    for key, value in flags.items():
        if key == "batch_size":
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        else:
            ok = value is None or isinstance(value, (bool, np.bool_, int, np.integer))  # a truth value, as encode
        if not ok:
            wrong[key] = value
    if wrong:
        got = ", ".join(f"{k}={v!r:.60}" for k, v in wrong.items())
        raise InvalidInputError(f"{evaluator} got {got}: st-onnx keeps sentence-transformers 2.x's positional order "
                                f"({order}), where 3 and later put {newer}; pass these by keyword")


def check_same_length(*, at_least: int = 0, **columns: list) -> None:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidInputError(f"the evaluator's columns must have the same length; got {lengths}")
    if min(lengths.values()) < at_least:  # a correlation of one pair, an accuracy of none: NaN, not a score
        raise InvalidInputError(f"the evaluator needs at least {at_least} row{'s' * (at_least != 1)} to score; got "
                                f"{lengths}")


def finite_numbers(name: str, values: list) -> np.ndarray:
    """``values`` as float64, refusing what is not a finite number (None became NaN, and NaN every correlation)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or not np.isfinite(array).all():
        bad = next((i for i, v in enumerate(values) if not _is_finite_number(v)), None)
        where = f"{name}[{bad}] is {values[bad]!r:.40}" if bad is not None else f"got shape {np.shape(values)}"
        raise InvalidInputError(f"{name} must be one finite number per pair; {where}")
    return array


def _is_finite_number(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value))) and not isinstance(value, (str, bytes))
    except (TypeError, ValueError):
        return False


def describe(epoch: int, steps: int) -> str:
    if epoch == -1:
        return ""
    return f" after epoch {epoch}" if steps == -1 else f" in epoch {epoch} after {steps} steps"


class SentenceEvaluator:
    """Base of the evaluators: ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> main score``."""

    csv_file: str = ""
    csv_headers: list[str] = []
    write_csv: bool = True
    csv_lineterminator: str = "\r\n"  # csv.writer's, as sentence-transformers' evaluators that use it

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> float:
        raise NotImplementedError

    def append_csv(self, output_path: str | None, row: list) -> None:
        """Append a row to ``output_path/csv_file``, writing the header first when the file is new."""
        if output_path is None or not self.write_csv:
            return
        os.makedirs(output_path, exist_ok=True)
        path = os.path.join(output_path, self.csv_file)
        new = not os.path.isfile(path)
        with open(path, newline="", mode="w" if new else "a", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator=self.csv_lineterminator)
            if new:
                writer.writerow(self.csv_headers)
            writer.writerow(row)
