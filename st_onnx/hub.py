"""The only importer of huggingface_hub: download a model by id, push a folder (placeholder until the hub issue)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError


def resolve_model_path(model_id: str, cache_folder: str | os.PathLike | None = None, token=None) -> Path:
    """Download (or find in the cache) the model ``model_id`` and return its local folder."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_folder, token=token))
    except Exception as e:  # refined by the hub issue
        raise ModelNotFoundError(
            f"could not load model {model_id!r}: it is not a local folder and the Hub download failed ({e}). "
            "Pass the path of a local model folder, or connect to the Hub."
        ) from e
