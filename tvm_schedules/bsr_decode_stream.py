"""BSR int4 GEMV for decode on CUDA whose warps split kept blocks, not rows: unequal rows cost what equal ones do.

The row kernel (bsr_decode) gives each warp whole rows, and a warp walks a row in loop trips of 64 kept blocks,
each trip a DRAM round trip. Rows of 128 blocks take 2 trips; rows that keep 0-100% of their blocks take 2.5 on
average (a row of 65 blocks pays 2), and where the grid holds every row at once the longest row is the time: the
+20-26% that no assignment of whole rows to warps removed (docs/perf.md, seven tries). Here a per-matrix plan
made at compile time (tvm_schedules.warp_plan.stream) deals the rows to thread blocks so that each gets nearly
the same number of kept blocks; a thread block's rows, concatenated, form one stream that its warps cut into
equal pieces, across row boundaries, so every warp walks ceil(blocks / warps / 64) trips whatever the rows.

Every warp holds its thread block's records in registers, one per lane (two where a thread block owns 33-64
rows). The positions of 32 consecutive blocks of the stream, one per lane, find their records without a loop or
a memory access: a ballot counts the records that end before the first position, an OR over the warp of one
bit per record ending within the 32 gives the rest, and each lane counts the bits up to its own position
(``popc``); a shuffle then brings it the record's offset to the global block. The warp keeps one open row:
each lane adds its products for that row into its partial sums, and where a row ends inside a trip the warp
reduces the partials (warp shuffles) and lane 0 adds them into the row's slot in shared memory (a row cut
between warps gets one addition from each). After a barrier the thread block writes its rows.

R = 1, 4-bit interleaved codes, packed metadata (BSRShape.packed), fp16 activations staged in shared memory:
the layout gqsa-compile stores for CUDA, and the arithmetic of bsr_decode's half2 path.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .bsr_decode import SMEM_BYTES
from .common import BSRShape, bsr_func, word_column, word_scale_bits, word_zero
from .launch import SMALL_GRID
from .warp_plan import stream_records_at, stream_slots

FULL = T.uint32(0xFFFFFFFF)  # every lane of the warp
MAX_SLOTS = 64  # rows a thread block owns at most: two records per lane


@dataclass(frozen=True)
class StreamConfig:
    warps: int = 16  # warps per thread block
    ctas: int = 396  # thread blocks (the plan deals the rows to exactly these)
    unroll: int = 2  # kept blocks a lane loads per loop trip
    ahead: bool = True  # the first trip's loads go out before the staging (and the PDL wait), each next trip's
    # before this trip's arithmetic (a second register set)
    pdl: bool = False  # programmatic dependent launch: wait before staging, trigger the next launch right after

    @property
    def key(self) -> str:
        return f"st_w{self.warps}c{self.ctas}u{self.unroll}" + ("a" if self.ahead else "") + ("g" if self.pdl else "")


def supports(s: BSRShape, m: int, cfg: StreamConfig) -> bool:
    return (s.rows == 1 and s.bits == 4 and s.group == 16 and s.packed and s.interleaved and s.dtype == "float16"
            and m * s.k * 2 <= SMEM_BYTES - MAX_SLOTS * 4 * m and stream_slots(s.block_rows, cfg.ctas) <= MAX_SLOTS)


def indptr_len(s: BSRShape, cfg: StreamConfig) -> int:
    return stream_records_at(s.block_rows) + 4 * cfg.ctas * stream_slots(s.block_rows, cfg.ctas)


def bsr_decode_stream(s: BSRShape, m: int, cfg: StreamConfig = StreamConfig()):
    """The PrimFunc ``(x, indptr + plan, indices, qweight, y)``; the plan from warp_plan.stream(indptr, cfg.ctas)."""
    assert supports(s, m, cfg), f"the stream GEMV takes 4-bit G16 R1 packed fp16 matrices, not {s} at M = {m}, {cfg}"
    k, n = s.k, s.block_rows
    warps, nctas, unroll, ahead = cfg.warps, cfg.ctas, cfg.unroll, cfg.ahead
    slots = stream_slots(n, nctas)
    halves = -(-slots // 32)  # records per lane
    base = stream_records_at(n)
    threads = warps * 32
    xwords = m * k // 2  # activation pairs (uint32) staged
    cur = 1 if ahead else 0  # the register set the arithmetic reads

    @T.macro
    def issue(indices, qw, rrec, dl, mw, wq, jl, slot, it, span, tx):
        """Load the lane's blocks of trip ``it`` into register set ``slot``, each through its record (jl); past
        the warp's piece the piece's last block is loaded again (its scale is zeroed later)."""
        for u in T.unroll(unroll):
            # the 32 positions from b (clamped to the piece's last), one per lane: records that end at or before
            # b, then one bit per record ending within, counted up to the lane's own position
            b = T.min(span[0] + (it * unroll + u) * 32, span[1] - 1)
            lane = T.min(tx, span[1] - 1 - b)
            jl[slot, u] = 0
            for hh in T.unroll(halves):
                T.ptx.vote_sync.ballot.b32(wq[slot, u, 0], rrec[hh, 1] <= b, FULL)
                T.ptx.redux_sync.or_.b32(wq[slot, u, 1], T.if_then_else(
                    (rrec[hh, 1] > b) & (rrec[hh, 1] - b < 32), T.uint32(1) << T.Cast("uint32", rrec[hh, 1] - b),
                    T.uint32(0)), FULL)
                jl[slot, u] = jl[slot, u] + T.Cast("int32", T.popcount(wq[slot, u, 0]) + T.popcount(
                    wq[slot, u, 1] & ((T.uint32(2) << T.Cast("uint32", lane)) - T.uint32(1))))
            # the record's offset to the global block, from the lane that holds it (both shuffles by every lane)
            for hh in T.unroll(halves):
                dl[hh] = T.tvm_warp_shuffle(FULL, rrec[hh, 0], jl[slot, u] % 32, 32, 32)
            g = b + lane + (dl[0] if halves == 1 else T.if_then_else(jl[slot, u] < 32, dl[0], dl[1]))
            T.ptx.ld.global_.nc.b32(mw[slot, u], indices.ptr_to([g]))
            T.ptx.ld.global_.nc.v2.b32(wq[slot, u, 0], wq[slot, u, 1], qw.ptr_to([g, 0, 0]))

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
    def body(x, indptr, indices, qw, sc, zr, y, mm, nnz):
        x32 = T.decl_buffer((xwords,), "uint32", data=x.data)
        for bx in T.thread_binding(nctas, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    # every thread block resident at once on an H100: what the plan's equal shares assume
                    with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", -(-nctas // SMALL_GRID)):
                        xs = T.alloc_buffer((xwords,), "uint32", scope="shared")
                        accs = T.alloc_buffer((slots * m,), "float32", scope="shared")
                        rrec = T.alloc_buffer((halves, 2), "int32", scope="local")  # records tx, 32 + tx: delta, end
                        dl = T.alloc_buffer((halves,), "int32", scope="local")
                        mw = T.alloc_buffer((2, unroll), "uint32", scope="local")
                        wq = T.alloc_buffer((2, unroll, 2), "uint32", scope="local")
                        jl = T.alloc_buffer((2, unroll), "int32", scope="local")
                        span = T.alloc_buffer((3,), "int32", scope="local")  # the warp's piece: start, end; open row
                        acc = T.alloc_buffer((m,), "float32", scope="local")
                        prod = T.alloc_buffer((unroll, m), "float32", scope="local")
                        red = T.alloc_buffer((1,), "float32", scope="local")
                        h = T.alloc_buffer((1,), "uint32", scope="local")
                        x2 = T.alloc_buffer((8,), "uint32", scope="local")
                        dq = T.alloc_buffer((8,), "uint32", scope="local")
                        xr = T.alloc_buffer((4,), "uint32", scope="local")
                        sv = T.alloc_buffer((1,), "float32", scope="local")
                        last = T.alloc_buffer((1,), "int32", scope="local")
                        for hh in T.unroll(halves):  # (the row is read again at the end: one register less here)
                            if hh * 32 + tx < slots:
                                T.ptx.ld.global_.nc.v2.b32(rrec[hh, 0], rrec[hh, 1], indptr.ptr_to(
                                    [base + (bx * slots + hh * 32 + tx) * 4]))
                            else:  # no record: never ends
                                rrec[hh, 1] = 2**31 - 1
                        for c in range(-(-slots * m // threads)):
                            if c * threads + ty * 32 + tx < slots * m:
                                accs[c * threads + ty * 32 + tx] = T.float32(0)
                        # the warp's piece of the thread block's stream (the last record's end is the stream's length)
                        last[0] = T.tvm_warp_shuffle(FULL, rrec[(slots - 1) // 32, 1], (slots - 1) % 32, 32, 32)
                        span[0] = T.min((last[0] + warps - 1) // warps * ty, last[0])
                        span[1] = T.min(span[0] + (last[0] + warps - 1) // warps, last[0])
                        for i in T.unroll(m):
                            acc[i] = T.float32(0)
                        mw[0, 0] = T.uint32(0)
                        wq[0, 0, 0] = T.uint32(0)
                        if ahead:  # the first trip's loads, before the staging and the PDL wait
                            if span[1] > span[0]:
                                issue(indices, qw, rrec, dl, mw, wq, jl, 0, 0, span, tx)
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
                        trips = (span[1] - span[0] + unroll * 32 - 1) // (unroll * 32)
                        for it in range(trips):
                            if not ahead:
                                issue(indices, qw, rrec, dl, mw, wq, jl, 0, it, span, tx)
                            else:
                                for u in T.unroll(unroll):
                                    mw[1, u] = mw[0, u]
                                    jl[1, u] = jl[0, u]
                                    for w in T.unroll(2):
                                        wq[1, u, w] = wq[0, u, w]
                                if it + 1 < trips:
                                    issue(indices, qw, rrec, dl, mw, wq, jl, 0, it + 1, span, tx)
                            if it == 0:  # the open row: the record of the piece's first block
                                span[2] = T.tvm_warp_shuffle(FULL, jl[cur, 0], 0, 32, 32)
                            for u in T.unroll(unroll):
                                for j in T.unroll(8):
                                    dq[j] = ((wq[cur, u, j // 4] >> T.uint32(j % 4 * 4)) & T.uint32(0x000F000F)
                                             ) | T.uint32(0x64006400)
                                    T.ptx.sub.f16x2(dq[j], dq[j], (T.uint32(0x6400) + word_zero(mw[cur, u]))
                                                    * T.uint32(0x10001))
                                sv[0] = T.Cast("float32", T.reinterpret("float16", T.Cast(
                                    "uint16", word_scale_bits(mw[cur, u])))) * T.Cast(
                                        "float32", span[0] + (it * unroll + u) * 32 + tx < span[1])
                                for i in T.unroll(m):
                                    for c in T.unroll(2):
                                        for v in T.vectorized(4):
                                            x2[c * 4 + v] = xs[(i * (k // 8) + T.Cast(
                                                "int32", word_column(mw[cur, u])) * 2 + c) * 4 + v]
                                    h[0] = T.uint32(0)
                                    for j in T.unroll(8):
                                        T.ptx.fma.rn.f16x2(h[0], dq[j], x2[j], h[0])
                                    prod[u, i] = (T.Cast("float32", T.reinterpret("float16", T.Cast(
                                        "uint16", h[0] & T.uint32(0xFFFF)))) + T.Cast("float32", T.reinterpret(
                                            "float16", T.Cast("uint16", h[0] >> T.uint32(16))))) * sv[0]
                            # rows that end in this trip: the last lane's last block lies in the trip's last row
                            last[0] = T.tvm_warp_shuffle(FULL, jl[cur, unroll - 1], 31, 32, 32)
                            for jr in range(last[0] - span[2] + 1):
                                for u in T.unroll(unroll):
                                    for i in T.unroll(m):
                                        acc[i] = acc[i] + T.if_then_else(jl[cur, u] == span[2] + jr, prod[u, i],
                                                                         T.float32(0))
                                if span[2] + jr < last[0]:
                                    flush(acc, red, accs, span[2] + jr, tx)
                            span[2] = last[0]
                        if trips > 0:
                            flush(acc, red, accs, span[2], tx)
                        T.tvm_storage_sync("shared")
                        if ty * 32 + tx < slots:  # thread t writes the row of record t
                            last[0] = indptr[base + (bx * slots + ty * 32 + tx) * 4 + 2]
                            if last[0] >= 0:
                                for i in T.unroll(m):
                                    y[i, last[0]] = T.Cast("float16", accs[(ty * 32 + tx) * m + i])

    return bsr_func(s, body, tokens=m, indptr_len=indptr_len(s, cfg))
