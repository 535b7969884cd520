"""BSR int4 GEMV for decode on CUDA whose warps split kept blocks, not rows: unequal rows cost what equal ones do.

The row kernel (bsr_decode) gives each warp whole rows, and a warp walks a row in loop trips of 64 kept blocks,
each trip a DRAM round trip. Rows of 128 blocks take 2 trips; rows that keep 0-100% of their blocks take 2.5 on
average (a row of 65 blocks pays 2), and where the grid holds every row at once the longest row is the time: the
+20-26% that no assignment of whole rows to warps removed (docs/perf.md, seven tries). Here a per-matrix plan
made at compile time (tvm_schedules.warp_plan.stream) deals the rows to thread blocks so that each gets nearly
the same number of kept blocks; a thread block's rows, concatenated, form one stream that its warps cut into
pieces of whole trips, across row boundaries, so every warp walks ceil(blocks / 64 / warps) trips or one fewer,
whatever the rows. (Equal pieces instead: a piece of 1.3 trips walks 2, and the grid issues up to twice the trips
its blocks need.)

The thread block's records sit in shared memory. Where a trip lies in one record (most trips), every lane's block
is at the same offset from its global block; where one row ends in it, a lane's record is the one before or after
that end; else each lane walks its own cursor forward over the records. The
warp keeps one open row: each lane adds its products for that row into its partial sums, and where a row ends
inside a trip the warp reduces the partials (warp shuffles) and lane 0 adds them into the row's slot in shared
memory (a row cut between warps gets one addition from each). After a barrier the thread block writes its rows.

Measured on an H100 (docs/perf.md, tag "stream", kernels_stream6_h100.json): unequal rows cost it -1% to +13%
over balanced ones (the row kernel: +8% to +22%); on balanced rows it is slower than the row kernel but for 12288,
22016 and 28672 rows with PDL (the records, the trips that cross rows, the shared-memory sums). So gqsa-compile
chooses it per matrix (``pays``), from the matrix's indptr.

R = 1, 4-bit interleaved codes, packed metadata (BSRShape.packed), fp16 activations staged in shared memory:
the layout gqsa-compile stores for CUDA, and the arithmetic of bsr_decode's half2 path. M = 2-8 (benchmark only,
tag "stream batch") take two lanes a block (``lanes = 2``): 1.16-1.39x faster than one there, faster than the row
kernel on unequal rows at M = 2 and 4 with PDL on most shapes, still slower on balanced ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

from .bsr_decode import SMEM_BYTES
from .common import FULL, BSRShape, bsr_func, weight_load, word_column, word_scale_bits, word_zero
from .launch import SMALL_GRID
from .warp_plan import stream_len, stream_records_at, stream_slots


@dataclass(frozen=True)
class StreamConfig:
    warps: int = 16  # warps per thread block
    ctas: int = 396  # thread blocks (the plan deals the rows to exactly these): 3 per SM on an H100, 48 warps
    unroll: int = 2  # kept blocks a lane loads per loop trip
    ahead: bool = True  # the first trip's loads go out before the staging (and the PDL wait), each next trip's
    # before this trip's arithmetic (a second register set)
    pdl: bool = False  # programmatic dependent launch: wait before staging, trigger the next launch right after
    trip_cut: bool = True  # warps' pieces in whole loop trips (the thread block's last ends at its stream's end);
    # False: equal pieces, where a piece of 1.3 trips walks 2 (1.03-1.06x slower, docs/perf.md)
    lanes: int = 1  # lanes a block: 2 split its two code words (and the M dot products) between them (M >= 2)
    one_boundary: bool = True  # a trip in which one row ends: each lane's record from that row's end (no walk),
    # and the two rows' sums without the loop over the trip's rows (unequal rows 1.02x at M = 1, 1.04x at M = 2)
    hint: str = ""  # cache hints on the weight loads (common.weight_load): "n", "f", "p" or several

    @property
    def key(self) -> str:
        return f"st_w{self.warps}c{self.ctas}u{self.unroll}" + ("a" if self.ahead else "") + (
            "t" if self.trip_cut else "") + (f"l{self.lanes}" if self.lanes > 1 else "") + (
            "b" if self.one_boundary else "") + ("g" if self.pdl else "") + (f"c{self.hint}" if self.hint else "")


def supports(s: BSRShape, m: int) -> bool:
    return (s.rows == 1 and s.bits == 4 and s.group == 16 and s.packed and s.interleaved
            and s.dtype == "float16" and m * s.k * 2 <= 2 * SMEM_BYTES - 4096)


CTAS = StreamConfig.ctas  # the plan gqsa-compile appends: 396 thread blocks (of 16 warps)
UNEQUAL = 0.2  # rows' kept-block counts: standard deviation over mean past which they count as unequal
BIG_ROWS = 8448  # block rows past which the stream kernel measured faster on unequal rows, plain and PDL
WIDE = {True: 8192, False: 12288}  # columns from which it did on 4096-row matrices, with PDL and plain


def row_spread(indptr) -> float:
    """How unequal the rows are: the standard deviation of their kept-block counts over the mean (0 for the
    row-balanced pruning; 0.58 for the benchmark's unequal rows, about 0.46 for SmolLM2-135M magnitude-pruned
    with layer allocation: a kept fraction of standard deviation 0.23 around 0.5, docs/perf.md)."""
    counts = np.diff(np.asarray(indptr, np.int64))
    return float(counts.std() / max(counts.mean(), 1e-9))


def pays(s: BSRShape, indptr, pdl: bool) -> bool:
    """Whether gqsa-compile's decode (M = 1) should run this matrix on the stream kernel: its rows are unequal
    (row_spread >= UNEQUAL, a judgement between balanced rows, where it lost, and the benchmark's 0.58, where it
    won), on the shapes where the stream kernel then measured faster than the row kernel (H100, tags "stream",
    "stream u4" and "stream one end", six runs, kernels_stream{6,7,8}_h100.json and others; unequal rows): past
    8448 rows with PDL 1.10-1.15x, plain 0.97-1.07x (12288 x 4096 0.97-1.01x); on 4096-row matrices of 11008
    columns with PDL 1.09-1.11x, plain 0.99x, of 14336 columns 1.12-1.13x and plain 1.05-1.07x. It lost on 4096 x
    4096 and 6144 x 4096, and on balanced rows but past 8448 rows with PDL. (Measured before ``one_boundary``,
    which then made unequal rows 1.02x faster on these shapes.)"""
    return pays_on_shape(s, pdl) and row_spread(indptr) >= UNEQUAL


def pays_on_shape(s: BSRShape, pdl: bool) -> bool:
    """``pays`` without the rows: the shapes on which the stream kernel measured faster on unequal rows."""
    return supports(s, 1) and (s.block_rows > BIG_ROWS or s.k >= WIDE[pdl])


def bsr_decode_stream(s: BSRShape, m: int, cfg: StreamConfig = StreamConfig()):
    """The PrimFunc ``(x, indptr + plan, indices, qweight, y)``; the plan from warp_plan.stream(indptr, cfg.ctas)."""
    assert supports(s, m), f"the stream GEMV takes 4-bit G16 R1 packed fp16 matrices, not {s} at M = {m}"
    assert s.stream in (0, cfg.ctas), f"the matrix's plan is for {s.stream} thread blocks, not {cfg.ctas}"
    k, n = s.k, s.block_rows
    warps, nctas, unroll, ahead, lanes = cfg.warps, cfg.ctas, cfg.unroll, cfg.ahead, cfg.lanes
    assert lanes in (1, 2), f"a block's two code words go to 1 or 2 lanes, not {lanes}"
    step = 32 // lanes  # blocks a warp takes per unrolled step
    trip = unroll * step  # blocks a warp takes per loop trip
    wpl = 2 // lanes  # code words per lane
    slots = stream_slots(n, nctas)
    base = stream_records_at(n)
    threads = warps * 32
    xwords = m * k // 2  # activation pairs (uint32) staged
    dyn = m * k * 2 + slots * 4 * 4 + slots * m * 4 > SMEM_BYTES
    sets = 2 if ahead else 1
    steps = max(1, (slots - 1).bit_length())  # binary search over the records
    ld = weight_load(cfg.hint)

    def lane_block(ws, we, it, u, tx):
        """The stream position of the lane's block ``u`` of trip ``it``, clamped to the piece's last."""
        return T.min(ws + (it * unroll + u) * step + tx // lanes, we - 1)

    @T.macro
    def load(indices, qw, mw, wq, slot, u, at, delta, tx):
        """Lane block ``at`` of the stream (clamped to the piece's last) at global block ``at + delta``: its word,
        and its code words (with 2 lanes a block, the lane's one)."""
        ld.b32(mw[slot, u], indices.ptr_to([at + delta]))
        if lanes == 1:
            ld.v2.b32(wq[slot, u, 0], wq[slot, u, 1], qw.ptr_to([at + delta, 0, 0]))
        else:
            ld.b32(wq[slot, u, 0], qw.ptr_to([at + delta, 0, tx % lanes]))

    @T.macro
    def walk(indices, qw, rs, mw, wq, jl, cur, lc, probe, slot, it, ws, we, tx):
        """Each lane's record by a cursor of its own, walked forward from the trip's first record."""
        lc[0] = cur[0]
        for u in T.unroll(unroll):
            probe[0] = rs[lc[0] * 4 + 2]
            while probe[0] <= lane_block(ws, we, it, u, tx):
                lc[0] = lc[0] + 1
                probe[0] = rs[lc[0] * 4 + 2]
            jl[slot, u] = lc[0]
            load(indices, qw, mw, wq, slot, u, lane_block(ws, we, it, u, tx), rs[lc[0] * 4 + 1], tx)

    @T.macro
    def issue(indices, qw, rs, mw, wq, jl, cur, lc, probe, slot, it, ws, we, tx):
        """Load the lane's blocks of trip ``it`` into register set ``slot``; past the warp's piece the piece's
        last block is loaded again (its scale is zeroed later). ``cur``, the same in every lane, moves to the
        record of the trip's first block; where the trip ends in that record too (most trips), every block is
        at the same offset from its global block; where it ends in the next one (``one_boundary``), a lane's
        record is the first or the next by its position; else each lane walks its own cursor from there."""
        probe[0] = rs[cur[0] * 4 + 2]  # (a shared-memory read in a condition trips TVM's barrier pass)
        while probe[0] <= ws + it * trip:
            cur[0] = cur[0] + 1
            probe[0] = rs[cur[0] * 4 + 2]
        if probe[0] >= T.min(ws + (it + 1) * trip, we):
            lc[0] = rs[cur[0] * 4 + 1]
            for u in T.unroll(unroll):
                jl[slot, u] = cur[0]
                load(indices, qw, mw, wq, slot, u, lane_block(ws, we, it, u, tx), lc[0], tx)
        elif cfg.one_boundary:
            lc[0] = rs[T.min(cur[0] + 1, slots - 1) * 4 + 2]  # (lc as scratch: the next record's end)
            if lc[0] >= T.min(ws + (it + 1) * trip, we):  # one row ends in the trip, at probe[0]: no walk
                for u in T.unroll(unroll):
                    jl[slot, u] = cur[0] + T.Cast("int32", lane_block(ws, we, it, u, tx) >= probe[0])
                    load(indices, qw, mw, wq, slot, u, lane_block(ws, we, it, u, tx), rs[jl[slot, u] * 4 + 1], tx)
            else:
                walk(indices, qw, rs, mw, wq, jl, cur, lc, probe, slot, it, ws, we, tx)
        else:
            walk(indices, qw, rs, mw, wq, jl, cur, lc, probe, slot, it, ws, we, tx)

    @T.macro
    def flush(acc, red, accs, j, tx):
        """The warp's partial sums for record ``j`` into its shared-memory slot; the partials restart at 0."""
        for i in T.unroll(m):
            red[0] = acc[i]
            for o in T.unroll(5):
                red[0] = red[0] + T.tvm_warp_shuffle_down(FULL, red[0], 16 >> o, 32, 32)
            if tx == 0:
                T.ptx.red.shared.add.f32(accs.ptr_to([j * m + i]), red[0])
            acc[i] = T.float32(0)

    @T.macro
    def ends(acc, red, accs, prod, jl, span, lohi, tx):
        """Rows span[2] .. lohi[1] share the trip: each gets its lanes' products; all but the last end here."""
        for jr in range(lohi[1] - span[2] + 1):
            for u in T.unroll(unroll):
                for i in T.unroll(m):
                    acc[i] = acc[i] + T.if_then_else(jl[sets - 1, u] == span[2] + jr, prod[u, i], T.float32(0))
            if span[2] + jr < lohi[1]:
                flush(acc, red, accs, span[2] + jr, tx)

    @T.macro
    def locate(rs, span, lohi, probe, cur, acc, ty):
        """The warp's piece of the thread block's stream (span[0:2]), and the record its first block lies in
        (span[2], the open row, and the lane cursors), by binary search over the records' ends."""
        if cfg.trip_cut:  # the stream's trips dealt out: the first (trips % warps) warps get one more
            lohi[0] = (rs[slots * 4 - 2] + trip - 1) // trip  # (lohi as scratch)
            span[0] = T.min((lohi[0] // warps * ty + T.min(ty, lohi[0] % warps)) * trip, rs[slots * 4 - 2])
            span[1] = T.min(span[0] + (lohi[0] // warps + T.Cast("int32", ty < lohi[0] % warps)) * trip,
                            rs[slots * 4 - 2])
        else:
            span[0] = (rs[slots * 4 - 2] + warps - 1) // warps * ty
            span[1] = T.min(span[0] + (rs[slots * 4 - 2] + warps - 1) // warps, rs[slots * 4 - 2])
        lohi[0] = 0
        lohi[1] = slots - 1
        for _ in range(steps):
            probe[0] = rs[(lohi[0] + lohi[1]) // 2 * 4 + 2]
            if lohi[0] < lohi[1]:
                if probe[0] <= span[0]:
                    lohi[0] = (lohi[0] + lohi[1]) // 2 + 1
                else:
                    lohi[1] = (lohi[0] + lohi[1]) // 2
        span[2] = lohi[0]
        cur[0] = lohi[0]
        for i in T.unroll(m):
            acc[i] = T.float32(0)

    @T.macro
    def body(x, indptr, indices, qw, sc, zr, y, mm, nnz):
        x32 = T.decl_buffer((xwords,), "uint32", data=x.data)
        for bx in T.thread_binding(nctas, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    # every thread block resident at once on an H100: what the plan's equal shares assume
                    with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", -(-nctas // SMALL_GRID)):
                        xs = T.alloc_buffer((xwords,), "uint32", scope="shared.dyn" if dyn else "shared")
                        rs = T.alloc_buffer((slots * 4,), "int32", scope="shared.dyn" if dyn else "shared")
                        accs = T.alloc_buffer((slots * m,), "float32", scope="shared.dyn" if dyn else "shared")
                        mw = T.alloc_buffer((2, unroll), "uint32", scope="local")
                        wq = T.alloc_buffer((2, unroll, wpl), "uint32", scope="local")
                        jl = T.alloc_buffer((2, unroll), "int32", scope="local")
                        cur = T.alloc_buffer((1,), "int32", scope="local")  # the warp's record cursor
                        lc = T.alloc_buffer((1,), "int32", scope="local")  # the lane's, or the record's offset
                        probe = T.alloc_buffer((1,), "int32", scope="local")
                        span = T.alloc_buffer((3,), "int32", scope="local")  # the warp's piece: start, end; open row
                        lohi = T.alloc_buffer((2,), "int32", scope="local")
                        acc = T.alloc_buffer((m,), "float32", scope="local")
                        prod = T.alloc_buffer((unroll, m), "float32", scope="local")
                        red = T.alloc_buffer((1,), "float32", scope="local")
                        h = T.alloc_buffer((1,), "uint32", scope="local")
                        x2 = T.alloc_buffer((8,), "uint32", scope="local")
                        dq = T.alloc_buffer((8,), "uint32", scope="local")
                        xr = T.alloc_buffer((4,), "uint32", scope="local")
                        sv = T.alloc_buffer((1,), "float32", scope="local")
                        for c in range(-(-slots * 4 // threads)):
                            if c * threads + ty * 32 + tx < slots * 4:
                                rs[c * threads + ty * 32 + tx] = indptr[
                                    base + bx * slots * 4 + c * threads + ty * 32 + tx]
                        for c in range(-(-slots * m // threads)):
                            if c * threads + ty * 32 + tx < slots * m:
                                accs[c * threads + ty * 32 + tx] = T.float32(0)
                        if ahead:  # the first trip's loads go out before the activations are staged (and the PDL wait)
                            T.tvm_storage_sync("shared")
                            locate(rs, span, lohi, probe, cur, acc, ty)
                            mw[0, 0] = T.uint32(0)
                            wq[0, 0, 0] = T.uint32(0)
                            if span[1] > span[0]:
                                issue(indices, qw, rs, mw, wq, jl, cur, lc, probe, 0, 0, span[0], span[1], tx)
                        if cfg.pdl:
                            if ahead:  # a branch on the loaded words keeps ptxas from hoisting the wait above the loads
                                if mw[0, 0] ^ wq[0, 0, 0] != T.uint32(0x9E3779B9):
                                    T.ptx.griddepcontrol.wait()
                                else:
                                    T.ptx.griddepcontrol.wait()
                            else:
                                T.ptx.griddepcontrol.wait()
                            T.ptx.griddepcontrol.launch_dependents()
                        for c in range(-(-xwords // 4 // threads)):
                            if (c * threads + ty * 32 + tx) * 4 < xwords:
                                T.ptx.ld.global_.v4.b32(xr[0], xr[1], xr[2], xr[3],
                                                        x32.ptr_to([(c * threads + ty * 32 + tx) * 4]))
                                for v in T.vectorized(4):
                                    xs[(c * threads + ty * 32 + tx) * 4 + v] = xr[v]
                        T.tvm_storage_sync("shared")
                        if not ahead:
                            locate(rs, span, lohi, probe, cur, acc, ty)
                        trips = (span[1] - span[0] + trip - 1) // trip
                        for it in range(trips):
                            if not ahead:
                                issue(indices, qw, rs, mw, wq, jl, cur, lc, probe, 0, it, span[0], span[1], tx)
                            else:
                                for u in T.unroll(unroll):
                                    mw[1, u] = mw[0, u]
                                    jl[1, u] = jl[0, u]
                                    for w in T.unroll(wpl):
                                        wq[1, u, w] = wq[0, u, w]
                                if it + 1 < trips:
                                    issue(indices, qw, rs, mw, wq, jl, cur, lc, probe, 0, it + 1, span[0], span[1], tx)
                            for u in T.unroll(unroll):
                                for j in T.unroll(4 * wpl):
                                    dq[j] = ((wq[sets - 1, u, j // 4] >> T.uint32(j % 4 * 4)) & T.uint32(0x000F000F)
                                             ) | T.uint32(0x64006400)
                                    T.ptx.sub.f16x2(dq[j], dq[j], (T.uint32(0x6400) + word_zero(mw[sets - 1, u]))
                                                    * T.uint32(0x10001))
                                sv[0] = T.Cast("float32", T.reinterpret("float16", T.Cast(
                                    "uint16", word_scale_bits(mw[sets - 1, u])))) * T.Cast(
                                        "float32", span[0] + (it * unroll + u) * step + tx // lanes < span[1])
                                for i in T.unroll(m):
                                    for c in T.unroll(wpl):  # the lane's code words' activations
                                        for v in T.vectorized(4):
                                            x2[c * 4 + v] = xs[(i * (k // 8) + T.Cast(
                                                "int32", word_column(mw[sets - 1, u])) * 2 + tx % lanes * wpl + c
                                                                ) * 4 + v]
                                    h[0] = T.uint32(0)
                                    for j in T.unroll(4 * wpl):
                                        T.ptx.fma.rn.f16x2(h[0], dq[j], x2[j], h[0])
                                    prod[u, i] = (T.Cast("float32", T.reinterpret("float16", T.Cast(
                                        "uint16", h[0] & T.uint32(0xFFFF)))) + T.Cast("float32", T.reinterpret(
                                            "float16", T.Cast("uint16", h[0] >> T.uint32(16))))) * sv[0]
                            # rows that end in this trip: the last lane's last block lies in the trip's last row
                            lohi[1] = T.tvm_warp_shuffle(FULL, jl[sets - 1, unroll - 1], 31, 32, 32)
                            if lohi[1] == span[2]:  # the trip lies in the open row
                                for u in T.unroll(unroll):
                                    for i in T.unroll(m):
                                        acc[i] = acc[i] + prod[u, i]
                            elif cfg.one_boundary:
                                if lohi[1] == span[2] + 1:  # one row ends in the trip: no loop over its rows
                                    for u in T.unroll(unroll):
                                        for i in T.unroll(m):
                                            acc[i] = acc[i] + T.if_then_else(jl[sets - 1, u] == span[2], prod[u, i],
                                                                             T.float32(0))
                                    flush(acc, red, accs, span[2], tx)
                                    for u in T.unroll(unroll):
                                        for i in T.unroll(m):
                                            acc[i] = acc[i] + T.if_then_else(jl[sets - 1, u] == span[2], T.float32(0),
                                                                             prod[u, i])
                                else:
                                    ends(acc, red, accs, prod, jl, span, lohi, tx)
                            else:
                                ends(acc, red, accs, prod, jl, span, lohi, tx)
                            span[2] = lohi[1]
                        if trips > 0:
                            flush(acc, red, accs, span[2], tx)
                        T.tvm_storage_sync("shared")
                        for c in range(-(-slots * m // threads)):
                            if c * threads + ty * 32 + tx < slots * m:
                                probe[0] = rs[(c * threads + ty * 32 + tx) // m * 4]
                                if probe[0] >= 0:
                                    y[(c * threads + ty * 32 + tx) % m, probe[0]] = T.Cast(
                                        "float16", accs[c * threads + ty * 32 + tx])

    return bsr_func(s, body, tokens=m, indptr_len=stream_len(n, nctas))
