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


def stream_records_at(block_rows: int) -> int:
    """Index of the stream plan's first record: after indptr, rounded up to 16 bytes."""
    return -(-(block_rows + 1) // 4) * 4


def stream_slots(block_rows: int, ctas: int) -> int:
    """Rows a thread block of the stream kernel owns at most (its record slots): the rows dealt out evenly."""
    return -(-block_rows // ctas)


def stream_len(block_rows: int, ctas: int) -> int:
    """Length of indptr with the stream plan of ``ctas`` thread blocks appended."""
    return stream_records_at(block_rows) + 4 * ctas * stream_slots(block_rows, ctas)


def stream(indptr: np.ndarray, ctas: int) -> np.ndarray:
    """``indptr`` with the stream kernel's plan appended (tvm_schedules.bsr_decode_stream): block rows dealt to
    ``ctas`` thread blocks, longest first, each to the thread block with the fewest kept blocks so far among
    those with a free slot, so that every thread block gets nearly the same number of kept blocks however
    unequal the rows. A thread block's rows, concatenated, are one stream of kept blocks that its warps split
    evenly, across row boundaries. Layout: ``[indptr | zeros to a multiple of 4 | ctas x slots records]``, a
    record being (row, first block - stream start, stream end, 0): a position q of the thread block's stream
    lies in the first record whose end exceeds q, at global block q + delta. Rows with no kept block come after
    the others (they only get a zero written); unused slots have row -1 and the stream's end."""
    indptr = indptr.astype(np.int64)
    rows = len(indptr) - 1
    slots = stream_slots(rows, ctas)
    counts = np.diff(indptr)
    load = [(0, c) for c in range(ctas)]
    owned = [[] for _ in range(ctas)]
    for r in np.argsort(-counts, kind="stable"):
        work, c = heapq.heappop(load)
        owned[c].append(int(r))
        if len(owned[c]) < slots:
            heapq.heappush(load, (work + int(counts[r]), c))
    records = np.zeros((ctas, slots, 4), np.int64)
    for c, rs in enumerate(owned):
        rs = sorted(rs, key=lambda r: (counts[r] == 0, r))
        ends = np.cumsum(counts[rs]) if rs else np.zeros(0, np.int64)
        total = int(ends[-1]) if rs else 0
        records[c, :, 0] = -1
        records[c, :, 2] = total
        records[c, :len(rs), 0] = rs
        records[c, :len(rs), 1] = indptr[rs] - (ends - counts[rs])
        records[c, :len(rs), 2] = ends
    pad = np.zeros(stream_records_at(rows) - len(indptr), np.int64)
    return np.concatenate([indptr, pad, records.ravel()]).astype(np.int32)
