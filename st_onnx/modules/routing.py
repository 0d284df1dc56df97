"""sentence-transformers 6's Dense and Normalize may read and write any features key and add a residual.

st-onnx's modules, and the fused graph, apply them to the sentence embedding only, so a setting that routes them
elsewhere is refused by name rather than dropped (dropping it would give other embeddings without a word).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelFolderError

SENTENCE_EMBEDDING = "sentence_embedding"


def check_sentence_embedding_only(kind: str, config: dict[str, Any], where: str) -> None:
    """Raise ModelFolderError when ``config`` routes ``kind`` off the sentence embedding or adds a residual."""
    read = config.get("module_input_name") or SENTENCE_EMBEDDING
    written = config.get("module_output_name") or read
    problems = [f"{key}={value!r}" for key, value in (("module_input_name", read), ("module_output_name", written))
                if value != SENTENCE_EMBEDDING]
    if config.get("use_residual"):
        problems.append(f"use_residual={config['use_residual']!r}")
    if problems:
        raise ModelFolderError(
            f"{kind} of {where} has {', '.join(problems)}; st-onnx runs {kind} on the sentence embedding only "
            f"(allowed: module_input_name and module_output_name {SENTENCE_EMBEDDING!r}, use_residual False)"
        )
