"""What a benchmark ran on, recorded in every result file: the CPU (model, the instruction sets that decide
ONNX Runtime's kernels), cores, memory, the package versions and the commit.

The development machines of this project change between sessions (an Intel Xeon with AMX on one day, an AMD EPYC
on another), and a figure read without its CPU misleads: int8 speed depends on VNNI, fp32 on AVX-512.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# the flags that change which kernels ONNX Runtime and torch pick on x86
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
                "amx_int8", "amx_bf16")
PACKAGES = ("onnxruntime-gpu", "onnxruntime", "torch", "transformers", "sentence-transformers", "tokenizers", "onnx",
            "numpy", "st-onnx")
REPO = Path(__file__).resolve().parents[1]


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _commit() -> str | None:
    """HEAD of this repository, with '+dirty' when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _cpu_quota() -> float | None:
    try:
        from st_onnx.runtime.session import cgroup_cpu_quota
    except ImportError:  # a benchmark run against another checkout
        return None
    return cgroup_cpu_quota()


def describe() -> dict:
    """The machine and software a result comes from, as JSON-ready values."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cpu_quota()
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family_model": f"{info['cpu family']}/{info['model']}" if "cpu family" in info and "model" in info else None,
        "cpu_flags": [flag for flag in KERNEL_FLAGS if flag in flags] if flags else None,  # None: not readable
        "cpus": cpus,
        "cpu_quota": quota,  # a container's CFS quota in CPUs (st-onnx sizes its runs by the smaller); None: none
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": _versions(),
        "commit": _commit(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def summary(machine: dict) -> str:
    """One line for a table's header: CPU, its kernel flags, cores, memory, ONNX Runtime."""
    found = machine.get("cpu_flags")
    flags = "flags unknown" if found is None else " ".join(found) or "no AVX2"
    ort = machine.get("versions", {})
    runtime = next((f"{name} {ort[name]}" for name in ("onnxruntime-gpu", "onnxruntime") if name in ort), "no ORT")
    family = f", family/model {machine['cpu_family_model']}" if machine.get("cpu_family_model") else ""
    quota = f" (a quota of {machine['cpu_quota']:g})" if machine.get("cpu_quota") is not None else ""
    return (f"{machine['cpu_model']}{family} ({flags}), {machine['cpus']} cpus{quota}, {machine['memory_gib']} GiB, "
            f"{runtime}, commit {machine.get('commit')}")
