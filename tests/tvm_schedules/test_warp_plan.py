"""tvm_schedules/warp_plan.py: every task's blocks planned exactly once, pieces of a row in one thread block
with their own slots, and no warp longer than needed."""
import numpy as np
import pytest

from tvm_schedules import warp_plan


def unequal_indptr(rng, rows, groups):
    """Rows keeping anywhere from none to all of their column groups (as per-layer sparsity gives)."""
    counts = rng.integers(0, groups + 1, rows)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def parse(plan, rows, warps, ctas):
    """(records by plan warp, entries by thread block) as the kernel reads them."""
    first = plan[rows + 1:rows + 1 + warps + 1]
    cfirst = plan[rows + 1 + warps + 1:rows + 1 + warps + 1 + ctas + 1]
    base = warp_plan.records_at(rows, warps, ctas)  # where the kernel reads them, 16-byte aligned
    assert base % 4 == 0 and rows + warps + ctas + 4 <= base < rows + warps + ctas + 8
    entries_at = plan[rows + 1 + warps + 1 + ctas + 1]
    assert entries_at % 4 == 0 and entries_at == base + 4 * first[-1] and len(plan) == entries_at + 4 * cfirst[-1]
    assert first[0] == 0 and np.all(np.diff(first) >= 0) and cfirst[0] == 0 and np.all(np.diff(cfirst) >= 0)
    records = [plan[base + 4 * first[g]:base + 4 * first[g + 1]].reshape(-1, 4) for g in range(warps)]
    entries = [plan[entries_at + 4 * cfirst[c]:entries_at + 4 * cfirst[c + 1]].reshape(-1, 4) for c in range(ctas)]
    return records, entries


@pytest.mark.parametrize("rows,warps,ctas,splits,slots", [
    (12288, 4224, 132, 1, 0), (4096, 8448, 1056, 1, 0), (300, 64, 8, 4, 0), (7, 3, 1, 1, 0),
    (4096, 8448, 1056, 1, 32), (1024, 4224, 132, 1, 128), (300, 64, 8, 4, 32), (7, 4, 1, 1, 4)])
def test_plan_covers_every_block_once_and_balances_the_warps(rows, warps, ctas, splits, slots):
    rng = np.random.default_rng(rows + slots)
    indptr = unequal_indptr(rng, rows, 256)
    plan = warp_plan.lpt(indptr, warps, splits, 64, ctas=ctas, slots=slots)
    assert np.array_equal(plan[:rows + 1], indptr)  # the kernel's indptr, unchanged
    records, entries = parse(plan, rows, warps, ctas)
    per_cta = warps // ctas
    blocks = {}  # task -> [(first, count, slot, thread block)]
    for g, rec in enumerate(records):
        for t, first, count, slot in rec:
            blocks.setdefault(t, []).append((first, count, slot, g % ctas))
    assert sorted(blocks) == list(range(rows * splits))
    for t, parts in blocks.items():  # the pieces tile the task's row, in order
        r = t // splits
        parts.sort()
        assert parts[0][0] == indptr[r] and sum(p[1] for p in parts) == indptr[r + 1] - indptr[r]
        assert all(a[0] + a[1] == b[0] for a, b in zip(parts, parts[1:]))
        if len(parts) == 1:
            assert parts[0][2] == 0
    split = {t for t, parts in blocks.items() if len(parts) > 1}
    if not slots:
        assert not split
    elif rows * splits < warps:  # fewer tasks than warps: long rows get cut
        assert split
    seen = set()
    for c, ent in enumerate(entries):  # each split row once, in the thread block holding all its pieces
        assert ent[:, 1:].sum() == 0 or (ent[:, 1] + ent[:, 2]).max() <= slots
        for t, slot0, npieces, _ in ent:
            parts = blocks[t]
            assert len(parts) == npieces <= per_cta and {p[3] for p in parts} == {c}
            assert sorted(p[2] for p in parts) == list(range(slot0 + 1, slot0 + npieces + 1))
            seen.add(t)
    assert seen == split
    cost = np.repeat(warp_plan.trips(indptr, 64), splits)
    longest = max(sum(-(-count // 64) + 1 for _, _, count, _ in rec) for rec in records)
    stride = max(cost[g::warps].sum() for g in range(warps))  # the kernel's order without a plan
    assert longest <= stride and longest <= cost.sum() / warps + cost.max()  # greedy's guarantee (Graham)


def test_cutting_rows_halves_the_longest_warp_where_rows_are_fewer_than_warps():
    """4096 rows of 448 blocks against 8448 warps: whole rows leave half the warps idle."""
    indptr = np.arange(0, 4097 * 448, 448, dtype=np.int32)
    whole = warp_plan.lpt(indptr, 8448, 1, 64, ctas=1056)
    cut = warp_plan.lpt(indptr, 8448, 1, 64, ctas=1056, slots=32)

    def longest(plan):
        return max(sum(-(-c // 64) + 1 for _, _, c, _ in rec) for rec in parse(plan, 4096, 8448, 1056)[0])

    assert longest(whole) == 8 and longest(cut) == 5
