"""The balanced decode walk's row partition: every row in exactly one part, parts of about equal cost."""
import numpy as np
import pytest

from tvm_schedules.bsr_decode import window_rows
from tvm_schedules.partition import ROW_COST, balanced_parts


def _indptr(counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


@pytest.mark.parametrize("rows,parts", [(4096, 264), (28672, 264), (576, 264), (100, 264), (1, 4)])
def test_parts_cover_every_row_once_with_nearly_equal_cost(rows, parts):
    rng = np.random.default_rng(rows)
    counts = (rng.uniform(0, 1, rows) * 256).astype(int)  # rows keep 0-100% of 256 groups, as per-layer sparsity
    counts[: rows // 10] = 0  # some rows keep nothing
    indptr = _indptr(counts)
    work = balanced_parts(indptr, parts)
    assert work.dtype == np.int32 and work.shape == (parts + 1,)
    assert work[0] == 0 and work[-1] == rows and np.all(np.diff(work) >= 0)
    cost = indptr.astype(np.int64) + ROW_COST * np.arange(rows + 1)
    target = cost[-1] * np.arange(parts + 1) / parts
    # each boundary is the row boundary nearest its share: off by at most half the costliest row
    assert np.all(np.abs(cost[work] - target) <= (counts.max() + ROW_COST) / 2 + 1e-9)


def test_row_balanced_weights_fit_one_window_per_part():
    """With equal rows a part holds about rows / parts of them, within the kernel's window (no second pass)."""
    for rows, parts in ((4096, 264), (12288, 264), (28672, 132), (576, 264)):
        work = balanced_parts(_indptr(np.full(rows, 128)), parts)
        cap = window_rows(rows, parts)
        assert cap & (cap - 1) == 0 and np.diff(work).max() <= cap
