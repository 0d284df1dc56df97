"""The benchmark's table (stdout) and chart (PNG): presentation only, no measurement."""

from __future__ import annotations

from pathlib import Path


def _load(averages) -> str:
    return ", ".join(f"{x:.1f}" for x in averages) if averages else "not recorded"


def print_table(report: dict) -> None:
    from machine import summary

    print(f"\nmachine: {summary(report['machine'])}" if "machine" in report else "")
    print(f"model {report['model']}, batch_size {report['batch_size']}, limit {report['limit']}, "
          f"repeat {report['repeat']}, load average before {_load(report.get('loadavg_before'))}, after "
          f"{_load(report['loadavg'])} (this run's own work counts in the second)")
    for corpus, res in report["corpora"].items():
        width = max(28, *map(len, res["rows"]))
        print(f"\n{corpus}: {res['texts']} texts, {res['tokens']} tokens (unpadded)")
        print(f"  {'row':{width}s} {'texts/s':>9s} {'tokens/s':>10s} {'ratio':>7s} {'peak RSS':>9s} {'load':>6s}")
        for row, r in res["rows"].items():
            if "error" in r:
                print(f"  {row:{width}s} error: {r['error']}")
                continue
            ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
            print(f"  {row:{width}s} {r['texts_per_s']:9.1f} {r['tokens_per_s']:10.0f} {ratio:>7s} "
                  f"{r['peak_rss_mb']:7.0f}MB {r['load_s']:5.2f}s")
    cold = report.get("cold_start") or {}
    if cold:
        print("\ncold start (process start to first embedding, median):")
        for which, r in cold.items():
            name = "sentence-transformers" if which == "st" else "st-onnx onnx fp32"
            print(f"  {name:28s} " + (f"{r['seconds']:.2f} s" if "seconds" in r else f"error: {r['error']}"))
    if report.get("targets"):
        print("\ntargets:")
        for line in report["targets"]:
            print("  " + line)


def write_chart(report: dict, path: Path) -> Path | None:
    """Grouped bars of each row's ratio to sentence-transformers, short and long; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    corpora = list(report["corpora"])
    rows = [r for r in report["corpora"][corpora[0]]["rows"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(corpora), 1)
    for i, corpus in enumerate(corpora):
        ratios = [report["corpora"][corpus]["rows"].get(r, {}).get("ratio") for r in rows]
        bars = ax.bar([x + i * width for x in range(len(rows))], [r or 0 for r in ratios], width, label=corpus)
        ax.bar_label(bars, labels=[f"{r:.2f}" if r is not None else "failed" for r in ratios], fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([x + width * (len(corpora) - 1) / 2 for x in range(len(rows))])
    ax.set_xticklabels(rows, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("texts/s ratio to sentence-transformers (torch fp32)")
    ax.set_title(f"encode throughput, {report['model'].rsplit('/', 1)[-1]} (limit {report['limit']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
