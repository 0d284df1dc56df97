"""Execution providers: which ones a device asks for, whether a GPU is really usable, and whether CUDA bound.

``onnxruntime-gpu`` lists CUDAExecutionProvider as available on machines without a GPU, and a session asked
for it then silently runs on the CPU. So "usable" is decided by the CUDA driver (``cuDeviceGetCount``), and
after a session is created ``check_bound`` compares what it bound with what was asked.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, Sequence

from ..devices import check_device, device_index
from ..errors import InvalidInputError, ProviderFallbackWarning, warn

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver sees (0 without a driver or a GPU); never imports torch."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return int(count.value)
    return 0


def cuda_usable() -> bool:
    """True when ONNX Runtime has its CUDA provider and the driver reports at least one GPU."""
    import onnxruntime as ort

    return CUDA in ort.get_available_providers() and cuda_device_count() > 0


# both ONNX Runtime packages installed (they ship the same files): the commands that keep the GPU one
_KEEP_ONE = "`pip uninstall -y onnxruntime onnxruntime-gpu`, then `pip install onnxruntime-gpu`"


def cuda_unusable_reason() -> str | None:
    """Why ONNX Runtime cannot run CUDA here, in words for a message (with the fix where it is a package one);
    None when it may: it has its CUDA provider and the driver sees a GPU (its libraries may still fail to load)."""
    import onnxruntime as ort

    reasons = []
    if CUDA not in ort.get_available_providers():
        if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
            reasons.append("both onnxruntime and onnxruntime-gpu are installed, and the CPU package's files took "
                           f"the place of the GPU one's: {_KEEP_ONE}")
        else:
            reasons.append(f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: it is a build "
                           "without CUDA, such as the CPU package; for CUDA, uninstall it (`pip uninstall "
                           "onnxruntime`), then `pip install onnxruntime-gpu`")
    if cuda_device_count() == 0:
        reasons.append("the CUDA driver reports no GPU")
    return "; ".join(reasons) or None


@functools.lru_cache(maxsize=1)
def warn_if_both_packages() -> None:
    """Once a process: warn where both ONNX Runtime packages are installed. They ship the same ``onnxruntime``
    files, the last one installed wins, and uninstalling either takes files the other needs."""
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        warn("both onnxruntime and onnxruntime-gpu are installed: they ship the same files, the last one installed "
             f"wins, and uninstalling either breaks the other. Keep one: {_KEEP_ONE} (or `onnxruntime` where no "
             "CUDA is wanted)")


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def resolve_device(device: str | None) -> str:
    """'cpu' or 'cuda:N' for a requested device; None picks CUDA only when a GPU is really usable."""
    if device is None:
        return "cuda:0" if cuda_usable() else "cpu"
    device = check_device(device)
    if device.startswith("cuda"):
        return f"cuda:{device_index(device)}"
    if device == "cpu" or device.startswith("cpu:"):  # torch's 'cpu:0': one CPU either way
        return "cpu"
    raise InvalidInputError(f"device {device!r} is not supported by the onnx backend; allowed: 'cpu', 'cuda', 'cuda:N'")


def check_providers(providers: Any, provider_options: Any) -> None:
    """``onnx_options['providers']``: a list of names or (name, options) pairs, each a provider this onnxruntime
    has; ``provider_options``: a dict, or a list of dicts. InvalidInputError naming the value otherwise."""
    if providers is not None:
        import onnxruntime as ort

        if isinstance(providers, (str, bytes)) or not isinstance(providers, (list, tuple)):
            raise InvalidInputError(f"onnx_options['providers'] must be a list such as ['CUDAExecutionProvider', "
                                    f"'CPUExecutionProvider']; got {providers!r}")
        known = ort.get_all_providers()
        for p in providers:
            if isinstance(p, (tuple, list)) and not (len(p) == 2 and isinstance(p[1], dict)):
                raise InvalidInputError(f"onnx_options['providers'] holds {p!r}; allowed: a provider name, or a "
                                        "(name, options dict) pair such as ('CUDAExecutionProvider', {'device_id': 0})")
            name = provider_name(p)
            if not isinstance(name, str) or name not in known:
                raise InvalidInputError(f"onnx_options['providers'] names {p!r}; allowed: the providers of this "
                                        f"onnxruntime, of which available here: {ort.get_available_providers()}")
    if provider_options is not None and not isinstance(provider_options, dict) and not (
            isinstance(provider_options, (list, tuple)) and all(isinstance(o, dict) for o in provider_options)):
        raise InvalidInputError(f"onnx_options['provider_options'] must be a dict or a list of dicts (one per "
                                f"provider); got {provider_options!r}")


def provider_name(entry: Any) -> Any:
    """The name of an ``onnx_options['providers']`` entry: a name, or a (name, options) pair."""
    return entry[0] if isinstance(entry, (tuple, list)) else entry


def providers_for(device: str, providers: Sequence[Any] | None = None,
                  provider_options: Sequence[dict] | dict | None = None,
                  cuda_defaults: dict | None = None) -> tuple[list[str], list[dict]]:
    """(providers, provider_options) for ``InferenceSession``: the providers given, else CUDA then CPU for a
    'cuda:N' device and the CPU alone otherwise. A CUDA entry starts from the device's id, ORT's
    kSameAsRequested arena growth and ``cuda_defaults``; what the entry itself and ``provider_options`` (a dict:
    the first provider's; a list: one per provider) say wins."""
    if providers:
        names = [provider_name(p) for p in providers]
        given = [dict(p[1]) if isinstance(p, (tuple, list)) else {} for p in providers]
    else:
        names = [CUDA, CPU] if device.startswith("cuda") else [CPU]
        given = [{} for _ in names]
    if isinstance(provider_options, dict):
        provider_options = [provider_options]
    for entry, extra in zip(given, provider_options or []):
        entry.update(extra or {})
    opts = []
    for name, entry in zip(names, given):
        base: dict = {}
        if name == CUDA:
            if device.startswith("cuda"):
                base["device_id"] = device_index(device)
            base["arena_extend_strategy"] = "kSameAsRequested"
            base.update(cuda_defaults or {})
        opts.append({**base, **entry})
    return list(names), opts


def check_bound(session: Any, asked: Sequence[str]) -> str:
    """The provider the session runs on; warns (ProviderFallbackWarning) when CUDA was asked and CPU bound."""
    bound = list(session.get_providers())
    missing = [p for p in asked if p not in (CUDA, CPU) and p not in bound]
    if missing:
        warn(f"{missing} were asked for but the session bound {bound} (not available in this "
             f"onnxruntime or on this machine)", ProviderFallbackWarning)
    if CUDA in asked and CUDA not in bound:
        why = cuda_unusable_reason() or ("ONNX Runtime could not load its CUDA libraries (check the CUDA/cuDNN "
                                         "versions onnxruntime-gpu needs, and LD_LIBRARY_PATH)")
        warn(
            f"CUDAExecutionProvider was asked for but the session bound {bound}: {why}; encoding runs on the "
            "CPU. Pass device='cpu' to silence this, or fix the CUDA setup.",
            ProviderFallbackWarning,
        )
        return CPU
    return bound[0] if bound else CPU
