"""A model's prompts and similarity function: what ``config_sentence_transformers.json`` holds besides versions.

sentence-transformers (2.4 and later) saves ``prompts`` (name -> text prepended to every input at encode time),
``default_prompt_name`` (the prompt applied when encode names none) and ``similarity_fn_name``. A model folder
that sets a default prompt embeds ``prompt + text``, so ignoring the file would give other embeddings than
sentence-transformers without a word; saving without it would drop the prompts. Plain Python: both backends and
the ONNX-only path use it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .. import layout
from ..errors import InvalidInputError, ModelFolderError, warn
from .options import check_truncate_dim

logger = logging.getLogger(__name__)

SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")
# sentence-transformers 6 gives every model these prompts, empty unless set (saved or given), so that
# encode(prompt_name="query") and encode_query/encode_document work on any model; encode_document then takes
# "document" (empty: no prompt) before "passage" or "corpus".
STANDARD_PROMPTS = {"query": "", "document": ""}


@dataclass
class ModelSettings:
    """Prompts, default prompt name and similarity function of one model, validated."""

    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None  # None: 'cosine' once a similarity is asked for, as sentence-transformers
    truncate_dim: int | None = None  # the model's (Matryoshka): every sentence embedding cut to this many dimensions

    @classmethod
    def load(cls, folder: str | os.PathLike | None, prompts: Any = None, default_prompt_name: Any = None,
             similarity_fn_name: Any = None, truncate_dim: Any = None) -> "ModelSettings":
        """The saved settings of ``folder`` (if any) under the ones given, which win key by key, over the empty
        STANDARD_PROMPTS."""
        saved = _read_saved(folder)
        merged = {**STANDARD_PROMPTS, **(saved.get("prompts") or {})}
        if isinstance(prompts, dict):  # None for a name: the saved prompt of that name, else "" (as ST 6)
            prompts = {k: merged.get(k, "") if v is None else v for k, v in prompts.items()}
        merged.update(check_prompts(prompts))
        saved_similarity = saved.get("similarity_fn_name")
        if saved_similarity is not None and saved_similarity not in SIMILARITY_FNS:
            # e.g. "maxsim" from a multi-vector model: sentence-transformers falls back to cosine for single vectors
            logger.warning("%s names similarity_fn_name %r, which does not apply to one vector per text; using "
                           "'cosine' (allowed: %s)", layout.ST_CONFIG_JSON, saved_similarity, ", ".join(SIMILARITY_FNS))
            saved_similarity = None
        settings = cls(check_prompts(merged),
                       default_prompt_name if default_prompt_name is not None else saved.get("default_prompt_name"),
                       similarity_fn_name if similarity_fn_name is not None else saved_similarity,
                       truncate_dim if truncate_dim is not None else saved.get("truncate_dim"))
        settings.default_prompt_name = settings.check_name(settings.default_prompt_name, "default_prompt_name")
        settings.similarity_fn_name = check_similarity_fn_name(settings.similarity_fn_name)
        try:
            settings.truncate_dim = check_truncate_dim(settings.truncate_dim)
        except InvalidInputError as e:  # only a saved value can get here: a given one was checked by the caller
            raise ModelFolderError(f"{Path(str(folder)) / layout.ST_CONFIG_JSON}: {e}") from e
        return settings

    def check_name(self, name: Any, what: str = "prompt_name") -> str | None:
        if name is None:
            return None
        if not isinstance(name, str) or name not in self.prompts:
            raise InvalidInputError(f"{what} {name!r} is not one of this model's prompts; allowed: "
                                    f"{sorted(self.prompts) or 'none (the model has no prompts)'}")
        return name

    def resolve(self, prompt: Any = None, prompt_name: Any = None) -> str | None:
        """The text to prepend: ``prompt``, else the named prompt, else the default prompt (None: no prompt)."""
        if prompt is not None:
            check_prompt(prompt)
            if prompt_name is not None:
                warn(f"both prompt and prompt_name ({prompt_name!r}) were given: the prompt is used and "
                     "prompt_name ignored, as in sentence-transformers", UserWarning)
            return prompt
        if prompt_name is not None:
            return self.prompts[self.check_name(prompt_name)]
        name = self.default_prompt_name
        if name is not None and name not in self.prompts:
            # set before its prompt, or its prompt removed since: sentence-transformers then encodes without one
            warn(f"default_prompt_name {name!r} is not one of this model's prompts "
                 f"({sorted(self.prompts)}): encoding without a prompt", UserWarning)
            return None
        return self.prompts[name] if name is not None else None

    def to_config(self) -> dict[str, Any]:
        return {"prompts": dict(self.prompts), "default_prompt_name": self.default_prompt_name,
                "similarity_fn_name": self.similarity_fn_name, "truncate_dim": self.truncate_dim}


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string; got {type(prompt).__name__}")
    return prompt


def check_prompts(prompts: Any) -> dict[str, str]:
    if prompts is None:
        return {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in prompts.items()):
        raise InvalidInputError(f"prompts must be a dict of prompt name -> prompt text (both strings); got {prompts!r}")
    return dict(prompts)


_ENUM_MEMBERS = {"COSINE": "cosine", "DOT_PRODUCT": "dot", "DOT": "dot", "EUCLIDEAN": "euclidean",
                 "MANHATTAN": "manhattan"}


def check_similarity_fn_name(name: Any) -> str | None:
    if isinstance(name, Enum):  # sentence-transformers' SimilarityFunction (values "cosine", ...) or 2.x's (0-3)
        name = _ENUM_MEMBERS.get(name.name, name.value)
    if name is not None and name not in SIMILARITY_FNS:
        raise InvalidInputError(f"similarity_fn_name {name!r} is not supported; allowed: {', '.join(SIMILARITY_FNS)}")
    return name


def prepend(prompt: str, inputs: list) -> list:
    """``prompt + text`` for every input: a string, the first text of a pair, or the text of a one-text dict."""
    out = []
    for item in inputs:
        if isinstance(item, str):
            out.append(prompt + item)
        elif isinstance(item, (tuple, list)):
            out.append((prompt + item[0], *item[1:]))
        else:  # a one-text dict {key: text} (checked by encode.options.check_item)
            out.append({key: prompt + text for key, text in item.items()})
    return out


def _read_saved(folder: str | os.PathLike | None) -> dict[str, Any]:
    if folder is None:
        return {}
    path = Path(folder) / layout.ST_CONFIG_JSON
    saved = layout.read_json_if_exists(path, {}) or {}
    if not isinstance(saved, dict):
        raise ModelFolderError(f"{path} must hold a JSON object; got {type(saved).__name__}")
    if isinstance(saved.get("prompts"), dict):  # a prompt saved as null reads as "", as sentence-transformers does
        saved["prompts"] = {k: "" if v is None else v for k, v in saved["prompts"].items()}
    try:
        check_prompts(saved.get("prompts"))
    except InvalidInputError as e:
        raise ModelFolderError(f"{path}: {e}") from e
    return saved
