"""The five device calls that carry what benchmarks/gpu/run.sh needs, each checked against the 64 MiB a call may
carry (the working tree that travels, tracked and untracked-not-ignored files and shared/, plus the call's carry).

    python3 benchmarks/gpu/plan.py [--limit-mib 64]     # from the repository's root, after prepare.sh

Prints each call's carry list and command as the `run` tool takes them, with its size; exit status 1 when a call
is over the limit or a carried path is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MIB = 2**20
LIMIT_MIB = 64.0
FIRST = ("mkdir -p ~/ortgpu ~/gpuwork && cp .ortgpu/p? ~/ortgpu/ && cp .gpuwork/m? ~/gpuwork/ && "
         "ls -la ~/ortgpu ~/gpuwork")
LAST = "bash benchmarks/gpu/run.sh"
LAST_CARRY = [".ortgpu/SHA256", ".ortgpu/NAME", ".gpuwork/m4", ".gpuwork/minilm", ".gpuwork/bench",
              ".gpuwork/pins", ".gpuwork/wheels"]


def calls(root: Path) -> list[dict]:
    """The calls: one per onnxruntime part (p0..p3), each with the MiniLM part of the same number, then run.sh's
    (with MiniLM's fifth part, m4)."""
    parts = sorted(p.name for p in (root / ".ortgpu").glob("p[0-9]"))
    out = [{"carry": [f".ortgpu/{p}", f".gpuwork/m{p[1:]}"], "command": FIRST, "timeout_s": 120} for p in parts]
    out.append({"carry": list(LAST_CARRY), "command": LAST, "timeout_s": 600})
    return out


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_size(root: Path) -> int:
    """What travels with every call: tracked and untracked-not-ignored files, and shared/ where there is one."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    total = sum((root / name.decode()).stat().st_size for name in set(listed)
                if name and (root / name.decode()).is_file())
    shared = root / "shared"
    return total + (size_of(shared) if shared.is_dir() else 0)


def check(root: Path, limit_mib: float = LIMIT_MIB) -> tuple[list[str], bool]:
    """(lines to print, whether every call fits)."""
    tree = tree_size(root)
    lines = [f"working tree that travels with every call: {tree / MIB:.2f} MiB", ""]
    ok = True
    plan = calls(root)
    if len(plan) != 5:
        lines.append(f"ERROR: expected 4 onnxruntime parts .ortgpu/p0..p3, found {len(plan) - 1}")
        ok = False
    for i, call in enumerate(plan, 1):
        sizes = []
        for rel in call["carry"]:
            path = root / rel
            if not path.exists():
                lines.append(f"ERROR: call {i} carries {rel}, which is missing")
                ok = False
                continue
            sizes.append((rel, size_of(path)))
        total = tree + sum(s for _, s in sizes)
        fits = total <= limit_mib * MIB
        ok = ok and fits
        lines.append(f"call {i}: {total / MIB:.2f} MiB of {limit_mib:g} ({(limit_mib * MIB - total) / MIB:+.2f} MiB "
                     f"spare){'' if fits else '  OVER THE LIMIT'}: "
                     + ", ".join(f"{rel} {s / MIB:.2f}" for rel, s in sizes))
        lines.append(f"  run  carry {json.dumps(call['carry'])}")
        lines.append(f"       timeout_s {call['timeout_s']}, command: {call['command']}")
    lines += ["", "Make the calls back to back (the machine stays warm ~30 s after each), then give_back.",
              "run.sh's results come back from $OUT (8 files at most): steps.txt, env.txt, pytest-gpu.log, "
              "bench-gpu.log, stsb-gpu.log, gpu_results.json, stsb_gpu.json, gpu_correctness.jsonl."]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = p.parse_args(argv)
    lines, ok = check(args.root.resolve(), args.limit_mib)
    print("\n".join(lines))
    if not ok:
        print("\nFAILED: a call would not fit or a carried path is missing (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
