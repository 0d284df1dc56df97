"""Every exception st-onnx raises.

Each one subclasses the builtin it means, so code that already catches ``ValueError``,
``FileNotFoundError`` or ``RuntimeError`` keeps working::

    StOnnxError                      (mixin: catch every st-onnx error at once)
    ├── InvalidInputError            (ValueError)   a bad argument: names the value and what is allowed
    ├── ModelFolderError             (ValueError)   a model folder that is missing a file or holds a broken one
    │   └── ModelNotFoundError       (FileNotFoundError too) no such folder, or a hub id that cannot be fetched
    ├── StaleGraphError              (RuntimeError) the fused graph was exported from other weights
    ├── GraphFileError               (ValueError)   a graph file that is truncated, corrupted or not the expected graph
    ├── ParityError                  (RuntimeError) an exported graph does not compute what PyTorch computes
    ├── BackendError                 (RuntimeError) the operation needs the other backend (e.g. ``fit`` on ONNX)
    ├── GraphRunError                (RuntimeError) ONNX Runtime failed running the graph on a batch
    ├── PoolError                    (RuntimeError) the session pool is stopped or a worker died
    ├── HubError                     (RuntimeError) a hub call failed: names the repo and the fix
    └── DiskFullError                (OSError, errno ENOSPC) a write ran out of room: names the folder and the
                                     room left there (nothing half-written is left)

    ProviderFallbackWarning          (RuntimeWarning, not an StOnnxError) CUDA was asked for, ONNX Runtime bound
                                     the CPU
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_NN = f"{os.sep}torch{os.sep}nn{os.sep}"  # a loss warns from inside torch's Module.__call__


class StOnnxError(Exception):
    """Base of every st-onnx exception (used as a mixin beside the builtin it means)."""


class InvalidInputError(StOnnxError, ValueError):
    """An argument has a value that is not allowed."""


class ModelFolderError(StOnnxError, ValueError):
    """A model folder is incomplete or holds a file that cannot be read."""


class ModelNotFoundError(ModelFolderError, FileNotFoundError):
    """No model exists at the given path or id."""


class StaleGraphError(StOnnxError, RuntimeError):
    """The fused ONNX graph was exported from weights other than the current ones."""


class GraphFileError(StOnnxError, ValueError):
    """A graph file is truncated, corrupted, or lacks the inputs/outputs st-onnx needs."""


class NewerGraphError(GraphFileError):
    """A graph that a newer st-onnx exported: neither run (its files may mean what this version does not know)
    nor exported over (that version would export it again: two versions sharing a folder would take turns)."""

    def __init__(self, message: str, graph: "os.PathLike[str] | None" = None) -> None:
        super().__init__(message)
        self.graph = graph


class ParityError(StOnnxError, RuntimeError):
    """An exported graph's outputs differ from PyTorch's beyond the precision's threshold."""


class BackendError(StOnnxError, RuntimeError):
    """The operation is not available on this backend."""


class GraphRunError(StOnnxError, RuntimeError):
    """ONNX Runtime failed running the graph on a batch (an input longer than the model takes, out of memory)."""


class PoolError(StOnnxError, RuntimeError):
    """The session pool cannot take work: it is stopped, or a worker failed."""


class HubError(StOnnxError, RuntimeError):
    """A call to the Hugging Face Hub failed."""


class DiskFullError(StOnnxError, OSError):
    """A write ran out of room on its disk (``errno`` ENOSPC): the message names the folder written into."""

    detail = ""  # what the writer itself said, where it said more than ENOSPC


class ProviderFallbackWarning(RuntimeWarning):
    """ONNX Runtime bound another execution provider than the one asked for."""


def allowed(value: object, choices) -> str:
    """Format 'got X; allowed: a, b, c' for error messages."""
    return f"got {value!r}; allowed: {', '.join(repr(c) for c in choices)}"


def positive_int(value: object, name: str, or_none: bool = False) -> int:
    """``value`` as an int when it is a positive integer (numpy integers too, never a bool); else InvalidInputError
    (whose message says None is allowed too where the caller, ``or_none``, takes it)."""
    return _int_from(value, name, 1, "a positive int", or_none)


def non_negative_int(value: object, name: str, or_none: bool = False) -> int | None:
    """``value`` as an int >= 0 (numpy integers too, never a bool), or None where ``or_none``; else
    InvalidInputError."""
    if value is None and or_none:
        return None
    return _int_from(value, name, 0, "an int >= 0", or_none)


def int_between(value: object, name: str, least: int, most: int, why: str = "") -> int:
    """``value`` as an int from ``least`` to ``most`` (numpy integers too, never a bool); else InvalidInputError."""
    wanted = f"an int from {least} to {most}{why}"
    number = _int_from(value, name, least, wanted, False)
    if number > most:
        raise InvalidInputError(f"{name} must be {wanted}; got {value!r}")
    return number


def _int_from(value: object, name: str, least: int, wanted: str, or_none: bool) -> int:
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < least:
        raise InvalidInputError(f"{name} must be {wanted}{' or None' if or_none else ''}; got {value!r}")
    return int(value)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside st-onnx (and torch.nn's module call): the user's
    line, whichever path led here. A fixed ``stacklevel`` points inside the package on some paths, and Python's
    once-per-location filter then hid the warning for every other caller."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE)
                                 or _TORCH_NN in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
