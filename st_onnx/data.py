"""InputExample: one training example (texts and a label), as sentence-transformers 2.x spells it.

Plain Python: importing it loads neither torch nor numpy.
"""

from __future__ import annotations

from typing import Any


class InputExample:
    """A training example: ``texts`` (one text per column) and a ``label`` (a float, an int or an array)."""

    def __init__(self, guid: str = "", texts: list[str] | None = None, label: Any = 0) -> None:
        self.guid = guid
        self.texts = list(texts) if texts is not None else []
        self.label = label

    def __repr__(self) -> str:
        return f"<InputExample> label: {self.label!r}, texts: {'; '.join(map(str, self.texts))}"

