"""Which block rows each warp of the decode GEMV walks (pure numpy: the benchmark's GPU side imports it too).

The decode kernel gives a warp whole block rows, and a warp's time is the sum of its rows' loop trips. By
default warp g takes tasks g, g + W, g + 2W, ... (W warps in the grid), which is fine when rows keep equal
block counts. With per-layer sparsity they do not (a row may keep 0 to 100% of its blocks), and a warp that
draws several long rows sets the kernel's time. A plan fixed per matrix at compile time fixes that: the
longest-processing-time-first rule (rows by trip count, longest first, each to the warp with the least work
so far), whose longest warp is within 4/3 of the best possible. It cannot help where there are fewer rows
than warps: then the longest row is the time.

The plan travels appended to ``indptr``, so the kernel's signature does not change:
``[indptr (block rows + 1) | first record of warp g, g = 0..W (W + 1) | zeros to a multiple of 4 |
records]``, a record being (task, first block, block count, 0): one 16-byte load gives a warp its next row,
no more dependent loads than indptr's pair. The kernel runs plan warp g as warp g // blocks of thread block
g % blocks, so the longest rows, which go to the first warps, land on different SMs.
"""
from __future__ import annotations

import heapq

import numpy as np


def records_at(block_rows: int, warps: int) -> int:
    """Index of the first record: after indptr and the W + 1 warp offsets, rounded up to 16 bytes."""
    return -(-(block_rows + 1 + warps + 1) // 4) * 4


def trips(indptr: np.ndarray, trip_blocks: int) -> np.ndarray:
    """Loop trips of each block row (kept blocks / blocks per warp-trip, rounded up), plus one for the row's
    fixed cost (its indptr load, the warp's reduction and store)."""
    counts = np.diff(indptr.astype(np.int64))
    return -(-counts // trip_blocks) + 1


def lpt(indptr: np.ndarray, warps: int, splits: int, trip_blocks: int) -> np.ndarray:
    """``indptr`` with the plan appended: ``splits`` tasks per block row (a tall block's rows over several
    warps), longest first, each to the least-loaded of ``warps`` warps."""
    cost = np.repeat(trips(indptr, trip_blocks), splits)
    order = np.argsort(-cost, kind="stable")
    load = [(0, g) for g in range(warps)]
    owner = np.empty(len(cost), np.int64)
    for t in order:
        work, g = heapq.heappop(load)
        owner[t] = g
        heapq.heappush(load, (work + int(cost[t]), g))
    tasks = np.argsort(owner, kind="stable")  # grouped by warp
    first = np.searchsorted(owner[tasks], np.arange(warps + 1))
    rows = tasks // splits
    records = np.stack([tasks, indptr[rows], indptr[rows + 1] - indptr[rows], np.zeros_like(tasks)], 1)
    head = np.concatenate([indptr, first])
    pad = np.zeros(records_at(len(indptr) - 1, warps) - len(head), np.int64)
    return np.concatenate([head, pad, records.ravel()]).astype(np.int32)
