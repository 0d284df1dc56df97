"""One-query latency: the time of ``encode(one_text)``, the call a search server makes per request, for
sentence-transformers and st-onnx's onnx rows, side by side in one run.

    python benchmarks/bench_query.py                       # 200 queries x 5 rounds, one caller: about a minute
    python benchmarks/bench_query.py --clients 1 2 4       # also 2 and 4 threads calling at once
    python benchmarks/bench_query.py --calls 50 --rounds 3

The queries are the first ``--calls`` texts of the short corpus. Every row's model is loaded once, in this one
process (a load is not timed: bench_encode.py measures cold starts); each round runs every row over the same
queries, one call per text, from ``--clients`` threads at once sharing the row's model, the rows' order rotating
from round to round so that none always runs after the same neighbour. Reported per row: calls per second and the
mean milliseconds per call (medians over rounds), the 50th, 90th and 99th percentiles of single calls, and the
median of the per-round ratios of calls per second to sentence-transformers' (above 1 is faster). Rows:

- sentence-transformers: torch fp32, its own threads (as many as torch takes, all cores by default);
- st-onnx onnx fp32 / int8: the default sessions, made for bulk encoding: batches run side by side, one thread
  each, so a call of one text runs on one core;
- st-onnx onnx fp32 prepacked: fp32 with ONNX Runtime's weight prepacking on (st-onnx leaves it off for fp32: a
  second copy of the weights, for a few percent on bulk batches; README);
- ..., N threads: ``intra_op_num_threads`` set to the cores: one batch at a time, on every core (fastest for a
  single caller on idle cores; README says when not).

Writes a table to stdout and JSON into benchmarks/out/. Never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_encode import DEFAULT_DATA, DEFAULT_OUT, export_graphs, load_texts, prepare_model  # noqa: E402

REFERENCE = "sentence-transformers"
PREPACK = {"session_options": {"config_entries": {"session.disable_prepacking": "0"}}}


def rows(cores: int) -> dict[str, dict]:
    """Row name -> the onnx_options of an st-onnx row (None: sentence-transformers)."""
    return {
        REFERENCE: None,
        "st-onnx onnx fp32": {"precision": "fp32"},
        "st-onnx onnx fp32 prepacked": {"precision": "fp32", **PREPACK},
        f"st-onnx onnx fp32 prepacked, {cores} threads": {"precision": "fp32", **PREPACK,
                                                          "intra_op_num_threads": cores},
        "st-onnx onnx int8": {"precision": "int8"},
        f"st-onnx onnx int8, {cores} threads": {"precision": "int8", "intra_op_num_threads": cores},
    }


def build(model: str, options: dict | None):
    """encode(one text) for a row."""
    if options is None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model, device="cpu")
        return lambda text: st.encode(text)
    from st_onnx import SentenceTransformer

    m = SentenceTransformer(model, backend="onnx", device="cpu", onnx_options={**options, "export": "never"})
    return lambda text: m.encode(text)


def time_round(encode, queries: list[str], clients: int) -> tuple[float, list[float]]:
    """(wall seconds, seconds of each call) for the queries, one call each, from ``clients`` threads at once
    that take the next query as they finish one (a threaded server's request handlers)."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    next_query = iter(queries)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                text = None if failures else next(next_query, None)  # a failed call stops every client
            if text is None:
                return
            start = time.perf_counter()
            try:
                encode(text)
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread, below
                with lock:
                    failures.append(e)
                return
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise failures[0]
    return wall, latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(encoders: dict, queries: list[str], rounds: int, clients: int = 1) -> dict[str, dict]:
    names = list(encoders)
    for encode in encoders.values():  # warm-up: first-call allocations and lazy imports out of the timings
        time_round(encode, queries[:5], 1)
    walls: dict[str, list[float]] = {name: [] for name in names}
    singles: dict[str, list[float]] = {name: [] for name in names}
    means: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, latencies = time_round(encoders[name], queries, clients)
            walls[name].append(wall)
            singles[name] += latencies
            means[name].append(statistics.fmean(latencies))
    result = {}
    for name in names:
        ratios = [ref / own for ref, own in zip(walls[REFERENCE], walls[name])]  # throughput, per round
        result[name] = {
            "calls_per_s": statistics.median(len(queries) / w for w in walls[name]),
            "ms_per_call": statistics.median(means[name]) * 1e3,
            "round_ms_per_call": [m * 1e3 for m in means[name]],
            "p50_ms": _percentile(singles[name], 0.5) * 1e3,
            "p90_ms": _percentile(singles[name], 0.9) * 1e3,
            "p99_ms": _percentile(singles[name], 0.99) * 1e3,
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
        }
    return result


def print_table(report: dict) -> None:
    from machine import summary

    print(f"\nmachine: {summary(report['machine'])}")
    print(f"model {report['model']}: {report['calls']} one-text calls x {report['rounds']} rounds, load average "
          f"before {report['loadavg_before'][0]:.2f}")
    for clients, rows in report["by_clients"].items():
        print(f"\n{clients} client thread(s) at once; ratio: calls/s over sentence-transformers', per round")
        print(f"  {'row':40s} {'calls/s':>8s} {'ms/call':>8s} {'p50 ms':>7s} {'p90 ms':>7s} {'p99 ms':>7s} "
              f"{'ratio':>7s}  per round")
        for name, r in rows.items():
            if "error" in r:
                print(f"  {name:40s} {r['error']}")
                continue
            rounds = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
            print(f"  {name:40s} {r['calls_per_s']:8.1f} {r['ms_per_call']:8.2f} {r['p50_ms']:7.2f} "
                  f"{r['p90_ms']:7.2f} {r['p99_ms']:7.2f} {r['ratio']:6.2f}x  ({rounds})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a copy of all-MiniLM-L6-v2 in benchmarks/out)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with short.json.gz (the queries)")
    p.add_argument("--calls", type=int, default=200, help="queries per round, one encode call each")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, nargs="+", default=[1],
                   help="threads calling encode at once on each row's one model (a threaded server), one run each")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    for flag in ("calls", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1; got {getattr(args, flag)}")
    if min(args.clients) < 1:
        p.error(f"--clients must be at least 1; got {min(args.clients)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data)
    if not (data / "short.json.gz").is_file():
        print(f"the query corpus short.json.gz is not in {data} (as in ../shared/data/bench of the development "
              "machines); pass --data DIR", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    model = prepare_model(args.model, out)
    queries = load_texts(data, "short", args.calls)
    from st_onnx.runtime.session import available_cores

    wanted = rows(available_cores())
    failed = export_graphs(model, {o["precision"] for o in wanted.values() if o})
    encoders, errors = {}, {}
    for name, options in wanted.items():
        if options and options["precision"] in failed:
            errors[name] = failed[options["precision"]]
            continue
        encoders[name] = build(model, options)
    from machine import describe

    by_clients = {}
    for clients in args.clients:
        results = measure(encoders, queries, args.rounds, clients)
        by_clients[str(clients)] = {name: results.get(name) or {"error": errors[name]} for name in wanted}
    report = {"model": model, "calls": len(queries), "rounds": args.rounds, "machine": describe(),
              "loadavg_before": load_before, "loadavg": os.getloadavg(), "by_clients": by_clients,
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print_table(report)
    path = out / "query.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
