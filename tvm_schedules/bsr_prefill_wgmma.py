"""BSR int4 prefill on Hopper (sm_90a), any block height: dequantize every weight once, then a pipelined wgmma GEMM.

Why (docs/perf.md): the tiled mma.sync GEMM (bsr_prefill_tiled) is bound by L1 traffic, most of it the ldmatrix
of its operands, so even without any weight work it takes 1.9x cuBLAS's time. Here, two launches:

- the first writes the whole matrix as fp16 (zeros for pruned groups) into a scratch laid out tile by tile in
  wgmma's 128-byte swizzled K-major layout: a row's 64 columns of a chunk are one 128-byte line whose 16-byte
  pieces are permuted by the row, so the launch writes whole lines and each weight tile is one contiguous copy;
- the GEMM keeps ``stages`` chunks of 64 columns in a ring in dynamic shared memory. A producer warp fills each
  stage with two copies completing on its "full" mbarrier: the weight tile by a bulk copy, the token tile's
  activations straight from x by the tensor copy engine (TMA), through a tensor map the host side encodes per call
  (x as K x M fp16, boxes of 64 columns x the token tile, swizzled as they land). Two consumer warpgroups, 64
  tokens each, issue m64n{rows}k16 on a chunk and release the chunk before on its "empty" mbarrier once their
  wgmma's of it are done (``wgmma.wait_group 1``), so the tensor cores are never drained between chunks;
- thread blocks run token tile first: the ~132 running at once share a few weight tiles through L2;
- the last token tile is shifted back to end at token M, so no box reaches past x (rows past M, which the engine
  zero-fills, made those boxes slow);
- the results leave the same way: after a barrier (the other warpgroup's last wgmma's may still read the ring's
  first stage) the warpgroups write fp16 into swizzled [tokens, 64] boxes at the ring's start, and one thread
  stores them by bulk tensor copies through a tensor map of y;
- the GEMM is a programmatic dependent launch of the first: that one's blocks let it launch once all of them have
  started, the GEMM's blocks set up beside the last ones, and only the producer waits before its first copy.

H100, as `gqsa-compile --arch sm_90a` builds it (tags "plan sm90a", "plan sm90a r16"): R = 1 at M = 4096 in
1.07-1.11x cuBLAS fp16's time, 1.71-1.92x at 512, where the scratch (N x K x 2 bytes per call) is written and read
back. R = 16 runs the same dense tiles (no block skipping). docs/perf.md has each step's measurement and the
variants it replaced (cp.async copies, core-matrix tiles, activations laid out by a launch of their own, stores
from the fragments or a padded tile, two thread blocks per SM, 32-column chunks, the dequantizing launch beside the
GEMM, clusters, weights expanded inside the GEMM from a packed copy).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .common import SMS, BSRShape, column, scale_bits, zero_bits

CHUNK = 64  # input columns per stage: one 128-byte swizzled line of fp16 per row
WG_TOKENS = 64  # tokens per warpgroup (wgmma's M)
ATOM = 512  # fp16 of a 128-byte swizzle atom: 8 rows x 64 columns
MAX_SMEM = 227 * 1024  # dynamic shared memory a thread block may have on sm_90


@dataclass(frozen=True)
class WgmmaConfig:
    rows: int = 256  # weight rows per thread block (wgmma's N)
    warpgroups: int = 2  # consumer warpgroups, each 64 tokens
    stages: int = 4  # chunks in the shared-memory ring
    pdl: bool = True  # the GEMM a programmatic dependent launch of the dequantizing launch (tag "wgmma pdl")
    ablate: str = ""  # measurement only, wrong results: "store" leaves out the epilogue, "dequant" the
    # dequantizing launch (benchmarks/kernels.py times these unchecked, tag "wgmma ablation")

    @property
    def tokens(self) -> int:
        return WG_TOKENS * self.warpgroups

    @property
    def key(self) -> str:
        # "twsdm": token tiles first, a producer warp, swizzled tiles, activations straight from x, results out by
        # TMA: the letters of the variants this kernel kept, so keys read the same as in earlier results
        return (f"wg{self.rows}x{self.tokens}p{self.stages}twsdm" + ("g" if self.pdl else "")
                + (f"_no_{self.ablate}" if self.ablate else ""))


# H100 (docs/perf.md): 256 x 128 tiles with 4 stages were fastest at M = 512 .. 4096; the dependent launch
# 1.06-1.15x faster on SmolLM2's matrices, 1.01-1.03x (geometric means by M) on LLaMA's (tag "wgmma pdl")
BEST = WgmmaConfig(256, 2, 4)
SMALL = WgmmaConfig(128, 2, 4)  # half the rows: twice the thread blocks (by_tokens)
TILE_GAIN = 1.2  # BEST's speed per unit of work over SMALL's at M = 4096 (H100: 1.20-1.27x, docs/perf.md)


def by_tokens(s: BSRShape) -> tuple:
    """((max_m, SMALL), (None, BEST)), or ((None, BEST),): SMALL for as many token tiles (from one) as its grid
    fills the SMs' last wave enough better than BEST's to make up for its slower tiles. H100 (tag "wgmma swizzle
    sweep"), M = 512: 4096 x K ran 2.05-2.20x cuBLAS's time with SMALL against 2.63-2.77x with BEST (64 thread
    blocks); every other shape ran faster with BEST (12288 x 4096 within 3%)."""
    def used(cfg: WgmmaConfig, tiles: int) -> float:  # the share of the waves' thread-block slots doing work
        ctas = tiles * -(-s.n // cfg.rows)
        return ctas / (-(-ctas // SMS) * SMS)

    tiles = 0
    while tiles < 64 and used(SMALL, tiles + 1) > TILE_GAIN * used(BEST, tiles + 1):
        tiles += 1
    return ((tiles * BEST.tokens, SMALL), (None, BEST)) if tiles and supports(s, SMALL) else ((None, BEST),)


def tile_halves(rows: int) -> int:
    return rows * CHUNK


def offset(r, kk):
    """fp16 offset of (row r, column kk) in a tile of CHUNK columns: 8-row atoms of 128-byte rows whose 16-byte
    pieces are permuted by the row (piece p of row r at p ^ r % 8: what the descriptor's 128-byte swizzle mode
    reads, from a 1024-byte aligned tile)."""
    return r // 8 * ATOM + r % 8 * 64 + (kk // 8 ^ r % 8) * 8 + kk % 8


def ring_bytes(cfg: WgmmaConfig) -> int:
    """The GEMM's dynamic shared memory: the ring, and 1 KB of room to start it on a 1024-byte boundary."""
    return 2 * (cfg.stages * (tile_halves(cfg.rows) + tile_halves(cfg.tokens)) + ATOM)


def supports(s: BSRShape, cfg: WgmmaConfig = WgmmaConfig()) -> bool:
    return (s.rows in (1, 4, 8, 16) and s.n % s.rows == 0 and s.bits == 4 and s.group == 16 and s.interleaved
            and s.dtype == "float16" and s.k % CHUNK == 0 and cfg.rows in (64, 128, 256) and cfg.stages >= 3
            and ring_bytes(cfg) <= MAX_SMEM)


def scratch_halves(s: BSRShape, cfg: WgmmaConfig) -> int:
    return -(-s.n // cfg.rows) * (s.k // CHUNK) * tile_halves(cfg.rows)


@T.macro
def _dequant_piece(dd, word, z, scl):
    """8 codes (half a group, interleaved order, one word) as (code - zero) * scale in 4 fp16 pairs, dd[0..3] (z,
    scl: the zero point and the scale's bits, as uint32): one 16-byte piece of the dequantized row. A code or'ed
    into 0x6400 is the fp16 1024 + code, so the subtraction is exact."""
    for t in T.unroll(4):
        T.ptx.sub.f16x2(dd[t], ((word >> T.uint32(t * 4)) & T.uint32(0x000F000F))
                        | T.uint32(0x64006400), (T.uint32(0x6400) + z) * T.uint32(0x10001))
        T.ptx.mul.rn.f16x2(dd[t], dd[t], scl * T.uint32(0x10001))


def _dequant_pass(s: BSRShape, br: int, batch: int = 4, trigger: bool = False):
    """The first launch: a warp per weight row marks in shared memory which block of its block row holds each
    column group, then writes the row's fp16 tiles a 16-byte piece (8 columns, zeros for a pruned group) per
    lane, lanes 8c .. 8c + 7 chunk c's pieces: each store instruction writes four whole 128-byte lines. Each lane
    loads ``batch`` trips' codes, scales and zero points before any of their arithmetic. H100 (docs/perf.md):
    1.06x faster at M = 512 and 1.015x at 4096 than a 16-column group per lane (two stores of half lines each),
    the pass itself 12288 x 4096 about 65 -> 52 us at M = 512. ``trigger``: the GEMM after it may launch once every
    block of this one has started."""
    n, k, group, rb = s.n, s.k, s.group, s.rows
    kg, nch, wpb = k // group, k // CHUNK, 8
    gpl = -(-kg // 32)
    pieces = kg * 2  # 8-column pieces of a row
    trips = -(-pieces // (32 * batch))
    ppc = CHUNK // 8
    th = tile_halves(br)

    @T.macro
    def dequant_pass(indptr, indices, qw, sc, zr, wd2):
        for bi in T.thread_binding((n + wpb - 1) // wpb, thread="blockIdx.x"):
            for wy in T.thread_binding(wpb, thread="threadIdx.y"):
                for lx in T.thread_binding(32, thread="threadIdx.x"):
                    slot = T.alloc_buffer((wpb * kg,), "int32", scope="shared")  # group -> its block, or -1
                    blk = T.alloc_buffer((batch,), "int32", scope="local")
                    cw = T.alloc_buffer((batch,), "uint32", scope="local")
                    zz = T.alloc_buffer((batch,), "uint32", scope="local")
                    ss = T.alloc_buffer((batch,), "uint32", scope="local")
                    dd = T.alloc_buffer((4,), "uint32", scope="local")
                    r = bi * wpb + wy
                    if trigger:
                        T.ptx.griddepcontrol.launch_dependents()
                    for g0 in range(gpl):
                        if g0 * 32 + lx < kg:
                            slot[wy * kg + g0 * 32 + lx] = -1
                    T.tvm_storage_sync("shared")
                    if r < n:
                        for i in range((indptr[r // rb + 1] - indptr[r // rb] + 31) // 32):
                            if indptr[r // rb] + i * 32 + lx < indptr[r // rb + 1]:
                                slot[wy * kg + column(s, indices, indptr[r // rb] + i * 32 + lx)] = (
                                    indptr[r // rb] + i * 32 + lx)
                    T.tvm_storage_sync("shared")
                    if r < n:
                        for t in T.serial(trips):
                            for u in T.unroll(batch):  # piece (t * batch + u) * 32 + lx: group (...) // 2
                                blk[u] = T.if_then_else((t * batch + u) * 32 + lx < pieces, slot[
                                    wy * kg + T.min(((t * batch + u) * 32 + lx) // 2, kg - 1)], -1)
                            for u in T.unroll(batch):
                                if blk[u] >= 0:
                                    cw[u] = qw[blk[u], r % rb, lx % 2]
                                    zz[u] = zero_bits(s, indices, zr, blk[u], r % rb)
                                    ss[u] = scale_bits(s, indices, sc, blk[u], r % rb)
                            for u in T.unroll(batch):
                                if (t * batch + u) * 32 + lx < pieces:
                                    if blk[u] >= 0:
                                        _dequant_piece(dd, cw[u], zz[u], ss[u])
                                    else:
                                        for v in T.unroll(4):
                                            dd[v] = T.uint32(0)
                                    for v in T.vectorized(4):
                                        wd2[((r // br * nch + ((t * batch + u) * 32 + lx) // ppc) * th
                                             + offset(r % br, ((t * batch + u) * 32 + lx) % ppc * 8)) // 2
                                            + v] = dd[v]

    return dequant_pass


def launch(s: BSRShape, cfg: WgmmaConfig):
    """All of the kernel's launches as a macro ``run(x, indptr, indices, qw, sc, zr, y2, m)`` (y2: the output as
    fp16 pairs), so that a prefill PrimFunc can pick it by M (bsr_prefill_tiled's plan)."""
    assert supports(s, cfg), (s, cfg)
    n, k, dt = s.n, s.k, s.dtype
    br, bt, stages = cfg.rows, cfg.tokens, cfg.stages
    threads = 128 * cfg.warpgroups
    nch = k // CHUNK
    wsize, xsize = tile_halves(br), tile_halves(bt)
    stage = wsize + xsize
    xmap = T.Var("x_tensormap", ty=T.handle("tensormap").ty)  # both encoded on the host, per call
    ymap = T.Var("y_tensormap", ty=T.handle("tensormap").ty)
    ring = ring_bytes(cfg) // 2
    row_tiles = (n + br - 1) // br
    prepass = _dequant_pass(s, br, trigger=cfg.pdl)

    def mma_async(acc, da, db):
        return getattr(T.ptx.wgmma.mma_async.sync.aligned, f"m64n{br}k16").f32.f16.f16(
            *[acc[i] for i in range(br // 2)], da, db, T.ptx.pred(1), 1, 1, 0, 0)

    @T.macro
    def wait_bar(bars, i, parity, ready):
        ready[0] = T.uint32(0)
        while ready[0] == T.uint32(0):
            T.ptx.mbarrier.try_wait.parity.shared__cta.b64(ready[0], bars.ptr_to([i]), T.Cast("uint32", parity))

    @T.macro
    def multiply(sm, acc, da, db, wg, buf, base):
        T.ptx.wgmma.fence.sync.aligned()
        for ks in T.unroll(CHUNK // 16):  # 8-row groups 1024 bytes apart; a k-step starts 32 bytes further in
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(da[0]), sm.ptr_to(
                [base + buf * stage + wsize + wg * WG_TOKENS * CHUNK + ks * 16]), 1, ATOM // 8, 3)
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(db[0]), sm.ptr_to(
                [base + buf * stage + ks * 16]), 1, ATOM // 8, 3)
            mma_async(acc, da[0], db[0])
        T.ptx.wgmma.commit_group.sync.aligned()

    def half2(lo, hi):  # two fp32 results as one word of fp16 (lo in the low half)
        return (T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, lo)))
                | T.shift_left(T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, hi))), T.uint32(16)))

    @T.macro
    def store_tma(sm2, acc, t0, bx, ty, tx, tid, base):
        """The accumulators as fp16 into br / 64 swizzled [tokens, 64] boxes at the ring's aligned start, then out
        by TMA (rows past M and columns past N are clipped by the engine). The barrier first: the other
        warpgroup's last wgmma's may still read the stage there (the last chunk's, when the chunks are one more
        than a multiple of the stages; a plan run without it failed its check on 3072 x 576 at M = 1024)."""
        T.tvm_storage_sync("shared")
        if ty < threads // 32:
            for ni in T.unroll(br // 8):
                for h in T.unroll(2):
                    sm2[(base + ni // 8 * bt * 64 + offset(ty * 16 + tx // 4 + h * 8, ni % 8 * 8 + tx % 4 * 2))
                        // 2] = half2(acc[ni * 4 + h * 2], acc[ni * 4 + h * 2 + 1])
            T.ptx.fence.proxy.async_.shared__cta()  # written by this thread, read by the copy engine
        T.tvm_storage_sync("shared")
        if tid == 0:
            for j in T.unroll(br // 64):
                T.ptx["cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group"](
                    T.address_of(ymap), T.Cast("int32", bx * br + j * 64), T.Cast("int32", t0),
                    sm2.ptr_to([(base + j * bt * 64) // 2]))
            T.ptx["cp.async.bulk.commit_group"]()
            T.ptx["cp.async.bulk.wait_group.read"](0)  # shared memory must outlive the reads

    @T.macro
    def run(x, indptr, indices, qw, sc, zr, y2, m):
        wd = T.alloc_buffer((scratch_halves(s, cfg),), dt, scope="global")
        wd2 = T.decl_buffer((scratch_halves(s, cfg) // 2,), "uint32", data=wd.data)
        if cfg.ablate != "dequant":
            prepass(indptr, indices, qw, sc, zr, wd2)
        T.Bind(T.tvm_stack_alloca("tensormap", 1), var=xmap)  # x as (k, m) fp16: boxes of 64 columns x bt tokens
        T.tensormap_encode_tiled(xmap, x.data, k, m, k * 2, CHUNK, bt, 1, 1, descriptor_dtype=dt, rank=2, swizzle=3)
        T.Bind(T.tvm_stack_alloca("tensormap", 1), var=ymap)  # y as (n, m) fp16, the same boxes
        T.tensormap_encode_tiled(ymap, y2.data, n, m, n * 2, 64, bt, 1, 1, descriptor_dtype=dt, rank=2, swizzle=3)
        for bx in T.thread_binding(row_tiles, thread="blockIdx.y"):
            for by in T.thread_binding((m + bt - 1) // bt, thread="blockIdx.x"):  # token tiles first
                for ty in T.thread_binding(threads // 32 + 1, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 1):
                            sm = T.alloc_buffer((ring,), dt, scope="shared.dyn")
                            sm2 = T.decl_buffer((ring // 2,), "uint32", data=sm.data, scope="shared.dyn")
                            acc = T.alloc_buffer((br // 2,), "float32", scope="local")
                            da = T.alloc_buffer((1,), "uint64", scope="local")
                            db = T.alloc_buffer((1,), "uint64", scope="local")
                            tid = ty * 32 + tx
                            # the tile's first token: the last token tile is shifted back to end at token M (rows it
                            # shares with the tile before are computed and stored twice, the same values)
                            t0 = T.max(T.min(by * bt, m - bt), 0)
                            bars = T.alloc_buffer((2 * stages,), "uint64", scope="shared")  # full, empty
                            ready = T.alloc_buffer((1,), "uint32", scope="local")
                            # where the ring starts: 1024-byte aligned for the swizzle (dynamic shared memory
                            # is placed after the static, with no such alignment promised)
                            base = T.alloc_buffer((1,), "int32", scope="local")
                            base[0] = (ATOM - T.Cast("int32", T.call_extern(
                                "uint32", "__cvta_generic_to_shared", sm.ptr_to([0]))) // 2 % ATOM) % ATOM
                            for i in range(br // 2):
                                acc[i] = T.float32(0)
                            if tid == threads:
                                # TVM sizes shared memory by the highest element the kernel names, and the bulk
                                # copies name only where they start: name the last (a padding slot no copy or
                                # wgmma reaches), or the ring is cut short and the copies write past its end
                                sm[ring - 1] = T.Cast(dt, 0)
                                for i in range(stages):
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([i]), T.uint32(1))
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([stages + i]), T.uint32(threads))
                                T.ptx.fence.mbarrier_init.release.cluster()
                            T.tvm_storage_sync("shared")
                            if ty == threads // 32:  # the producer warp: one lane fills the ring
                                if tx == 0:
                                    if cfg.pdl:  # the scratch (and x) are written by the launches before
                                        T.ptx.griddepcontrol.wait()
                                    for ch in T.serial(nch):
                                        if ch >= stages:  # the warpgroups released chunk ch - stages
                                            wait_bar(bars, stages + ch % stages, (ch // stages - 1) % 2, ready)
                                        T.ptx.mbarrier.arrive.expect_tx.shared__cta.b64(
                                            bars.ptr_to([ch % stages]), T.uint32(2 * stage))
                                        T.ptx["cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                            sm.ptr_to([base[0] + ch % stages * stage]), wd.ptr_to([(bx * nch + ch) * wsize]),
                                            T.uint32(2 * wsize), bars.ptr_to([ch % stages]))
                                        T.ptx["cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                            sm.ptr_to([base[0] + ch % stages * stage + wsize]), T.address_of(xmap),
                                            T.Cast("int32", ch * CHUNK), T.Cast("int32", t0), bars.ptr_to([ch % stages]))
                            else:
                                for ch in T.serial(nch):
                                    wait_bar(bars, ch % stages, ch // stages % 2, ready)  # chunk ch has landed
                                    multiply(sm, acc, da, db, ty // 4, ch % stages, base[0])
                                    T.ptx.wgmma.wait_group.sync.aligned(1)
                                    if ch >= 1:  # chunk ch - 1's wgmma's are done: its stage may be refilled
                                        T.ptx.mbarrier.arrive.shared__cta.b64(bars.ptr_to([stages + (ch - 1) % stages]))
                                T.ptx.wgmma.wait_group.sync.aligned(0)
                            if cfg.ablate != "store":
                                store_tma(sm2, acc, t0, bx, ty, tx, tid, base[0])

    return run


def bsr_prefill_wgmma(s: BSRShape, cfg: WgmmaConfig = WgmmaConfig()):
    """The kernel alone, as a prefill PrimFunc (benchmarks/kernels.py): a plan of this one configuration."""
    from .bsr_prefill_tiled import bsr_prefill_tiled

    return bsr_prefill_tiled(s, ((None, cfg),))
