"""What benchmarks/gpu/run.sh must install on the lent GPU machine before its steps, and the versions it ran with.

    python3 benchmarks/gpu/envcheck.py versions [--needs FILE]   # print versions; write what to install to FILE
    python3 benchmarks/gpu/envcheck.py transformers-ok VERSION    # exit 0 when VERSION is known to export right

Why: torch.onnx tracing of BERT crashes on transformers 5.4-5.8 (an IndexError in masking_utils.sdpa_mask: the
traced shapes are 0-d tensors, taken for the deprecated cache_position), and on 5.0/5.1 the fp16 CUDA-target
graph gets no Attention fusion (packing then fails). The machine's transformers version is not known ahead, so
unless it is a known-good one (5.2, or 5.9 and later) run.sh installs the carried set (transformers 5.24.0 with
tokenizers, safetensors and regex; huggingface_hub 1.33.0 too where the machine's is older than transformers 5.24
needs) into ~/site, ahead on PYTHONPATH. tests/test_export.py::test_fp16_export_keeps_fp32_io_and_is_checked,
first in run.sh's pytest step, is the canary that the result exports right.

Standard library only, and every import is tried on its own: a broken package is reported, never fatal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

# the carried set (benchmarks/gpu/prepare.sh downloads exactly these)
PINS = {"transformers": "5.24.0", "tokenizers": "0.23.3", "safetensors": "0.8.0", "regex": "2026.5.9",
        "huggingface_hub": "1.33.0"}
HUB_NEEDED = ((1, 31), (2, 0))  # transformers 5.24 needs huggingface_hub >= 1.31; sentence-transformers 6.0.1 < 2.0
MODULES = ("transformers", "tokenizers", "huggingface_hub", "safetensors", "regex", "sentence_transformers",
           "torch", "onnxruntime", "onnx", "numpy", "pytest", "httpx")


def version_tuple(version: str) -> tuple[int, ...] | None:
    """(major, minor) of a version string such as '5.24.0' or '5.5.0.dev0'; None where there is none."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def transformers_ok(version: str | None) -> bool:
    """Whether this transformers version is known to trace BERT right (5.2, or 5.9 and later)."""
    v = version_tuple(version or "")
    return v is not None and (v == (5, 2) or v >= (5, 9))


def hub_ok(version: str | None) -> bool:
    """Whether this huggingface_hub serves transformers 5.24 and sentence-transformers 6.0.1 (>= 1.31, < 2.0)."""
    v = version_tuple(version or "")
    return v is not None and HUB_NEEDED[0] <= v < HUB_NEEDED[1]


def probe(name: str) -> dict:
    """A module's version and where it was imported from, or why it could not be."""
    try:
        module = importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001 - a broken package is a finding, not a crash
        info = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        try:  # what is installed, for the record (a package that does not import is replaced all the same)
            from importlib.metadata import version

            info["installed"] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001
            pass
        return info
    info = {"version": str(getattr(module, "__version__", "?")),
            "from": str(Path(getattr(module, "__file__", "") or "?").parent)}
    if name == "onnxruntime":
        try:
            if hasattr(module, "preload_dlls"):
                module.preload_dlls()  # the CUDA/cuDNN libraries of the pip packages there
            info["providers"] = module.get_available_providers()
        except BaseException as e:  # noqa: BLE001
            info["providers"] = f"{type(e).__name__}: {e}"
    if name == "torch":
        try:
            info["cuda"] = f"{module.version.cuda}, available {module.cuda.is_available()}" + (
                f", {module.cuda.get_device_name(0)}" if module.cuda.is_available() else "")
        except BaseException as e:  # noqa: BLE001
            info["cuda"] = f"{type(e).__name__}: {e}"
    return info


def needs(found: dict) -> list[str]:
    """What run.sh installs from the carried wheels: 'transformers' (the whole set but huggingface_hub),
    'huggingface_hub', 'pytest'."""
    out = []
    tf = found.get("transformers", {})
    if not transformers_ok(tf.get("version")):
        out.append("transformers")
        if not hub_ok(found.get("huggingface_hub", {}).get("version")):
            out.append("huggingface_hub")
    if "version" not in found.get("pytest", {}):
        out.append("pytest")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("versions", help="print the versions (and where each module came from)")
    v.add_argument("--needs", type=Path, help="write what to install from the carried wheels here, one a line")
    v.add_argument("--label", default="", help="a heading for the printout")
    t = sub.add_parser("transformers-ok", help="exit 0 when VERSION is a known-good transformers")
    t.add_argument("version")
    args = p.parse_args(argv)
    if args.cmd == "transformers-ok":
        return 0 if transformers_ok(args.version) else 1
    print(f"== {args.label or 'versions'} (python {sys.version.split()[0]}, "
          f"PYTHONPATH={os.environ.get('PYTHONPATH', '')})", flush=True)
    found = {}
    for name in MODULES:
        found[name] = info = probe(name)
        print(f"{name:22s} " + ("  ".join(f"{k}={val}" for k, val in info.items())), flush=True)
    tf = found["transformers"].get("version")
    shown = tf or f"{found['transformers'].get('installed', '?')} (does not import)"
    print(f"transformers {shown}: " + ("known-good for the export" if transformers_ok(tf) else
                                       f"not known-good (5.2, or >= 5.9): the carried {PINS['transformers']} is used"))
    hub = found["huggingface_hub"].get("version")
    if not transformers_ok(tf):
        print(f"huggingface_hub {hub}: " + ("kept" if hub_ok(hub) else f"the carried {PINS['huggingface_hub']} is used"
                                            + ("" if "version" in found["httpx"] else
                                               " (WARNING: it needs httpx, which is missing here)")))
    if args.needs:
        wanted = needs(found)
        args.needs.write_text("".join(f"{n}\n" for n in wanted))
        print(f"to install from the carried wheels: {', '.join(wanted) or 'nothing'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
