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


@pytest.mark.parametrize("rows,ctas", [(4096, 132), (6144, 396), (300, 7), (5, 8)])
def test_stream_plan_deals_every_row_once_in_nearly_equal_shares(rows, ctas):
    """warp_plan.stream: each thread block's records concatenate its rows' kept blocks into one stream, whose
    positions map (first record ending past them, plus its offset) to every kept block of the matrix exactly once,
    each under its own row; the shares differ by at most one row."""
    rng = np.random.default_rng(rows + ctas)
    counts = rng.integers(0, 257, rows) * (rng.random(rows) > 0.2)  # a fifth of the rows keep no block
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    plan = warp_plan.stream(indptr, ctas)
    base, slots = warp_plan.stream_records_at(rows), warp_plan.stream_slots(rows, ctas)
    assert np.array_equal(plan[:rows + 1], indptr) and base % 4 == 0 and len(plan) == base + ctas * slots * 4
    records = plan[base:].reshape(ctas, slots, 4)
    row, delta, end = records[..., 0], records[..., 1], records[..., 2]
    owner = np.full(rows, -1)
    seen = np.zeros(indptr[-1], bool)
    for c in range(ctas):
        mine = row[c][row[c] >= 0]
        assert np.all(owner[mine] == -1)
        owner[mine] = c
        counts = np.diff(indptr)[mine]
        assert np.all(np.diff(counts == 0) >= 0)  # rows without blocks after the others
        assert np.array_equal(end[c][:len(mine)], np.cumsum(counts)) and np.all(end[c][len(mine):] == end[c][-1])
        q = np.arange(end[c][-1])
        j = np.searchsorted(end[c], q, side="right")  # the first record whose end exceeds q
        g = q + delta[c][j]
        assert np.all((indptr[row[c][j]] <= g) & (g < indptr[row[c][j] + 1]))
        assert not seen[g].any()
        seen[g] = True
    assert seen.all() and np.all(owner >= 0)
    totals = end[:, -1]
    assert totals.max() - totals.min() <= np.diff(indptr).max()


def test_stream_kernel_is_chosen_for_large_matrices_with_unequal_rows():
    """bsr_decode_stream.pays: unequal rows (kept-block counts' standard deviation >= 0.2 of their mean) on the
    shapes where the stream kernel measured faster; balanced rows never."""
    from tvm_schedules import bsr_decode_stream as st
    from tvm_schedules.common import BSRShape

    rng = np.random.default_rng(0)
    for n, k, pdl, unequal, balanced in ((12288, 4096, False, True, False), (28672, 4096, True, True, False),
                                         (4096, 14336, True, True, False), (4096, 14336, False, True, False),
                                         (4096, 11008, True, True, False), (4096, 11008, False, False, False),
                                         (4096, 4096, True, False, False), (6144, 4096, True, False, False)):
        s = BSRShape(n, k, 4, 16, 1, interleaved=True, packed=True)
        groups = k // 16
        assert st.pays(s, unequal_indptr(rng, n, groups), pdl) == unequal, (n, k, pdl)
        assert st.pays(s, np.arange(n + 1, dtype=np.int32) * (groups // 2), pdl) == balanced, (n, k, pdl)
    assert st.row_spread(np.arange(5) * 128) == 0.0 and st.row_spread(np.array([0, 0, 2])) == 1.0
