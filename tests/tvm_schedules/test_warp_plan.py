"""tvm_schedules/warp_plan.py: every task planned once with its row's blocks, and no warp longer than needed."""
import numpy as np
import pytest

from tvm_schedules import warp_plan


def unequal_indptr(rng, rows, groups):
    """Rows keeping anywhere from none to all of their column groups (as per-layer sparsity gives)."""
    counts = rng.integers(0, groups + 1, rows)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


@pytest.mark.parametrize("rows,warps,splits", [(12288, 4224, 1), (4096, 8448, 1), (300, 64, 4), (7, 3, 1)])
def test_plan_records_cover_every_task_once_and_balance_the_warps(rows, warps, splits):
    rng = np.random.default_rng(rows)
    indptr = unequal_indptr(rng, rows, 256)
    plan = warp_plan.lpt(indptr, warps, splits, 64)
    assert np.array_equal(plan[:rows + 1], indptr)  # the kernel's indptr, unchanged
    first = plan[rows + 1:rows + 1 + warps + 1]
    base = warp_plan.records_at(rows, warps)  # where the kernel reads them, 16-byte aligned after the offsets
    assert base % 4 == 0 and rows + 1 + warps + 1 <= base < rows + 1 + warps + 1 + 4
    records = plan[base:].reshape(-1, 4)
    assert first[0] == 0 and first[-1] == len(records) == rows * splits and np.all(np.diff(first) >= 0)
    assert sorted(records[:, 0]) == list(range(rows * splits))
    r = records[:, 0] // splits
    assert np.array_equal(records[:, 1], indptr[r]) and np.array_equal(records[:, 2], indptr[r + 1] - indptr[r])
    cost = np.repeat(warp_plan.trips(indptr, 64), splits)
    longest = max(cost[records[first[g]:first[g + 1], 0]].sum() for g in range(warps))
    stride = max(cost[g::warps].sum() for g in range(warps))  # the kernel's order without a plan
    assert longest <= stride and longest <= cost.sum() / warps + cost.max()  # greedy's guarantee (Graham)
