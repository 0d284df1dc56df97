"""The GPU benchmark script runs end to end in its CPU dry-run mode, so a lent GPU's minutes are not spent on a
script error. Speed is never asserted; what is checked is that every row ran (or says why it could not)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from helpers import stsb_sentences

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_dry_run_writes_every_row(tmp_path):
    data = tmp_path / "bench"
    data.mkdir()
    sentences = stsb_sentences(120)
    for corpus, texts in (("short", sentences[:90]), ("long", [" ".join(sentences[i:i + 12]) for i in range(30)])):
        with gzip.open(data / f"{corpus}.json.gz", "wt", encoding="utf-8") as f:
            json.dump(texts, f)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--data", str(data), "--out",
         str(out), "--work", str(tmp_path / "work"), "--repeat", "1", "--batch-sizes", "16"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_results.json").read_text())
    assert report["dry_run"] and report["texts"] == 120 and report["device"] == "cpu"
    rows = report["runs"]["tiny-bert (dry run), batch 16"]["rows"]
    for name in ("sentence-transformers", "st-onnx", "pool 1 session", "pool 2 sessions"):
        assert rows[name]["texts_per_s"] > 0 and len(rows[name]["seconds"]) == 1, name
    assert rows["sentence-transformers"]["ratio"] == 1.0
    assert "ratio_to_pool 1 session" in rows["pool 2 sessions"]
    assert "needs device 'cuda'" in rows["st-onnx packed"]["error"]  # the CPU has no packed-attention kernels
    assert "st-onnx packed - (target 1.3x) n/a" in proc.stdout
    assert "MET" not in proc.stdout and "MISSED" not in proc.stdout  # no verdict on a dry run's speed
    table = (out / "gpu_results.md").read_text()
    assert "| tiny-bert (dry run), batch 16 | sentence-transformers |" in table and "| 1.00x |" in table
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--markdown",
                            str(out / "gpu_results.json")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == table


def test_a_row_that_fails_while_encoding_keeps_the_others():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_gpu import measure, summarize

    def broken(texts):
        raise MemoryError("out of memory")

    rows = {"sentence-transformers": lambda texts: None, "st-onnx": broken}
    times = measure(rows, ["a"] * 10, ["a"], repeat=2)
    assert list(times) == ["sentence-transformers"] and len(times["sentence-transformers"]) == 2
    summary = summarize(rows, times, 10, 30)
    assert summary["st-onnx"] == {"error": "MemoryError while encoding: out of memory"}
    assert summary["sentence-transformers"]["ratio"] == 1.0


def test_bench_export_reports_time_memory_files_and_parity(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_export

    monkeypatch.setitem(bench_export.SHAPES, "broken", ("no-such-arch", None, {}))  # its build fails
    out, work = tmp_path / "export.json", tmp_path / "new" / "work"  # a work folder that does not exist yet
    assert bench_export.main(["--shapes", "broken", "tiny", "--precisions", "fp32", "int8", "--work", str(work),
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["shape"] == "broken" and "building the broken model failed" in rows[0]["error"]
    assert [(r["shape"], r["precision"]) for r in rows[1:]] == [("tiny", "fp32"), ("tiny", "int8")]
    for row in rows[1:]:
        assert "error" not in row and row["seconds"] > 0 and 0.1 < row["peak_gb"] < 8
        assert row["graph_mb"] > 0 and row["data_mb"] == 0 and row["min_cosine"] > 0.999
    assert "tiny         fp32" in capsys.readouterr().out and list(work.iterdir()) == []  # its work folder is gone
