"""Row partition for the balanced decode walk (pure numpy: the benchmark's GPU side imports it too).

The balanced decode kernel (tvm_schedules.bsr_decode with ``DecodeConfig.parts``) gives thread block p the
block rows ``work[p] .. work[p + 1] - 1``, and its warps split those rows' kept blocks evenly. A warp per
row would make the longest row the kernel's critical path wherever there are about as many rows as warps
(4096-row matrices on an H100), so per-layer sparsity, which leaves rows with very unequal block counts,
would cost time. The boundaries depend on the weights, not just their shape: they are computed once per
matrix when it is compiled and travel with its weights (docs/format.md).
"""
from __future__ import annotations

import numpy as np

ROW_COST = 2  # what a row costs beyond its blocks, in blocks (its partial sums and output), for balancing


def balanced_parts(indptr: np.ndarray, parts: int) -> np.ndarray:
    """int32 [parts + 1]: row boundaries that give each part about the same kept blocks + ROW_COST x rows.

    Each boundary is the row boundary nearest its share of the total, so a part is off by at most half a
    row; parts may be empty when there are fewer rows than parts."""
    indptr = np.asarray(indptr, dtype=np.int64)
    nbr = len(indptr) - 1
    cost = indptr - indptr[0] + ROW_COST * np.arange(nbr + 1)  # cumulative cost at each row boundary
    target = cost[-1] * np.arange(parts + 1) / parts
    hi = np.clip(np.searchsorted(cost, target), 1, max(nbr, 1))
    lo = hi - 1
    j = np.where(target - cost[lo] <= cost[np.minimum(hi, nbr)] - target, lo, hi)
    j[0], j[-1] = 0, nbr
    return np.minimum(np.maximum.accumulate(j), nbr).astype(np.int32)
