"""Device names: parsing and checking, without importing torch or onnxruntime."""

from __future__ import annotations

import re

from .errors import InvalidInputError

_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


def check_device(device: object) -> str:
    """Return ``device`` as a string after checking it names a device st-onnx can use (an int N: 'cuda:N')."""
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return f"cuda:{device}"
    name = str(device)
    if not _DEVICE.match(name):
        raise InvalidInputError(f"device {device!r} is not recognised; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'")
    return name


def device_index(device: str) -> int:
    _, _, idx = device.partition(":")
    return int(idx) if idx else 0


def default_torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
