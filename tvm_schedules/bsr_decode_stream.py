"""BSR int4 GEMV for decode on CUDA, split by kept blocks: each thread block streams a contiguous range.

Why: the one-warp-per-row kernel (bsr_decode) ties a warp's work to its row's block count, so rows with
unequal counts (per-layer sparsity) leave warps idle, and every row pays a start-up and a reduction. Here
the work is cut by blocks. A fixed number of persistent thread blocks each take a contiguous run of rows
holding about 1/C of all kept blocks (found at run time by a two-level search of indptr: one parallel
load of NT samples, one of the bracket between two samples). BSR stores a run of rows as one contiguous
stretch of every array, so inside the thread block each warp streams an equal slice of that stretch,
each lane ``blocks`` consecutive blocks per step (one 16-byte code load at G = 16), whatever rows they
belong to. A lane keeps one running sum per token and adds it into the row's shared-memory total (one
shared atomic) when its blocks cross into the next row. So every warp has the same number of blocks
whether rows are equal or not.

The arrays must hold a multiple of ``PAD`` blocks (the artifact pads them, gqsa_compile.kernel_layout):
the last lane's vector load may read past the last kept block. Arithmetic is bsr_decode's half2 path.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .common import BSRShape

SMEM_BYTES = 48 * 1024
PAD = 4  # kept blocks per matrix are padded to a multiple of this (covers every ``blocks`` choice)


@dataclass(frozen=True)
class StreamConfig:
    warps: int = 16  # warps per thread block
    ctas: int = 132  # persistent thread blocks (each a contiguous, block-balanced range of rows)
    depth: int = 2  # warp steps whose loads are issued together
    blocks: int = 2  # consecutive kept blocks per lane per step
    window: int = 512  # rows whose totals a thread block holds in shared memory at once
    fence: bool = True  # a store that needs every loaded word, so a trip's loads issue together

    @property
    def key(self) -> str:
        return f"stream_w{self.warps}c{self.ctas}d{self.depth}b{self.blocks}r{self.window}" + (
            "f" if self.fence else "")


SWEEP = [StreamConfig(8, 132), StreamConfig(32, 132), StreamConfig(8, 264), StreamConfig(16, 264),
         StreamConfig(8, 528), StreamConfig(depth=1), StreamConfig(depth=4), StreamConfig(blocks=1),
         StreamConfig(blocks=4), StreamConfig(fence=False), StreamConfig(16, 264, depth=4),
         StreamConfig(32, 132, depth=1)]


def _search(s: BSRShape, cfg: StreamConfig) -> tuple[int, int]:
    """(rows between level-1 samples, width of the level-2 search: a power of two)."""
    step1 = -(-s.block_rows // (cfg.warps * 32 - 1))  # sample NT - 1 is row n
    return step1, 1 << (step1 - 1).bit_length()


def _smem(s: BSRShape, m: int, cfg: StreamConfig) -> tuple[bool, int]:
    """(activations fit in shared memory, bytes used)."""
    nt = cfg.warps * 32
    fixed = 4 * (nt + 2 * _search(s, cfg)[1] + cfg.window + 1 + m * cfg.window + (nt if cfg.fence else 0))
    x_fits = fixed + m * s.k * 2 <= SMEM_BYTES
    return x_fits, fixed + (m * s.k * 2 if x_fits else 16)


def supports(s: BSRShape, m: int, cfg: StreamConfig) -> bool:
    wpl = cfg.blocks * s.words
    return (s.rows == 1 and s.interleaved and s.dtype == "float16" and s.group % 8 == 0
            and (wpl in (1, 2) or wpl % 4 == 0) and PAD % cfg.blocks == 0
            and _search(s, cfg)[1] <= cfg.warps * 32 and _smem(s, m, cfg)[1] <= SMEM_BYTES)


def bsr_decode_stream(s: BSRShape, m: int, cfg: StreamConfig = StreamConfig()):
    assert supports(s, m, cfg), (s, m, cfg)
    n, k, group, words = s.n, s.k, s.group, s.words
    nbr = s.block_rows
    W, D, U, C, WR = cfg.warps, cfg.depth, cfg.blocks, cfg.ctas, cfg.window
    NT = W * 32
    wpl = U * words  # code words a lane loads per step
    span = 32 * U  # blocks a warp covers per step
    step1, p2 = _search(s, cfg)
    x_smem, _ = _smem(s, m, cfg)
    xwords = m * k // 2 if x_smem else 4
    stage = -(-xwords // 4 // NT)
    fence = cfg.fence
    INT_MAX = 2**31 - 1

    def swz(q):
        """Where 16-byte activation chunk q sits in shared memory: lanes gathering chunks 64 bytes apart (dense
        stretches of a row) would otherwise all hit the same four banks."""
        return T.bitwise_xor(q, T.shift_right(q, 2) & 3)

    @T.macro
    def flush(row, crossed, tx, acc, accs, key, kk, val, vo):
        # segmented sum over the warp of the lanes leaving ``row`` (a lane's rows only grow, and lanes hold
        # consecutive blocks, so equal rows sit in consecutive lanes); the first lane of each row adds it
        key[0] = T.if_then_else(crossed, row, -1 - tx)
        for i in T.unroll(m):
            val[i] = T.if_then_else(crossed, acc[i], T.float32(0))
        for o in T.unroll(5):
            kk[0] = T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), key[0], 1 << o, 32, 32)
            for i in T.unroll(m):
                vo[i] = T.tvm_warp_shuffle_down(T.tvm_warp_activemask(), val[i], 1 << o, 32, 32)
            if tx + (1 << o) < 32 and kk[0] == key[0]:
                for i in T.unroll(m):
                    val[i] = val[i] + vo[i]
        kk[0] = T.tvm_warp_shuffle_up(T.tvm_warp_activemask(), key[0], 1, 32, 32)
        if key[0] >= 0 and (tx == 0 or kk[0] != key[0]):
            for i in T.unroll(m):
                T.ptx.red.shared.add.f32(accs.ptr_to([i * WR + key[0]]), val[i])

    @T.prim_func
    def bsr_decode_stream(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle,
                          sc_h: T.handle, zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        nnz = T.int32()
        x = T.match_buffer(x_h, (m, k), "float16")
        indptr = T.match_buffer(indptr_h, (nbr + 1,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, 1, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, 1), "float16")
        zr = T.match_buffer(zr_h, (nnz, 1), "uint8")
        y = T.match_buffer(y_h, (m, n), "float16")
        x32 = T.decl_buffer((m * k // 2,), "uint32", data=x.data)
        q32 = T.decl_buffer((nnz * words,), "uint32", data=qw.data)
        s16 = T.decl_buffer((nnz,), "uint16", data=sc.data)
        for bx in T.thread_binding(C, thread="blockIdx.x"):
            for ty in T.thread_binding(W, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    xs = T.alloc_buffer((xwords,), "uint32", scope="shared")
                    lvl = T.alloc_buffer((NT,), "int32", scope="shared")  # level-1 samples of indptr
                    lv2 = T.alloc_buffer((2 * p2,), "int32", scope="shared")  # level-2 brackets (start, end)
                    ips = T.alloc_buffer((WR + 1,), "int32", scope="shared")  # the window's indptr
                    accs = T.alloc_buffer((m * WR,), "float32", scope="shared")  # the window's row totals
                    sink = T.alloc_buffer((NT if fence else 1,), "uint32", scope="shared")
                    # activations into shared memory, and the level-1 samples, both in flight together
                    if x_smem:
                        for c in range(stage):
                            if (c * NT + (ty * 32 + tx)) * 4 < xwords:
                                for v in T.vectorized(4):
                                    xs[swz(c * NT + (ty * 32 + tx)) * 4 + v] = x32[(c * NT + (ty * 32 + tx)) * 4 + v]
                    lvl[(ty * 32 + tx)] = indptr[T.min((ty * 32 + tx) * step1, nbr)]
                    T.tvm_storage_sync("shared")
                    # this thread block's rows: [lower_bound(bx E / C), lower_bound((bx + 1) E / C))
                    tg = T.alloc_buffer((2,), "int32", scope="local")
                    pos = T.alloc_buffer((2,), "int32", scope="local")
                    pb = T.alloc_buffer((2,), "int32", scope="local")
                    rr = T.alloc_buffer((2,), "int32", scope="local")
                    for e in T.unroll(2):
                        tg[e] = T.Cast("int32", T.Cast("int64", bx + e) * T.Cast("int64", lvl[NT - 1]) // C)
                        pos[e] = 0  # count of samples < target (the last sample, E, is never below it)
                        for o in T.unroll(NT.bit_length() - 1):
                            pos[e] = pos[e] + T.if_then_else(lvl[pos[e] + (NT >> (o + 1)) - 1] < tg[e], NT >> (o + 1), 0)
                        pb[e] = T.if_then_else(pos[e] > 0, T.min((pos[e] - 1) * step1, nbr), -1)
                        if (ty * 32 + tx) < p2:
                            lv2[e * p2 + (ty * 32 + tx)] = T.if_then_else(
                                (ty * 32 + tx) < step1, indptr[T.min(pb[e] + 1 + (ty * 32 + tx), nbr)], INT_MAX)
                    T.tvm_storage_sync("shared")
                    for e in T.unroll(2):
                        pos[e] = 0
                        for o in T.unroll(p2.bit_length() - 1):
                            pos[e] = pos[e] + T.if_then_else(lv2[e * p2 + pos[e] + (p2 >> (o + 1)) - 1] < tg[e], p2 >> (o + 1), 0)
                        rr[e] = pb[e] + 1 + pos[e]
                    if bx == C - 1:
                        rr[1] = nbr
                    acc = T.alloc_buffer((m,), "float32", scope="local")
                    cur = T.alloc_buffer((1,), "int32", scope="local")
                    nxt = T.alloc_buffer((1,), "int32", scope="local")
                    old = T.alloc_buffer((1,), "int32", scope="local")
                    part = T.alloc_buffer((m,), "float32", scope="local")
                    key = T.alloc_buffer((1,), "int32", scope="local")
                    kk = T.alloc_buffer((1,), "int32", scope="local")
                    val = T.alloc_buffer((m,), "float32", scope="local")
                    vo = T.alloc_buffer((m,), "float32", scope="local")
                    rng = T.alloc_buffer((2,), "int32", scope="local")
                    wq = T.alloc_buffer((2, D, wpl), "uint32", scope="local")  # two trips: in use, in flight
                    sh = T.alloc_buffer((2, D, U), "uint16", scope="local")
                    zb = T.alloc_buffer((2, D, U), "uint8", scope="local")
                    ix = T.alloc_buffer((2, D, U), "uint16", scope="local")
                    dq = T.alloc_buffer((group // 2,), "uint32", scope="local")
                    x2 = T.alloc_buffer((group // 2,), "uint32", scope="local")
                    h = T.alloc_buffer((1,), "uint32", scope="local")
                    chk = T.alloc_buffer((1,), "uint32", scope="local")
                    for win in range((rr[1] - rr[0] + WR - 1) // WR):
                        wa = rr[0] + win * WR
                        nr = T.min(WR, rr[1] - wa)
                        T.tvm_storage_sync("shared")  # the previous window's totals are written out
                        for j in range(-(-(WR + 1) // NT)):
                            if j * NT + (ty * 32 + tx) <= nr:
                                ips[j * NT + (ty * 32 + tx)] = indptr[wa + j * NT + (ty * 32 + tx)]
                        for j in range(-(-(m * WR) // NT)):
                            if j * NT + (ty * 32 + tx) < m * WR:
                                accs[j * NT + (ty * 32 + tx)] = T.float32(0)
                        T.tvm_storage_sync("shared")
                        rng[0] = ips[0]  # a register, not a let: loop bounds must not read shared memory
                        rng[1] = ips[nr]
                        bs = rng[0]
                        be = rng[1]
                        if be > bs:
                            base = bs - bs % U
                            last = (be - 1) - (be - 1) % U  # the aligned group holding the last kept block
                            spw = ((be - base + span - 1) // span + W - 1) // W  # steps per warp
                            first = base + ty * spw * span + tx * U
                            # the row of this lane's first block: largest r < nr with ips[r] <= block
                            cur[0] = 0
                            for o in T.unroll((WR - 1).bit_length()):
                                cur[0] = cur[0] + T.if_then_else(cur[0] + (WR >> (o + 1)) < nr and ips[T.min(
                                    cur[0] + (WR >> (o + 1)), WR)] <= T.max(first, bs), WR >> (o + 1), 0)
                            for i in range(m):
                                acc[i] = T.float32(0)
                            # software pipeline: trip t + 1's loads go out before trip t's arithmetic
                            for tt in range(((spw + D - 1) // D + 1) // 2):
                                for hf in T.unroll(2):
                                    for ph in T.unroll(2):
                                        if ph == 1 or (tt == 0 and hf == 0):  # the first trip loads its own
                                            for d in T.unroll(D):
                                                st = (tt * 2 + hf + ph) * D + d
                                                b = T.min(first + st * span, last)
                                                if wpl == 1:
                                                    T.ptx.ld.global_.nc.b32(wq[(hf + ph) % 2, d, 0], q32.ptr_to([b * words]))
                                                elif wpl == 2:
                                                    T.ptx.ld.global_.nc.v2.b32(wq[(hf + ph) % 2, d, 0], wq[(hf + ph) % 2, d, 1],
                                                                               q32.ptr_to([b * words]))
                                                else:
                                                    for w4 in T.unroll(wpl // 4):
                                                        T.ptx.ld.global_.nc.v4.b32(
                                                            wq[(hf + ph) % 2, d, w4 * 4], wq[(hf + ph) % 2, d, w4 * 4 + 1],
                                                            wq[(hf + ph) % 2, d, w4 * 4 + 2], wq[(hf + ph) % 2, d, w4 * 4 + 3],
                                                            q32.ptr_to([b * words + w4 * 4]))
                                                for u in T.unroll(U):
                                                    T.ptx.ld.global_.nc.b16(sh[(hf + ph) % 2, d, u], s16.ptr_to([b + u]))
                                                    T.ptx.ld.global_.nc.u8(zb[(hf + ph) % 2, d, u], zr.ptr_to([b + u, 0]))
                                                    T.ptx.ld.global_.nc.b16(ix[(hf + ph) % 2, d, u], indices.ptr_to([b + u]))
                                    if fence:  # this trip's words (loaded one trip ago) all arrive before its math
                                        chk[0] = T.uint32(0)
                                        for d in T.unroll(D):
                                            for w in T.unroll(wpl):
                                                chk[0] = chk[0] ^ wq[hf, d, w]
                                            for u in T.unroll(U):
                                                chk[0] = chk[0] ^ T.Cast("uint32", sh[hf, d, u]) ^ T.Cast(
                                                    "uint32", zb[hf, d, u]) ^ T.Cast("uint32", ix[hf, d, u])
                                        T.ptx.st.shared.b32(sink.ptr_to([(ty * 32 + tx)]), chk[0])
                                    for d in T.unroll(D):
                                        for u in T.unroll(U):
                                            st = (tt * 2 + hf) * D + d
                                            blk = first + st * span + u
                                            live = st < spw and blk < be
                                            old[0] = cur[0]
                                            if live and blk >= bs:  # the row of this block: walk on from the last one
                                                nxt[0] = T.if_then_else(cur[0] < nr - 1, ips[T.min(cur[0] + 1, WR)], INT_MAX)
                                                while nxt[0] <= blk:
                                                    cur[0] = cur[0] + 1
                                                    nxt[0] = T.if_then_else(cur[0] < nr - 1, ips[T.min(cur[0] + 1, WR)], INT_MAX)
                                            elif not live:  # past this warp's last block
                                                cur[0] = -1 - tx
                                            for j in T.unroll(group // 2):
                                                dq[j] = ((wq[hf, d, u * words + j // 4] >> T.uint32(j % 4 * 4))
                                                         & T.uint32(0x000F000F)) | T.uint32(0x64006400)
                                                T.ptx.sub.f16x2(dq[j], dq[j], (T.uint32(0x6400) + T.Cast(
                                                    "uint32", zb[hf, d, u])) * T.uint32(0x10001))
                                            for i in T.unroll(m):
                                                for c in T.unroll(group // 8):
                                                    if x_smem:  # 16-byte chunk q of the activations sits at q ^ ((q >> 2) & 3)
                                                        for v in T.vectorized(4):
                                                            x2[c * 4 + v] = xs[swz(i * (k // 8) + T.Cast(
                                                                "int32", ix[hf, d, u]) * (group // 8) + c) * 4 + v]
                                                    else:
                                                        for v in T.vectorized(4):
                                                            x2[c * 4 + v] = x32[i * (k // 2) + (T.Cast(
                                                                "int32", ix[hf, d, u]) * (group // 8) + c) * 4 + v]
                                                h[0] = T.uint32(0)
                                                for j in T.unroll(group // 2):
                                                    T.ptx.fma.rn.f16x2(h[0], dq[j], x2[j], h[0])
                                                part[i] = (T.Cast("float32", T.reinterpret("float16", T.Cast(
                                                    "uint16", h[0] & T.uint32(0xFFFF)))) + T.Cast("float32", T.reinterpret(
                                                        "float16", T.Cast("uint16", h[0] >> T.uint32(16))))) * T.Cast(
                                                    "float32", T.reinterpret("float16", sh[hf, d, u])) * T.Cast(
                                                    "float32", live and blk >= bs)
                                            # lanes that left a row hand its running sums over, one atomic per row
                                            if T.call_extern("int32", "__any_sync", T.uint32(0xFFFFFFFF), cur[0] != old[0]) != 0:
                                                flush(old[0], cur[0] != old[0], tx, acc, accs, key, kk, val, vo)
                                                if cur[0] != old[0]:
                                                    for i in T.unroll(m):
                                                        acc[i] = T.float32(0)
                                            for i in T.unroll(m):
                                                acc[i] = acc[i] + part[i]
                            flush(cur[0], cur[0] >= 0, tx, acc, accs, key, kk, val, vo)
                        T.tvm_storage_sync("shared")
                        for j in range(-(-(m * WR) // NT)):
                            if j * NT + (ty * 32 + tx) < m * WR and (j * NT + (ty * 32 + tx)) % WR < nr:
                                y[(j * NT + (ty * 32 + tx)) // WR, wa + (j * NT + (ty * 32 + tx)) % WR] = T.Cast("float16", accs[j * NT + (ty * 32 + tx)])

    return bsr_decode_stream
