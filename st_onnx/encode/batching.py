"""Length-sorted, token-budgeted batches: the cheapest way to cut padding without changing the graph.

Texts are ordered longest first; a batch takes texts while both limits hold: at most ``batch_size`` texts, and
at most ``token_budget`` padded tokens (texts x its first, longest, text). Short texts thus travel in larger
batches, long ones in smaller batches, and no batch holds more than the budget whatever the lengths.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..errors import positive_int

# CPU: padded tokens per run. Runs go 'cores' at a time (runtime/encoder.py); the budget bounds ORT's CPU arena
# (runtime/session.py) and peak RSS. With the unfused attention of the CPU graphs (export/optimize.py) smaller
# runs are also faster: each layer's (texts x heads x seq x seq) scores stay in cache. Measured on the 2-core
# machine, all-MiniLM-L6-v2, medians of 6 interleaved rounds, 512 against 1024: int8 1.09x short / 1.17x long,
# fp32 1.07x / 1.08x; 384 as fast as 512, 2048 slower (0.98x / 0.91x int8). GPUs want more (TEI uses 16k).
DEFAULT_TOKEN_BUDGET = 512
GPU_TOKEN_BUDGET = 16384


def check_token_budget(value: object) -> int:
    return positive_int(value, "token_budget (padded tokens per batch)")


def longest_first(lengths: Sequence[int]) -> np.ndarray:
    """Indices ordering lengths longest first (stable: equal lengths keep their input order)."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def budget_batches(sorted_lengths: Sequence[int], batch_size: int, token_budget: int) -> Iterator[tuple[int, int]]:
    """(start, stop) slices over lengths sorted longest first, each within both limits (at least one text)."""
    n = len(sorted_lengths)
    start = 0
    while start < n:
        width = max(int(sorted_lengths[start]), 1)
        count = max(1, min(batch_size, token_budget // width, n - start))
        yield start, start + count
        start += count


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) slices of ``range(n)`` of at most ``size`` items."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
