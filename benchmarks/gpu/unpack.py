"""Unpack onnxruntime-gpu, carried as an xz-compressed tar of the unzipped wheel in parts, into a site folder.

    python3 benchmarks/gpu/unpack.py PARTS_DIR SHA256_FILE DEST

PARTS_DIR holds p0, p1, ... (benchmarks/gpu/prepare.sh cut them; run.sh's first four device calls copied them
there); their concatenation must have the sha256 in SHA256_FILE. It is unpacked with Python's tarfile (the
'data' filter: no absolute paths, links or devices) into DEST, which then imports as a plain site folder
(onnxruntime/ beside its onnxruntime_gpu-*.dist-info). Exit status 1, saying which parts were there, when the
parts are missing or do not add up; nothing is unpacked then.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import time
from pathlib import Path


class _Chain:
    """The parts read one after another as one file (read only, forward only: what tarfile's stream mode needs)."""

    def __init__(self, parts: list[Path]) -> None:
        self._parts = list(parts)
        self._f = None

    def read(self, size: int = -1) -> bytes:
        out = []
        while size != 0 and (self._f is not None or self._parts):
            if self._f is None:
                self._f = open(self._parts.pop(0), "rb")
            chunk = self._f.read(size if size > 0 else -1)
            if not chunk or size < 0:
                if chunk:
                    out.append(chunk)
                self._f.close()
                self._f = None
                continue
            out.append(chunk)
            size -= len(chunk)
        return b"".join(out)


def parts_of(folder: Path) -> list[Path]:
    parts = sorted(folder.glob("p[0-9]*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else -1)
    return [p for p in parts if p.name[1:].isdigit()]


def digest(parts: list[Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def unpack(parts_dir: Path, sha_file: Path, dest: Path) -> int:
    start = time.perf_counter()
    parts = parts_of(parts_dir)
    listing = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in parts) or "none"
    want = sha_file.read_text().split()[0] if sha_file.is_file() else None
    if want is None:
        print(f"unpack: no {sha_file}", file=sys.stderr)
        return 1
    got = digest(parts)
    if got != want:
        print(f"unpack: the parts in {parts_dir} ({listing}) do not add up: sha256 {got}, expected {want} "
              "(a part missing or stale: run the first four device calls again, back to back)", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    n = size = 0
    with tarfile.open(fileobj=_Chain(parts), mode="r|xz") as tar:
        for member in tar:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extract(member, dest, **kwargs)
            n += 1
            size += member.size
    print(f"unpack: {len(parts)} parts ({listing}), sha256 ok, {n} entries, {size / 2**20:.1f} MiB into {dest} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(unpack(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
