"""The ``st-onnx`` command line.

    st-onnx export MODEL_DIR OUT_DIR [--precision fp32|fp16|int8] [--replace] [-v]
                                      export the fused graph, print its parity report and the line that loads it
    st-onnx bench [ARGS...]           run benchmarks/bench_encode.py with ARGS

``export`` into MODEL_DIR itself adds ``onnx/st_onnx/<precision>.onnx`` (+ manifest) to the folder; into another
OUT_DIR it writes a complete, self-contained copy of the model folder with the graph added (atomically). An
OUT_DIR holding a model of other weights is refused unless ``--replace``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .errors import StOnnxError
from .layout import PRECISIONS


def bench_script() -> Path:
    """benchmarks/bench_encode.py of the checkout st-onnx runs from (an editable install), else of the st-onnx
    checkout the command runs in (installed from it with ``pip install .``: the package is in site-packages)."""
    import st_onnx

    beside = Path(st_onnx.__file__).resolve().parents[1] / "benchmarks" / "bench_encode.py"
    here = Path.cwd() / "benchmarks" / "bench_encode.py"
    return here if not beside.is_file() and here.is_file() and _is_st_onnx_checkout(Path.cwd()) else beside


def _is_st_onnx_checkout(folder: Path) -> bool:
    try:
        return 'name = "st-onnx"' in (folder / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def _export(args: argparse.Namespace) -> int:
    from .export import ParityReport, export_model_folder, read_manifest

    try:
        graph = export_model_folder(args.model_dir, args.precision, out_dir=args.out_dir, replace=args.replace)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise OSError(e.errno, f"{e.strerror} (OUT_DIR must be writable, or, where it does not exist yet, the "
                               "folder it is to be made in: it gets a complete copy of the model folder)",
                      e.filename) from e
    manifest = read_manifest(graph)
    print(f"wrote {graph}")
    data = manifest.get("external_data")
    if isinstance(data, dict):
        print(f"weights: {data.get('file')} ({data.get('bytes', 0) / 1e6:,.1f} MB) beside it: the graph is over "
              "protobuf's 2 GB; keep the two files together")
    print(f"fusions: {manifest.get('fusions') or 'none'}")
    shift = manifest.get("left_padding_shift")
    if isinstance(shift, (int, float)):
        print(f"warning: the tokenizer pads on the left and the model's positions shift with it (cosine distance "
              f"{shift:.3g} alone vs beside a long text in torch); the graph embeds each text as if alone: set "
              "padding_side to 'right' in tokenizer_config.json for the backends to agree")
    parity = manifest.get("parity") or {}
    if "min_cosine" in parity:
        print(ParityReport.from_dict(parity))
    else:
        print(f"parity not checked: {parity.get('reason', 'unknown')}")
    device = "device='cuda', " if args.precision == "fp16" else ""  # fp16 runs on CUDA only
    print(f"load: SentenceTransformer({str(args.out_dir)!r}, backend='onnx', {device}"
          f"onnx_options={{'precision': '{args.precision}'}})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    script = bench_script()
    if not script.is_file():
        print(f"error: the benchmark script {script} is absent; `st-onnx bench` runs the benchmarks/ folder of a "
              "clone of st-onnx, which the package does not install: run it in the clone's top folder",
              file=sys.stderr)
        return 2
    env = {**os.environ, "ST_ONNX_BENCH_PROG": "st-onnx bench"}  # the script's usage lines name this command
    try:
        return subprocess.call([sys.executable, str(script), *args.bench_args], env=env)
    except KeyboardInterrupt:  # the script, in the same process group, got the Ctrl-C too and says so
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="st-onnx", description="sentence-transformers models as one fused ONNX graph")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (fusions, parity) to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export a model folder's fused graph and print its parity report")
    export.add_argument("model_dir", help="a sentence-transformers (or plain transformers) model folder")
    export.add_argument("out_dir", help="MODEL_DIR itself, or a new folder for a self-contained copy")
    export.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (any device), int8 (CPU), fp16 (CUDA only)")
    export.add_argument("--replace", action="store_true",
                        help="replace an OUT_DIR that holds a model of other weights (its weights go)")
    export.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress (fusions, parity) to stderr")
    export.set_defaults(run=_export)
    bench = sub.add_parser("bench", help="run benchmarks/bench_encode.py, passing the arguments through")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench_encode.py")
    bench.set_defaults(run=_bench)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that the work folders' cleanup runs (`timeout`, `kill`)."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    start = next((i for i, arg in enumerate(argv) if arg not in ("-v", "--verbose")), len(argv))
    if argv[start:start + 1] == ["bench"]:  # everything after 'bench' belongs to the script, options included
        return _bench(argparse.Namespace(bench_args=argv[start + 1:]))
    args = build_parser().parse_args(argv)
    # st-onnx's warnings to stderr where nothing else handles logging (the console script), for this call only:
    # basicConfig() would leave the handler on the root logger of an application calling main(), whose own
    # basicConfig() afterwards would do nothing
    root, handler = logging.getLogger(), None
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    package_logger = logging.getLogger("st_onnx")
    level = package_logger.level
    if args.verbose:  # st-onnx's progress, not every INFO line of ONNX Runtime's optimizer and quantizer
        package_logger.setLevel(logging.INFO)
    # SIGTERM (`timeout`, `kill`, a cancelled CI job) unwinds as Ctrl-C does, so the work folders are removed
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return args.run(args)
    except (StOnnxError, OSError) as e:  # a bad folder, a read-only or missing parent: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the writes are atomic: nothing half-written is left
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except _Terminated:
        print("terminated: nothing written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:  # main() called from Python (tests, a script) gives the caller's handler and log level back
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        package_logger.setLevel(level)
        if handler is not None:
            root.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
