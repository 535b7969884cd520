"""Which kept blocks each warp of the decode GEMV walks (pure numpy: the benchmark's GPU side imports it too).

The decode kernel gives a warp whole block rows, and a warp's time is the sum of its rows' loop trips. By
default warp g takes tasks g, g + W, g + 2W, ... (W warps in the grid), which is fine when rows keep equal
block counts. With per-layer sparsity they do not (a row may keep 0 to 100% of its blocks), and a warp that
draws several long rows sets the kernel's time. A plan fixed per matrix at compile time fixes that: the
longest-processing-time-first rule (tasks by trip count, longest first, each to the least-loaded thread
block, and there to its least-loaded warp), whose longest warp is within 4/3 of the best possible.

Where there are fewer rows than warps (4096 rows at M = 1 against 8448 warps) no order helps: half the warps
idle and the longest row is the time. So rows longer than a warp's fair share (kept blocks / warps, rounded
up to whole trips) are cut into pieces of whole trips, the pieces of a row go to different warps of one
thread block, and each piece's sum goes to a shared-memory slot; after a barrier the thread block adds each
split row's slots and stores it. A thread block has ``slots`` of them; the plan never needs more.

The plan travels appended to ``indptr``, so the kernel's signature does not change::

    [indptr (block rows + 1) | first record of plan warp g, g = 0..W (W + 1)
     | first entry of thread block c, c = 0..C (C + 1) | entries_at (1) | zeros to a multiple of 4
     | records | entries]

a record being (task, first block, block count, slot + 1 or 0 for a whole row), an entry (task, first slot,
pieces, 0): one 16-byte load gives a warp its next piece. The kernel runs plan warp g as warp g // C of thread
block g % C, so the longest tasks, which go to the first warps, land on different SMs.
"""
from __future__ import annotations

import heapq

import numpy as np


def records_at(block_rows: int, warps: int, ctas: int = 0) -> int:
    """Index of the first record: after indptr, the W + 1 warp and C + 1 thread-block offsets and entries_at,
    rounded up to 16 bytes."""
    return -(-(block_rows + 1 + warps + 1 + ctas + 2) // 4) * 4


def trips(indptr: np.ndarray, trip_blocks: int) -> np.ndarray:
    """Loop trips of each block row (kept blocks / blocks per warp-trip, rounded up), plus one for the row's
    fixed cost (its record load, the warp's reduction and store)."""
    counts = np.diff(indptr.astype(np.int64))
    return -(-counts // trip_blocks) + 1


def pieces(count: int, share: int, most: int, trip_blocks: int) -> list[int]:
    """Block counts of the pieces a task of ``count`` blocks is cut into: whole trips of at most ``share``
    blocks, at most ``most`` pieces, as equal as whole trips allow."""
    p = min(most, max(1, -(-count // share)))
    per = -(-(-(-count // p)) // trip_blocks) * trip_blocks
    p = -(-count // per) if count else 1
    return [per] * (p - 1) + [count - per * (p - 1)]


def lpt(indptr: np.ndarray, warps: int, splits: int, trip_blocks: int, ctas: int = 1, slots: int = 0) -> np.ndarray:
    """``indptr`` with the plan appended: ``splits`` tasks per block row (a tall block's rows over several
    warps), longest first, each to the least-loaded of ``ctas`` thread blocks of ``warps / ctas`` warps and
    there to its least-loaded warp. With ``slots`` > 0, tasks may also be cut into pieces (at most ``slots``
    shared-memory slots per thread block): of the piece sizes that cut the longest task into 1, 2, ...
    pieces, the plan keeps the one whose longest warp is shortest (ties: fewer pieces), trying more pieces until
    the longest warp grows."""
    assert warps % ctas == 0, (warps, ctas)
    per_cta = warps // ctas
    starts = np.repeat(indptr[:-1].astype(np.int64), splits)
    counts = np.repeat(np.diff(indptr.astype(np.int64)), splits)
    most = min(per_cta, slots) if slots > 1 else 1
    longest = max(int(counts.max(initial=0)), 1)
    best = None
    for p in range(1, most + 1):
        share = -(-(-(-longest // p)) // trip_blocks) * trip_blocks
        if best is not None and share == best[1]:
            continue
        cuts = [pieces(int(c), share, most, trip_blocks) for c in counts]
        plan = _assign(cuts, starts, warps, ctas, trip_blocks, slots)
        if best is not None and plan[0] > best[0]:
            break  # more pieces only add fixed costs from here
        if best is None or plan[0] < best[0]:
            best = (plan[0], share, plan)
    _, _, (_, records, entries) = best
    nbr = len(indptr) - 1
    first_rec = np.cumsum([0] + [len(r) for r in records])
    first_ent = np.cumsum([0] + [len(e) for e in entries])
    base = records_at(nbr, warps, ctas)
    entries_at = base + 4 * int(first_rec[-1])
    head = np.concatenate([indptr, first_rec, first_ent, [entries_at]])
    body = [np.asarray(r, np.int64).reshape(-1, 4) for r in records] + [np.asarray(e, np.int64).reshape(-1, 4)
                                                                        for e in entries]
    out = np.concatenate([head, np.zeros(base - len(head), np.int64)] + [b.ravel() for b in body])
    assert len(out) == entries_at + 4 * int(first_ent[-1]) and out.max() < 2**31
    return out.astype(np.int32)


def _assign(cuts: list, starts: np.ndarray, warps: int, ctas: int, trip_blocks: int, slots: int):
    """Longest task first to the least-loaded thread block with slots for its pieces, each piece to that
    block's least-loaded warp: (longest warp, records by plan warp, entries by thread block)."""
    per_cta = warps // ctas

    def cost(cut):
        return sum(-(-b // trip_blocks) + 1 for b in cut)

    load = np.zeros((ctas, per_cta), np.int64)
    used = np.zeros(ctas, np.int64)  # slots taken per thread block
    heap = [(0, c) for c in range(ctas)]
    records = [[] for _ in range(warps)]  # by plan warp (local warp w of thread block c is plan warp w * C + c)
    entries = [[] for _ in range(ctas)]
    for t in sorted(range(len(cuts)), key=lambda t: -cost(cuts[t])):
        cut = cuts[t]
        if len(cut) > 1 and not (used + len(cut) <= slots).any():
            cut = [sum(cut)]  # no thread block has slots left: the task stays whole
        skipped = []
        while heap:  # the least-loaded thread block with slots left for this task's pieces
            work, c = heapq.heappop(heap)
            if len(cut) == 1 or used[c] + len(cut) <= slots:
                break
            skipped.append((work, c))
        for e in skipped:
            heapq.heappush(heap, e)
        first, slot0 = int(starts[t]), int(used[c])
        if len(cut) > 1:
            entries[c].append((int(t), slot0, len(cut), 0))
            used[c] += len(cut)
        for i, b in enumerate(cut):
            w = int(np.argmin(load[c]))
            load[c, w] += -(-b // trip_blocks) + 1
            records[w * ctas + c].append((int(t), first, b, slot0 + i + 1 if len(cut) > 1 else 0))
            first += b
        heapq.heappush(heap, (work + cost(cut), c))
    return int(load.max()), records, entries
