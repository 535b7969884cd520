"""BSR int4 prefill on Hopper (sm_90a), any block height: dequantize every weight once, then a pipelined wgmma GEMM.

Why (docs/perf.md): the tiled mma.sync GEMM (bsr_prefill_tiled) is bound by L1 traffic, most of it the
ldmatrix of its operands, so even without any weight work it takes 1.9x cuBLAS's time; and its wgmma variant
waited for each chunk's copies and wgmma's before the next, leaving the tensor cores idle. Here:

- a first launch writes the whole matrix as fp16 (zeros for pruned groups) into a scratch laid out tile by
  tile in wgmma's K-major core-matrix order, so each of the GEMM's weight tiles is a contiguous copy;
- the GEMM keeps ``stages`` chunks of 64 columns in a shared-memory ring, copied with ``cp.async`` stages - 2
  chunks ahead; each warpgroup issues its wgmma's m64n{rows}k16 on one chunk and, before the next chunk,
  waits only for the wgmma's of the chunk before (``wgmma.wait_group 1``), so copies, the barrier and the
  tensor cores overlap. One barrier per chunk: the buffer a chunk's copies overwrite was last read by the
  wgmma's of two chunks back, which every warpgroup had waited for before that barrier.

``producer=True`` replaces the copies and the barrier: the activations are laid out in the same tiles by one
more launch, and a ninth warp fills the ring with two bulk copies per stage, completing on the stage's "full"
mbarrier; the warpgroups wait on that and arrive on its "empty" mbarrier once their wgmma's of it are done.

``direct=True`` (BEST and SMALL) drops that launch: the producer takes each stage's activations straight from x
with the tensor copy engine (TMA), through a tensor map the host side encodes per call (x as K x M fp16, boxes of
64 columns x the token tile, 128-byte swizzled as they land). The last token tile is shifted back to end at token
M, so no box reaches past x (rows past M, which the engine zero-fills, made those boxes slow: 12288 x 4096 at M =
129 ran 0.90x). H100, tag "wgmma direct": 1.04-1.13x faster at M = 4096 (4096 x 14336: 773 -> 688 us),
1.00-1.12x at 512, and no M x K scratch. Copying them with cp.async from the producer warp's 32 lanes instead
was 1.04-1.5x slower (kernels_wgmma_direct_cpasync*_h100.json).

``tma_store=True`` (BEST and SMALL) sends the results out the same way: after a barrier (the other warpgroup's
last wgmma's may still read the ring's first stage) the warpgroups write fp16 into swizzled [tokens, 64] boxes
at the ring's start and one thread stores them with bulk tensor copies through a tensor map of y. The 4-byte
stores from the fragments it replaces took 4-24% of the time at M = 4096 (an ablation); as compiled, R = 1 at
M = 4096 now runs 1.04-1.14x cuBLAS's time on an H100 (tag "wgmma store", "plan sm90a").

``pdl=True`` (BEST and SMALL) makes the GEMM a programmatic dependent launch of the dequantizing launch, whose
thread blocks let it launch as soon as all of them have started: the GEMM's blocks set up beside the last ones and
only the producer waits (``griddepcontrol.wait``) before its first copy. H100, tag "wgmma pdl": 1.06-1.15x faster
on SmolLM2's matrices, 1.00-1.03x (geometric means by M) on LLaMA's.

``swizzle=True`` lays both tiles out in wgmma's 128-byte swizzled K-major layout: a row's 64 columns of a chunk
are one 128-byte line, so the dequantizing launch writes whole lines (with core matrices, a row's 16-byte
pieces were 4 KB apart and L2 re-read partly written sectors from DRAM).

Measured (docs/perf.md), 256 x 128 tiles, 4 stages, token tiles first: on an H200, R = 1 at M = 4096 in
2.2-2.3x cuBLAS's time with cp.async, 1.6-2.0x with the producer warp; on an H100 with the swizzle 1.22-1.36x
(1.59-2.73x faster than without) and 2.00-2.75x at M = 512, 1.09-2.02x the mma.sync plan's speed from 256
tokens; R = 16 matrices, dequantized to the same dense tiles (no block skipping), 1.22-1.33x at M = 4096, 1.94-2.07x
faster than the tiled kernel that skips pruned blocks. So in builds whose every arch is sm_90a it is the prefill
plan's entry above 128 tokens (bsr_prefill_tiled.WGMMA_ABOVE, tiles by ``by_tokens``); it needs N x K x 2 bytes of
scratch per call.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .common import BSRShape, slab  # the same K-major core-matrix tiles as bsr_prefill_tiled's wgmma variant

CHUNK = 64  # input columns per stage (the default)
WG_TOKENS = 64  # tokens per warpgroup (wgmma's M)


@dataclass(frozen=True)
class WgmmaConfig:
    rows: int = 128  # weight rows per thread block (wgmma's N)
    warpgroups: int = 2  # each 64 tokens
    stages: int = 4  # chunks in the shared-memory ring (copies run stages - 2 chunks ahead)
    chunk: int = CHUNK  # input columns per stage: smaller chunks, more of them in flight in the same memory
    tokens_first: bool = False  # thread blocks ordered token tile first: those running at once share weight
    # tiles in L2 (and the activations stay there), instead of sweeping all the weights every few token tiles
    producer: bool = False  # a producer warp fills the ring with bulk copies (the activations too are laid
    # out in tiles first), signalling per-stage mbarriers; the warpgroups release a stage when its wgmma's are
    # done: no barrier of the whole thread block, no copies issued by the warpgroups
    swizzle: bool = False  # (producer only) tiles in wgmma's 128-byte swizzled K-major layout: a row's 64
    # columns are one 128-byte line (16-byte pieces permuted by row), so the dequantizing launch writes whole
    # lines, and wgmma reads the ring in its preferred layout
    direct: bool = False  # (swizzle only) the producer copies the activations straight from x with the tensor
    # copy engine (TMA: a tensor map encoded on the host per call, 64 columns x the token tile per box, swizzled
    # as they land): no launch laying them out in tiles first, and no M x K scratch
    staged_store: bool = False  # the epilogue goes through shared memory: the warpgroups write their fp16 results
    # into a padded tile there, then each stores whole 16-byte pieces of output rows (a warp one 512-byte row)
    # instead of 4-byte pieces of 8 rows (ablation: the direct stores cost 4-24% of BEST's time at M = 4096)
    tma_store: bool = False  # (direct only) the staged tile leaves by TMA: swizzled 64-column boxes, one thread
    # issues the bulk tensor stores (a second tensor map, of y) and waits only until they have read shared memory
    ablate: str = ""  # measurement only, wrong results: "store" leaves out the epilogue, "dequant" the
    # dequantizing launch (benchmarks/kernels.py times these unchecked, tag "wgmma ablation")
    pdl: bool = False  # (producer only) the GEMM is a programmatic dependent launch of the dequantizing launch, which
    # lets it launch once all of its thread blocks have started: the GEMM's blocks start (barriers, tensor maps) beside
    # the last ones and wait (griddepcontrol.wait) only before the producer's first copy
    blocks_per_sm: int = 1  # thread blocks an SM holds at once (registers and shared memory allowing): another's
    # main loop runs while one stores its tile

    @property
    def tokens(self) -> int:
        return WG_TOKENS * self.warpgroups

    @property
    def key(self) -> str:
        return (f"wg{self.rows}x{self.tokens}p{self.stages}" + (f"c{self.chunk}" if self.chunk != CHUNK else "")
                + ("t" if self.tokens_first else "") + ("w" if self.producer else "") + ("s" if self.swizzle else "")
                + ("d" if self.direct else "")
                + (f"b{self.blocks_per_sm}" if self.blocks_per_sm > 1 else "")
                + ("e" if self.staged_store else "") + ("m" if self.tma_store else "") + ("g" if self.pdl else "")
                + (f"_no_{self.ablate}" if self.ablate else ""))


SWEEP = [WgmmaConfig(), WgmmaConfig(stages=3), WgmmaConfig(256, 2, 3), WgmmaConfig(128, 1, 4),
         WgmmaConfig(256, 2, 3, tokens_first=True), WgmmaConfig(256, 2, 4, tokens_first=True),
         WgmmaConfig(128, 2, 4, tokens_first=True), WgmmaConfig(256, 2, 8, 32, True), WgmmaConfig(256, 2, 6, 32, True),
         WgmmaConfig(256, 2, 4, tokens_first=True, producer=True), WgmmaConfig(256, 2, 3, tokens_first=True, producer=True),
         WgmmaConfig(256, 2, 4, tokens_first=True, producer=True, swizzle=True)]
_SW = dict(tokens_first=True, producer=True, swizzle=True)
# fastest at M = 512 .. 4096 on an H100 (docs/perf.md); the activations by TMA straight from x: 1.04-1.13x faster
# at M = 4096 than laid out in tiles by a launch of their own (tag "wgmma direct"); the epilogue through shared
# memory and out by TMA: 1.03-1.12x faster at M = 4096 than 4-byte stores from the fragments (tag "wgmma store");
# the GEMM a dependent launch of the dequantizing one: 1.06-1.15x faster on SmolLM2's matrices, 1.00-1.03x (geometric
# means) on LLaMA's (tag "wgmma pdl")
BEST = WgmmaConfig(256, 2, 4, **_SW, direct=True, tma_store=True, pdl=True)
SMALL = WgmmaConfig(128, 2, 4, **_SW, direct=True, tma_store=True, pdl=True)  # half the rows: twice the blocks (by_tokens)
SWEEP_SWIZZLED = [WgmmaConfig(256, 2, 4, **_SW), WgmmaConfig(256, 2, 3, **_SW), WgmmaConfig(128, 2, 4, **_SW),
                  WgmmaConfig(128, 2, 3, **_SW),
                  WgmmaConfig(128, 2, 3, **_SW, blocks_per_sm=2), WgmmaConfig(128, 1, 4, **_SW),
                  WgmmaConfig(128, 1, 3, **_SW, blocks_per_sm=2)]
SMS = 132  # SMs of an H100 / H200 SXM, the sm_90a parts this kernel is tuned on
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


ATOM = 512  # fp16 of a 128-byte swizzle atom: 8 rows x 64 columns


def tile_halves(rows: int, chunk: int = CHUNK, swizzle: bool = False) -> int:
    return rows * chunk if swizzle else chunk // 8 * slab(rows)


def offset(r, kk, rows: int, swizzle: bool = False):
    """fp16 offset of (row r, column kk) in a rows x chunk tile: K-major core matrices (8 rows x 16 bytes), or
    with ``swizzle`` 8-row atoms of 128-byte rows whose 16-byte pieces are permuted by the row (piece p of row
    r at p ^ r % 8: what the descriptor's 128-byte swizzle mode reads, from a 1024-byte aligned tile)."""
    if swizzle:
        return r // 8 * ATOM + r % 8 * 64 + (kk // 8 ^ r % 8) * 8 + kk % 8
    return kk // 8 * slab(rows) + r // 8 * 64 + r % 8 * 8 + kk % 8


def supports(s: BSRShape, cfg: WgmmaConfig = WgmmaConfig()) -> bool:
    return (s.rows in (1, 4, 8, 16) and s.n % s.rows == 0 and s.bits == 4 and s.group == 16 and s.interleaved
            and s.dtype == "float16" and s.k % cfg.chunk == 0 and cfg.chunk in (32, 64) and cfg.rows in (64, 128, 256) and cfg.stages >= 3
            and (not cfg.swizzle or (cfg.producer and cfg.chunk == 64)) and (not cfg.direct or cfg.swizzle)
            and (not cfg.tma_store or (cfg.direct and cfg.rows % 64 == 0)) and (not cfg.pdl or cfg.producer))


def scratch_halves(s: BSRShape, cfg: WgmmaConfig) -> int:
    return -(-s.n // cfg.rows) * (s.k // cfg.chunk) * tile_halves(cfg.rows, cfg.chunk, cfg.swizzle)


@T.macro
def _dequant_piece(dd, word, z, scl):
    """8 codes (half a group, interleaved order, one word) as (code - zero) * scale in 4 fp16 pairs, dd[0..3] (z,
    scl: the zero point and the scale's bits, as uint32): one 16-byte piece of the dequantized row."""
    for t in T.unroll(4):
        T.ptx.sub.f16x2(dd[t], ((word >> T.uint32(t * 4)) & T.uint32(0x000F000F))
                        | T.uint32(0x64006400), (T.uint32(0x6400) + z) * T.uint32(0x10001))
        T.ptx.mul.rn.f16x2(dd[t], dd[t], scl * T.uint32(0x10001))


def _dequant_pass(s: BSRShape, br: int, ck: int, sw: bool, batch: int = 4, trigger: bool = False):
    """The first launch: a warp per weight row marks in shared memory which block of its block row holds each
    column group, then writes the row's fp16 tiles a 16-byte piece (8 columns, zeros for a pruned group) per
    lane, lanes 8c .. 8c + 7 chunk c's pieces: with the swizzle each store instruction writes four whole 128-byte
    lines. Each lane loads ``batch`` trips' codes, scales and zero points before any of their arithmetic. H100
    (docs/perf.md): 1.06x faster at M = 512 and 1.015x at 4096 than a 16-column group per lane (two stores of
    half lines each), the pass itself 12288 x 4096 about 65 -> 52 us at M = 512."""
    n, k, group, rb = s.n, s.k, s.group, s.rows
    kg, nch, wpb = k // group, k // ck, 8
    gpl = -(-kg // 32)
    pieces = kg * 2  # 8-column pieces of a row
    trips = -(-pieces // (32 * batch))
    ppc = ck // 8
    th = tile_halves(br, ck, sw)

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
                    if trigger:  # (the GEMM after it is a dependent launch: it may launch once every block started)
                        T.ptx.griddepcontrol.launch_dependents()
                    for g0 in range(gpl):
                        if g0 * 32 + lx < kg:
                            slot[wy * kg + g0 * 32 + lx] = -1
                    T.tvm_storage_sync("shared")
                    if r < n:
                        for i in range((indptr[r // rb + 1] - indptr[r // rb] + 31) // 32):
                            if indptr[r // rb] + i * 32 + lx < indptr[r // rb + 1]:
                                slot[wy * kg + T.Cast("int32", indices[indptr[r // rb] + i * 32 + lx])] = (
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
                                    zz[u] = T.Cast("uint32", zr[blk[u], r % rb])
                                    ss[u] = T.Cast("uint32", T.reinterpret("uint16", sc[blk[u], r % rb]))
                            for u in T.unroll(batch):
                                if (t * batch + u) * 32 + lx < pieces:
                                    if blk[u] >= 0:
                                        _dequant_piece(dd, cw[u], zz[u], ss[u])
                                    else:
                                        for v in T.unroll(4):
                                            dd[v] = T.uint32(0)
                                    for v in T.vectorized(4):
                                        wd2[((r // br * nch + ((t * batch + u) * 32 + lx) // ppc) * th
                                             + offset(r % br, ((t * batch + u) * 32 + lx) % ppc * 8, br, sw)) // 2
                                            + v] = dd[v]

    return dequant_pass


def launch(s: BSRShape, cfg: WgmmaConfig):
    """All of the kernel's launches as a macro ``run(x, indptr, indices, qw, sc, zr, y2, m)`` (y2: the output as
    fp16 pairs), so that a prefill PrimFunc can pick it by M (bsr_prefill_tiled's plan)."""
    assert supports(s, cfg), (s, cfg)
    n, k, dt = s.n, s.k, s.dtype
    br, bt, stages = cfg.rows, cfg.tokens, cfg.stages
    threads = 128 * cfg.warpgroups
    ck = cfg.chunk
    nch = k // ck
    sw = cfg.swizzle
    wsize, xsize = tile_halves(br, ck, sw), tile_halves(bt, ck, sw)
    stage = wsize + xsize
    ws = cfg.producer
    direct = cfg.direct
    xmap = T.Var("x_tensormap", ty=T.handle("tensormap").ty)
    ymap = T.Var("y_tensormap", ty=T.handle("tensormap").ty)  # (direct: encoded on the host, per call)
    # a stage's two bulk copies: each tile but its last slab's 16 bytes of padding, which nothing writes (TVM
    # sizes the activation tiles' buffer by what is written: the full tile read past its end)
    wcopy, xcopy = (2 * wsize, 2 * xsize) if sw else (2 * (wsize - 8), 2 * (xsize - 8))  # (direct: the full box)
    ring = stages * stage + (ATOM if sw else 0)  # swizzled: room to start the ring on a 1024-byte boundary
    wcopies = br * ck // 8 // threads  # 16-byte cp.async per thread per chunk
    xcopies = bt * ck // 8 // threads
    pieces = ck // 8  # 16-byte pieces of a token's chunk
    row_tiles = (n + br - 1) // br
    ahead = stages - 2  # chunks in flight beyond the one being multiplied
    prepass = _dequant_pass(s, br, ck, sw, trigger=cfg.pdl)

    def mma_async(acc, da, db):
        return getattr(T.ptx.wgmma.mma_async.sync.aligned, f"m64n{br}k16").f32.f16.f16(
            *[acc[i] for i in range(br // 2)], da, db, T.ptx.pred(1), 1, 1, 0, 0)

    @T.macro
    def load(x, wd, sm, m, by, bx, tid, ch, buf):
        """Chunk ch of the weight tile (a contiguous run of the scratch) and of the activations."""
        for c in T.unroll(wcopies):  # slab (c * threads + tid) // br, core-matrix row (c * threads + tid) % br
            T.ptx["cp.async.cg.shared.global"](
                sm.ptr_to([buf * stage + (c * threads + tid) // br * slab(br) + (c * threads + tid) % br * 8]),
                wd.ptr_to([(bx * nch + ch) * wsize + (c * threads + tid) // br * slab(br)
                           + (c * threads + tid) % br * 8]), 16)
        for c in T.unroll(xcopies):  # pieces lanes read one token's chunk
            T.ptx["cp.async.cg.shared.global"](
                sm.ptr_to([buf * stage + wsize + offset((c * threads + tid) // pieces, (c * threads + tid) % pieces * 8,
                                                        bt)]),
                x.ptr_to([T.min(by * bt + (c * threads + tid) // pieces, m - 1), ch * ck + (c * threads + tid) % pieces * 8]),
                16)
        T.ptx["cp.async.commit_group"]()

    @T.macro
    def relayout_x(x, xt, m):
        """Producer variant: the activations in the same tiles as the weights ([token tile][chunk][tile]), so
        that a stage's activations are one bulk copy too (rows past M repeat the last token, never stored)."""
        for bi in T.thread_binding(((m + bt - 1) // bt * bt * (k // 8) + 255) // 256, thread="blockIdx.x"):
            for ti in T.thread_binding(256, thread="threadIdx.x"):
                if bi * 256 + ti < (m + bt - 1) // bt * bt * (k // 8):
                    for v in T.vectorized(8):  # rows past M: zeros (reading row M - 1 for all queues on its line)
                        xt[((bi * 256 + ti) // (k // 8) // bt * nch + (bi * 256 + ti) % (k // 8) * 8 // ck) * xsize
                           + offset((bi * 256 + ti) // (k // 8) % bt, (bi * 256 + ti) % (k // 8) * 8 % ck, bt, sw) + v] = (
                            T.if_then_else((bi * 256 + ti) // (k // 8) < m, x[
                                T.min((bi * 256 + ti) // (k // 8), m - 1), (bi * 256 + ti) % (k // 8) * 8 + v], T.Cast(dt, 0)))

    @T.macro
    def wait_bar(bars, i, parity, ready):
        ready[0] = T.uint32(0)
        while ready[0] == T.uint32(0):
            T.ptx.mbarrier.try_wait.parity.shared__cta.b64(ready[0], bars.ptr_to([i]), T.Cast("uint32", parity))

    @T.macro
    def multiply(sm, acc, da, db, wg, buf, base):
        T.ptx.wgmma.fence.sync.aligned()
        for ks in T.unroll(ck // 16):
            if sw:  # 8-row groups 1024 bytes apart; a k-step starts 32 bytes further into the swizzled rows
                T.cuda.wgmma.encode_matrix_descriptor(T.address_of(da[0]), sm.ptr_to(
                    [base + buf * stage + wsize + wg * WG_TOKENS * ck + ks * 16]), 1, ATOM // 8, 3)
                T.cuda.wgmma.encode_matrix_descriptor(T.address_of(db[0]), sm.ptr_to(
                    [base + buf * stage + ks * 16]), 1, ATOM // 8, 3)
            else:
                T.cuda.wgmma.encode_matrix_descriptor(T.address_of(da[0]), sm.ptr_to(
                    [buf * stage + wsize + offset(wg * WG_TOKENS, ks * 16, bt)]), slab(bt) // 8, 8, 0)  # 16-byte units
                T.cuda.wgmma.encode_matrix_descriptor(T.address_of(db[0]), sm.ptr_to(
                    [buf * stage + offset(0, ks * 16, br)]), slab(br) // 8, 8, 0)
            mma_async(acc, da[0], db[0])
        T.ptx.wgmma.commit_group.sync.aligned()

    def half2(lo, hi):  # two fp32 results as one word of fp16 (lo in the low half): a 4-byte store
        return (T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, lo)))
                | T.shift_left(T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, hi))), T.uint32(16)))

    @T.macro
    def store_tile(y2, acc, m, t0, bx, ty, tx):
        """The warpgroups' accumulators (tokens from t0) to the output (the producer's threads store nothing)."""
        for ni in T.unroll(br // 8):
            for h in T.unroll(2):  # rows 2t, 2t + 1 of token g + 8h: one 4-byte store
                if (t0 + ty * 16 + tx // 4 + h * 8 < m and ty < threads // 32
                        and bx * br + ni * 8 + tx % 4 * 2 < n):
                    y2[((t0 + ty * 16 + tx // 4 + h * 8) * n + bx * br + ni * 8 + tx % 4 * 2) // 2] = half2(
                        acc[ni * 4 + h * 2], acc[ni * 4 + h * 2 + 1])

    srow = br + 8  # fp16 per staged output row: 16 bytes of padding put a fragment's 8 rows in distinct banks
    assert bt * srow <= ring and (bt * br // 8) % threads == 0

    @T.macro
    def store_staged(y2, sm2, acc, m, t0, bx, ty, tx, tid):
        """The warpgroups' accumulators to a [tokens, rows] fp16 tile at the ring's start, then rows to the output,
        a 16-byte piece per thread and step. The barrier first: the other warpgroup's last wgmma's may still read
        the stage there (the last chunk's, when the chunks are one more than a multiple of the stages)."""
        T.tvm_storage_sync("shared")
        if ty < threads // 32:
            for ni in T.unroll(br // 8):
                for h in T.unroll(2):
                    sm2[((ty * 16 + tx // 4 + h * 8) * srow + ni * 8 + tx % 4 * 2) // 2] = half2(acc[ni * 4 + h * 2], acc[ni * 4 + h * 2 + 1])
        T.tvm_storage_sync("shared")
        if ty < threads // 32:
            for c in T.unroll(bt * br // 8 // threads):
                if (t0 + (c * threads + tid) // (br // 8) < m
                        and bx * br + (c * threads + tid) % (br // 8) * 8 < n):
                    for v in T.vectorized(4):
                        y2[((t0 + (c * threads + tid) // (br // 8)) * n + bx * br
                            + (c * threads + tid) % (br // 8) * 8) // 2 + v] = sm2[
                            ((c * threads + tid) // (br // 8) * srow + (c * threads + tid) % (br // 8) * 8) // 2 + v]

    @T.macro
    def store_tma(sm2, acc, t0, bx, ty, tx, tid, base):
        """The accumulators as fp16 into br / 64 swizzled [tokens, 64] boxes at the ring's aligned start, then out
        by TMA (rows past M and columns past N are clipped by the engine). The barrier first, as in store_staged."""
        T.tvm_storage_sync("shared")
        if ty < threads // 32:
            for ni in T.unroll(br // 8):
                for h in T.unroll(2):
                    sm2[(base + ni // 8 * bt * 64 + offset(ty * 16 + tx // 4 + h * 8, ni % 8 * 8 + tx % 4 * 2, bt, True))
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
        xt = T.alloc_buffer(((m + bt - 1) // bt * nch * xsize if ws and not direct else 1,), dt, scope="global")
        if cfg.ablate != "dequant":
            prepass(indptr, indices, qw, sc, zr, wd2)
        if ws and not direct:
            relayout_x(x, xt, m)
        if direct:  # x as (k, m) fp16, boxes of 64 columns x bt tokens, 128-byte swizzle, zeros past M
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=xmap)
            T.tensormap_encode_tiled(xmap, x.data, k, m, k * 2, ck, bt, 1, 1, descriptor_dtype=dt, rank=2,
                                     swizzle=3)
        if cfg.tma_store:  # y as (n, m) fp16, the same boxes
            T.Bind(T.tvm_stack_alloca("tensormap", 1), var=ymap)
            T.tensormap_encode_tiled(ymap, y2.data, n, m, n * 2, 64, bt, 1, 1, descriptor_dtype=dt, rank=2,
                                     swizzle=3)
        for bx in T.thread_binding(row_tiles, thread=f"blockIdx.{'y' if cfg.tokens_first else 'x'}"):
            for by in T.thread_binding((m + bt - 1) // bt, thread=f"blockIdx.{'x' if cfg.tokens_first else 'y'}"):
                for ty in T.thread_binding(threads // 32 + ws, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", cfg.blocks_per_sm):
                            sm = T.alloc_buffer((ring,), dt, scope="shared.dyn")
                            sm2 = T.decl_buffer((ring // 2,), "uint32", data=sm.data, scope="shared.dyn")
                            acc = T.alloc_buffer((br // 2,), "float32", scope="local")
                            da = T.alloc_buffer((1,), "uint64", scope="local")
                            db = T.alloc_buffer((1,), "uint64", scope="local")
                            tid = ty * 32 + tx
                            # the tile's first token: direct copies shift the last token tile back to end at token
                            # M (rows it shares with the tile before are computed and stored twice, the same
                            # values), so its box holds no rows past M, which the copy engine fills slowly
                            t0 = T.max(T.min(by * bt, m - bt), 0) if direct else by * bt
                            bars = T.alloc_buffer((2 * stages if ws else 1,), "uint64", scope="shared")  # full, empty
                            ready = T.alloc_buffer((1,), "uint32", scope="local")
                            # where the ring starts: 1024-byte aligned for the swizzle (dynamic shared memory
                            # is placed after the static, with no such alignment promised)
                            base = T.alloc_buffer((1,), "int32", scope="local")
                            base[0] = 0
                            if sw:
                                base[0] = (ATOM - T.Cast("int32", T.call_extern(
                                    "uint32", "__cvta_generic_to_shared", sm.ptr_to([0]))) // 2 % ATOM) % ATOM
                            for i in range(br // 2):
                                acc[i] = T.float32(0)
                            if ws:
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
                                                bars.ptr_to([ch % stages]), T.uint32(wcopy + xcopy))
                                            T.ptx["cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                                sm.ptr_to([base[0] + ch % stages * stage]), wd.ptr_to([(bx * nch + ch) * wsize]),
                                                T.uint32(wcopy), bars.ptr_to([ch % stages]))
                                            if direct:  # the token tile's chunk from x, swizzled as it lands (zeros past M)
                                                T.ptx["cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                                    sm.ptr_to([base[0] + ch % stages * stage + wsize]), T.address_of(xmap),
                                                    T.Cast("int32", ch * ck), T.Cast("int32", t0), bars.ptr_to([ch % stages]))
                                            else:
                                                T.ptx["cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                                    sm.ptr_to([base[0] + ch % stages * stage + wsize]),
                                                    xt.ptr_to([(by * nch + ch) * xsize]), T.uint32(xcopy), bars.ptr_to([ch % stages]))
                                else:
                                    for ch in T.serial(nch):
                                        wait_bar(bars, ch % stages, ch // stages % 2, ready)  # chunk ch has landed
                                        multiply(sm, acc, da, db, ty // 4, ch % stages, base[0])
                                        T.ptx.wgmma.wait_group.sync.aligned(1)
                                        if ch >= 1:  # chunk ch - 1's wgmma's are done: its stage may be refilled
                                            T.ptx.mbarrier.arrive.shared__cta.b64(bars.ptr_to([stages + (ch - 1) % stages]))
                                    T.ptx.wgmma.wait_group.sync.aligned(0)
                            else:
                                for p in range(ahead):
                                    load(x, wd, sm, m, by, bx, tid, p, p)
                                for ch in T.serial(nch):
                                    T.ptx["cp.async.wait_group"](ahead - 1)  # chunk ch has landed
                                    T.ptx.fence.proxy.async_.shared__cta()  # visible to wgmma's async proxy
                                    T.tvm_storage_sync("shared")
                                    # its buffer was last read by chunk ch - 2's wgmma's, waited for by every
                                    # warpgroup before this barrier (past the last chunk: clamped, never read)
                                    load(x, wd, sm, m, by, bx, tid, T.min(ch + ahead, nch - 1), (ch + ahead) % stages)
                                    multiply(sm, acc, da, db, ty // 4, ch % stages, 0)
                                    T.ptx.wgmma.wait_group.sync.aligned(1)
                                T.ptx.wgmma.wait_group.sync.aligned(0)
                            if cfg.ablate != "store" and cfg.tma_store:
                                store_tma(sm2, acc, t0, bx, ty, tx, tid, base[0])
                            elif cfg.ablate != "store" and cfg.staged_store:
                                store_staged(y2, sm2, acc, m, t0, bx, ty, tx, tid)
                            elif cfg.ablate != "store":
                                store_tile(y2, acc, m, t0, bx, ty, tx)

    return run


def bsr_prefill_wgmma(s: BSRShape, cfg: WgmmaConfig = WgmmaConfig()):
    """The kernel alone, as a prefill PrimFunc (benchmarks/kernels.py): a plan of this one configuration."""
    from .bsr_prefill_tiled import bsr_prefill_tiled

    return bsr_prefill_tiled(s, ((None, cfg),))
