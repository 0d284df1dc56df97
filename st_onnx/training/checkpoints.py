"""Checkpoints of ``fit``: a model folder per step, written atomically, with the training state beside it.

``<checkpoint_path>/<global step>/`` is a complete model folder (``model.save``, so a stale fused graph is
never carried into it) plus ``training_state.pt``: global step, best score, the optimizers' and schedulers'
states, the losses' own weights (e.g. SoftmaxLoss' classifier), the RNG states, and, for each DataLoader,
the torch RNG state its current pass drew its order from (at its first batch) and how many batches of that pass
were drawn.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import folders
from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


@dataclass
class TrainingState:
    """Everything besides the model weights that a resumed ``fit`` needs to continue where it stopped."""

    global_step: int = 0
    best_score: float = -9999999.0
    optimizers: list[dict] = field(default_factory=list)
    schedulers: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    passes: list[dict] = field(default_factory=list)  # per DataLoader: {"rng": torch state, "drawn": int, "draw"}


def capture_rng() -> dict[str, Any]:
    # numpy's state as plain ints and a list, not its ndarray: training_state.pt then loads with torch.load's
    # weights_only=True, which unpickles no code (a shared checkpoint folder could otherwise run its own)
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    numpy_state = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(model, checkpoint_path: str | os.PathLike, state: TrainingState, total_limit: int) -> Path:
    """Write ``<checkpoint_path>/<step>`` in one rename, then keep only the newest ``total_limit`` (0: all)."""
    target = Path(checkpoint_path) / str(state.global_step)
    with folders.atomic_folder(target) as tmp:
        model.save(tmp)  # the model folder, written through model.save (stale fused graphs dropped)
        with open(tmp / STATE_FILE, "wb") as f:  # through Python's file: a full disk raises its ENOSPC (torch's own
            torch.save(vars(state), f)           # writer says "unexpected pos"), which atomic_folder names
    logger.info("saved checkpoint %s", target)
    prune_checkpoints(checkpoint_path, total_limit)
    return target


def list_checkpoints(checkpoint_path: str | os.PathLike) -> list[Path]:
    """Step folders under ``checkpoint_path``, oldest first."""
    root = Path(checkpoint_path)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def prune_checkpoints(checkpoint_path: str | os.PathLike, total_limit: int) -> None:
    if not total_limit or total_limit <= 0:
        return
    for old in list_checkpoints(checkpoint_path)[:-total_limit]:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("removed old checkpoint %s (checkpoint_save_total_limit=%d)", old, total_limit)


def find_resume_checkpoint(checkpoint_path: str | None, resume_from_checkpoint: bool | str) -> Path | None:
    """The checkpoint to resume from: a given folder, or the newest one with a training state under
    ``checkpoint_path``; None (logged) when there is none yet."""
    if not resume_from_checkpoint:
        return None
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        folder = Path(resume_from_checkpoint)
        if not (folder / STATE_FILE).is_file():
            raise InvalidInputError(
                f"resume_from_checkpoint={str(folder)!r} is not a checkpoint folder (no {STATE_FILE}); "
                "give a <checkpoint_path>/<step> folder written by fit, or True for the newest"
            )
        return folder
    if checkpoint_path is None:
        raise InvalidInputError(
            "resume_from_checkpoint=True needs checkpoint_path: the folder fit saved checkpoints to"
        )
    found = [p for p in list_checkpoints(checkpoint_path) if (p / STATE_FILE).is_file()]
    if not found:
        logger.warning("no checkpoint under %s yet: training from the start", checkpoint_path)
        return None
    return found[-1]


def _numpy_array_globals() -> list:
    try:  # numpy 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # the last: numpy 2's UInt32DType


def load_checkpoint(model, folder: Path) -> TrainingState:
    """Load the checkpoint's weights into ``model.torch_modules`` and return its training state."""
    from ..modules import load_stack

    weights = load_stack(folder).state_dict()
    model.torch_modules.load_state_dict(weights)
    try:
        # numpy arrays are allowed (the numpy RNG state of checkpoints written before it became a list): the same
        # restricted unpickler rebuilds them from plain values, running no code
        with torch.serialization.safe_globals(_numpy_array_globals()):
            raw = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InvalidInputError(
            f"{folder / STATE_FILE} holds objects other than tensors, numpy arrays and plain values, which st-onnx "
            f"does not unpickle (that could run code from the checkpoint); fit writes none of them: {e}"
        ) from e
    logger.info("resuming from checkpoint %s (global step %d)", folder, raw["global_step"])
    return TrainingState(**raw)
