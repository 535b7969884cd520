"""BSR int4 prefill as a tiled tensor-core GEMM (``mma.sync.m16n8k16``, fp16 -> fp32), any block height.

Why not build A fragments per warp from the packed codes (bsr_prefill's dense walk): a 16-row warp tile
gets no reuse of its activation fragments (256 bytes of ldmatrix per mma), and its lanes load codes,
scales and zero points from 8 different rows per instruction: Nsight Compute put that kernel at 91% of L1
throughput with the tensor pipe at 28%. Here a thread block owns ``rows`` weight rows x ``tokens`` tokens
and walks K ``chunk`` columns at a time, double-buffered in shared memory:

- the activations of the next chunk are copied with ``cp.async`` (no registers, no wait) while the
  current chunk computes;
- the weights of the next chunk are loaded into registers at the same time, coalesced: a row's kept
  blocks of a chunk are consecutive in memory, so lane j of the row's chunk / G lanes loads the row's
  block cur + j (its column group came from the index loads issued one chunk earlier), and the lanes OR
  their groups into the row's bitmask with warp shuffles. Loading a (row, column group) per lane instead
  left only 3 of every 32 bytes a sector moves in use (that first version ran 0.4-1.4x as fast as the
  per-warp kernel, slower at M = 16; this one, with the plans below, 1.1-6.4x at M = 16..4096);
- after the current chunk's mma's each lane dequantizes its block (one LOP3, one subtract and one multiply
  per fp16 pair) into the row of a dense fp16 tile, and writes zeros over column group j if the row
  does not keep it, so the row's lanes fill its whole chunk;
- every warp then runs a plain GEMM tile of (rows / row_warps) weight rows x (tokens / token_warps)
  tokens from shared memory with ldmatrix: the tokens are the mma's M and the weight rows its N, so each
  activation fragment serves rows / row_warps / 8 mma's and each weight fragment tokens / token_warps / 16.

One barrier per chunk: the buffer a chunk writes was last read by the previous chunk's mma's, which every
warp finished before that chunk's barrier. M is known only at run time, so one PrimFunc holds a launch per
configuration of a plan and its host side picks one by M (small M wastes less of a short token tile).
Where N makes few row tiles, thread blocks also split K (``splits``): each writes fp32 partial sums to a
workspace and a second launch adds them, so small-M grids fill the GPU (up to 2.9x at M <= 128).
With R = 16 a block is two of a warp's 8-row mma tiles, so the warp skips the ldmatrix and mma's of every
pruned block (the rows' bitmasks go through shared memory) and no zeros are written: time follows the
kept blocks (sublinearly: staging and dequantizing cost the same), and at 50% pruned R = 16 beats
bsr_prefill's per-warp walk over kept blocks on 27 of 28 shapes x M (0.91-2.2x). With R < 16 the
rows of a tile keep different column groups, so the tensor-core work is dense and only the bytes are
sparse. Needs 4-bit codes in the interleaved order, G a multiple of 16, fp16 and K a multiple of the
chunk; bsr_prefill covers the rest.

In the SASS of the 128 x 128 plan, ptxas moves the second block's weight loads into the branch of store_w
that uses them, after every mma of the chunk. Loads pinned ahead of the mma's (inline PTX, every block
dequantized outside the branch) were measured on an H100 and were not faster (0.97-1.10x the plan's time by
M, docs/perf.md), so the loads stay plain.

``wgmma=True`` (sm_90a only; R < 16) keeps the same loads but lays both tiles out as wgmma's K-major core
matrices and has each warpgroup run m64n{rows}k16 straight from shared memory. Measured on an H100 it is
slower than mma.sync at every M, and overlapping it with the next chunk's dequantization changed nothing:
taking the weight stage out (``ablate``, a measurement knob whose results are wrong) halves the time, so
the weight path, not the tensor cores, is what a faster kernel must fix (docs/perf.md). No plan uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm.script import tirx as T

from . import bsr_prefill_wgmma
from .common import BSRShape, bsr_func, column, scale_bits, slab, zero_bits

PAD = 8  # fp16 of padding per shared row: rows 16 B off the bank period, so ldmatrix is conflict-free
SMEM_BYTES = 48 * 1024  # beyond this a thread block's shared memory is dynamic (opt-in)


@dataclass(frozen=True)
class TiledConfig:
    rows: int = 128  # weight rows (output features) per thread block
    tokens: int = 128  # tokens per thread block
    row_warps: int = 2  # warps along the rows; the thread block has row_warps * token_warps warps
    token_warps: int = 4
    chunk: int = 64  # input columns per pipeline stage
    blocks_per_sm: int = 2  # asked of ptxas (__launch_bounds__): caps registers at 64K / (threads x this)
    wgmma: bool = False  # sm_90a: each warpgroup (4 warps along the tokens) runs m64n{rows}k16 from shared memory
    splits: int = 1  # thread blocks along K, each summing its share into an fp32 workspace (small grids)
    ablate: str = ""  # measurement only, wrong results: "weights" leaves out loading and dequantizing the
    # weights, "activations" their copies (benchmarks/kernels.py times these unchecked, tag "ablation")

    @property
    def key(self) -> str:
        return (f"t{self.rows}x{self.tokens}w{self.row_warps}x{self.token_warps}c{self.chunk}b{self.blocks_per_sm}"
                + ("g" if self.wgmma else "") + (f"s{self.splits}" if self.splits > 1 else "")
                + (f"_no_{self.ablate}" if self.ablate else ""))

    @property
    def threads(self) -> int:
        return 32 * self.row_warps * self.token_warps

    def tile_halves(self, rows: int) -> int:
        """fp16 of one stage of a rows x chunk tile: padded rows, or wgmma's core matrices (8 rows x 16 bytes,
        K-major) with 16 bytes between 8-column slabs, so a row's column groups land in different banks."""
        return self.chunk // 8 * slab(rows) if self.wgmma else rows * (self.chunk + PAD)

    def smem_bytes(self) -> int:
        return 2 * (self.tile_halves(self.rows) + self.tile_halves(self.tokens)) * 2


DEFAULT = TiledConfig()
SWEEP = [TiledConfig(128, 128, 4, 2), TiledConfig(128, 128, 2, 2), TiledConfig(128, 64, 4, 2),
         TiledConfig(64, 64, 2, 2, blocks_per_sm=4), TiledConfig(128, 32, 4, 2), TiledConfig(64, 32, 2, 2, blocks_per_sm=4),
         TiledConfig(chunk=128, blocks_per_sm=1)]
SWEEP_WGMMA = [TiledConfig(128, 128, 1, 8, wgmma=True), TiledConfig(256, 128, 1, 8, blocks_per_sm=1, wgmma=True),
               TiledConfig(128, 64, 1, 4, blocks_per_sm=3, wgmma=True), TiledConfig(256, 64, 1, 4, wgmma=True),
               TiledConfig(128, 256, 1, 16, blocks_per_sm=1, wgmma=True)]
# Chosen by M at run time, and by the number of 128-row tiles N makes (benchmarks/kernels.py, tags "tiled" and
# "split-k": all seven shapes at M = 16 .. 4096 on an H100). Short token tiles waste less at small M; where a
# grid of few row tiles would leave SMs idle, smaller tiles and thread blocks along K (split-K) fill them:
# 4096 x 14336 at M = 16 runs 74 us with 64 x 32 tiles in 4 splits, 219 without; 22016 x 4096 gains nothing
# from splits and at M = 128 runs 145 us with 128 x 128 tiles, 238 with 64 x 64.
SMALL, LARGE = TiledConfig(64, 32, 2, 2, blocks_per_sm=4), TiledConfig(128, 32, 4, 2)
MID = TiledConfig(64, 64, 2, 2, blocks_per_sm=4)
TUNED = {"few rows": ((32, replace(SMALL, splits=4)), (128, replace(MID, splits=4)), (256, MID), (None, DEFAULT)),
         "some rows": ((32, replace(LARGE, splits=2)), (64, replace(MID, splits=2)), (None, DEFAULT)),
         "many rows": ((32, LARGE), (64, MID), (None, DEFAULT))}


# sm_90a builds (every arch of the build): above this many tokens prefill runs bsr_prefill_wgmma's producer-warp
# kernel (its tiles by bsr_prefill_wgmma.by_tokens). On an H100 (tag "wgmma crossover") the swizzled kernel ran
# 1.09-1.23x the plan's speed at M = 256 and 1.41-2.02x at 512 - 1024 on all seven shapes, 0.58-0.94x at 128;
# for R = 16 (tag "plan sm90a r16") 1.44-2.25x at 129, 0.92-1.23x at 256, 1.23-1.73x at 512, 1.94-2.07x at 4096.
WGMMA_ABOVE = 128


def _past_128(s: BSRShape, tiles: int):
    """129-256 tokens on 32-63 row tiles: 128 x 128 tiles in K-splits that fill about one wave (4 for 32 row
    tiles, else 2), where K's chunks divide; MID otherwise. H100, tag "split-k 256", M = 192 / 256:
    4096 x 4096 / 11008 / 14336 ran 1.24-1.79x faster with 4 splits than MID, 6144 x 4096 1.03-1.08x with 2
    (4 splits there: 1.45 waves, slower than MID)."""
    for splits in (4, 2) if tiles <= 32 else (2,):
        if (s.k // DEFAULT.chunk) % splits == 0:
            return replace(DEFAULT, splits=splits)
    return MID


def tuned(s: BSRShape, wgmma: bool = False) -> tuple:
    """The plan for a matrix: which configuration runs for which M (by its row tiles: fewer than 64, fewer than
    128, more), each with as many splits as divide its chunks (SmolLM2's K = 576 is 9 chunks: no split).
    ``wgmma`` (sm_90a builds): above WGMMA_ABOVE tokens, bsr_prefill_wgmma where it supports the matrix."""
    tiles = -(-s.n // DEFAULT.rows)
    plan = TUNED["few rows" if tiles < 64 else "some rows" if tiles < 128 else "many rows"]
    if 32 <= tiles < 64:  # (measured on 4096- and 6144-row matrices only)
        plan = tuple((b, _past_128(s, tiles) if b == 256 else c) for b, c in plan)
        if tiles == 32:  # 257-512 tokens: 2 K-splits where K's chunks allow (the fitting below; tag "split-k 512":
            # 4096 x 4096 / 11008 / 14336 1.06-1.29x faster at M = 384 / 512; 6144 rows 0.88-0.89x, so not there)
            plan = plan[:-1] + ((512, replace(DEFAULT, splits=2)),) + plan[-1:]
    fitted = [(bound, replace(c, splits=max(d for d in range(1, c.splits + 1) if c.splits % d == 0
                                            and (s.k // c.chunk) % d == 0))) for bound, c in plan]
    plan = tuple(e for i, e in enumerate(fitted) if i + 1 == len(fitted) or e[1] != fitted[i + 1][1])
    if wgmma and bsr_prefill_wgmma.supports(s, bsr_prefill_wgmma.BEST):  # the tiled entries up to WGMMA_ABOVE
        below = tuple((b, c) for b, c in plan if b is not None and b < WGMMA_ABOVE)
        at = next(c for b, c in plan if b is None or b >= WGMMA_ABOVE)
        plan = below + ((WGMMA_ABOVE, at),) + tuple(
            (b, c) for b, c in bsr_prefill_wgmma.by_tokens(s) if b is None or b > WGMMA_ABOVE)
    return plan


def supports(s: BSRShape, cfg: TiledConfig = DEFAULT) -> bool:
    wrow, wtok = cfg.rows // cfg.row_warps, cfg.tokens // cfg.token_warps
    if cfg.wgmma and not (cfg.row_warps == 1 and cfg.tokens == 16 * cfg.token_warps and cfg.token_warps % 4 == 0
                          and cfg.rows % 16 == 0 and cfg.rows <= 256 and s.rows < 16):
        return False  # a warpgroup: 64 tokens x all the rows; R = 16 keeps the mma.sync walk that skips blocks
    gpc = cfg.chunk // s.group if s.group else 0
    return (s.interleaved and s.bits == 4 and s.group % 16 == 0 and cfg.chunk % s.group == 0
            and gpc in (1, 2, 4, 8, 16) and s.k % (cfg.chunk * cfg.splits) == 0 and s.n % 2 == 0 and s.dtype == "float16"
            and s.rows in (1, 2, 4, 8, 16) and wrow % 16 == 0 and wtok % 16 == 0
            and (cfg.rows * gpc) % cfg.threads == 0 and (cfg.tokens * cfg.chunk // 8) % cfg.threads == 0)


def _launch(s: BSRShape, cfg: TiledConfig):
    """One kernel launch of ``cfg``'s tiles over all M tokens, as a macro the dispatching PrimFunc calls."""
    n, k, rb, group, words, dt = s.n, s.k, s.rows, s.group, s.words, s.dtype
    nbr = s.block_rows
    br, bt, ck, threads = cfg.rows, cfg.tokens, cfg.chunk, cfg.threads
    wr, warps = cfg.row_warps, cfg.row_warps * cfg.token_warps
    wrow, wtok = br // wr, bt // cfg.token_warps
    mt, nt = wtok // 16, wrow // 8  # mma tiles of a warp: 16-token (M) x 8-row (N)
    slices = ck // 16  # 16-column k-steps per chunk
    gpc = ck // group  # column groups per chunk: a row's lanes (gpc consecutive lanes of a warp)
    rows_per_pass = threads // gpc
    items = br // rows_per_pass  # weight rows each thread loads and dequantizes a block of per chunk
    xcopies = bt * ck // 8 // threads  # 16-byte cp.async per thread per chunk
    nch = k // ck
    splits = cfg.splits
    sk = splits > 1
    cps = nch // splits  # chunks per split
    stride = ck + PAD
    wg = cfg.wgmma
    use_w, use_x = cfg.ablate != "weights", cfg.ablate != "activations"
    wsize, xsize = cfg.tile_halves(br), cfg.tile_halves(bt)
    xoff = 2 * wsize  # the activation buffers follow the two weight buffers
    wslab, xslab = slab(br), slab(bt)

    def offset(r, kk, sl):  # fp16 offset of (row r, column kk) in a stage of a tile whose slabs are sl apart
        return kk // 8 * sl + r // 8 * 64 + r % 8 * 8 + kk % 8 if wg else r * stride + kk

    def xpiece(i):  # (token, 8-column piece) of 16-byte copy i: for wgmma 8 lanes take 8 tokens' same piece
        if wg:  # (contiguous in shared memory), lane pairs l, l + 16 one token's 32-byte sector
            return i % 16 + 16 * (i // 32 % (bt // 16)), 2 * (i // (32 * (bt // 16))) + i // 16 % 2
        return i // (ck // 8), i % (ck // 8)

    def mma_async(acc, da, db):
        return getattr(T.ptx.wgmma.mma_async.sync.aligned, f"m64n{br}k16").f32.f16.f16(
            *[acc[i] for i in range(br // 2)], da, db, T.ptx.pred(1), 1, 1, 0, 0)

    scope = "shared.dyn" if cfg.smem_bytes() > SMEM_BYTES else "shared"
    row_tiles = (n + br - 1) // br
    blocks_per_sm = cfg.blocks_per_sm
    kpg = group // 16  # k-steps per column group
    skip = rb == 16  # a 16-row block is two 8-row mma tiles: skip them where the block is pruned

    def popc(v):
        return T.call_extern("int32", "__popc", v)

    def tile(by):  # the token tile of thread block row by (split-K folds the split into blockIdx.y)
        return by // splits if sk else by

    def first(by):  # the first chunk of its split
        return T.Cast("int32", by % splits) * cps if sk else 0

    def sum_splits(ws, m, n, i):  # output i's sum over the splits' partials, in fp32
        total = ws[i]
        for sp in range(1, splits):
            total = total + ws[sp * m * n + i]
        return total

    @T.macro
    def load_x(x, sm, tid, ch, buf, xrow):
        for c in T.unroll(xcopies):  # xrow: the row each copy reads (see launch)
            T.ptx["cp.async.cg.shared.global"](
                sm.ptr_to([xoff + buf * xsize + offset(xpiece(c * threads + tid)[0], xpiece(c * threads + tid)[1] * 8,
                                                       xslab)]),
                x.ptr_to([xrow[c], ch * ck + xpiece(c * threads + tid)[1] * 8]), 16)
        T.ptx["cp.async.commit_group"]()

    @T.macro
    def load_index(indices, nnz, j, cur, ix):
        for c in T.unroll(items):  # the column group of the row's block cur + j
            ix[c] = column(s, indices, T.min(cur[c] + j, nnz - 1))

    def blk(cur, j, nnz, c):  # the block lane j loads for item c (clamped: past the row's end it is not used)
        return T.min(cur[c] + j, nnz - 1)

    def brow(tid, c):  # the row of its block that item c reads
        return (tid // gpc + c * rows_per_pass) % rb

    @T.macro
    def dequant(dst, i, cw, scl, zz, c, q, t):  # codes 8q + 2t, +1 of item c -> one fp16 pair, into dst[i]
        T.ptx.sub.f16x2(dst[i], ((cw[c * words + q] >> T.uint32(t * 4)) & T.uint32(0x000F000F))
                        | T.uint32(0x64006400), (T.uint32(0x6400) + zz[c]) * T.uint32(0x10001))
        T.ptx.mul.rn.f16x2(dst[i], dst[i], scl[c] * T.uint32(0x10001))

    @T.macro
    def load_w(qw, indices, sc, zr, nnz, tid, j, cur, end, ix, hits, grp, sw, cw, scl, zz, ch):
        """Lane j of a row's gpc lanes loads the row's block cur + j if it lies in this chunk: a row's kept
        blocks of a chunk are consecutive in memory, so the row's lanes read them coalesced."""
        for c in T.unroll(items):
            grp[c] = T.if_then_else(cur[c] + j < end[c], ix[c] - ch * gpc, gpc)  # gpc: not in this chunk
            hits[c] = T.if_then_else(grp[c] >= 0 and grp[c] < gpc,
                                     T.shift_left(T.uint32(1), T.Cast("uint32", T.max(T.min(grp[c], 31), 0))),
                                     T.uint32(0))
            for b in T.unroll(gpc.bit_length() - 1):  # OR over the row's lanes: bit g = group g is kept
                T.ptx.shfl_sync.bfly.b32(sw[0], hits[c], T.uint32(1 << b), T.uint32(0x1F), T.uint32(0xFFFFFFFF))
                hits[c] = hits[c] | sw[0]
            for q in T.vectorized(words):
                cw[c * words + q] = qw[blk(cur, j, nnz, c), brow(tid, c), q]
            scl[c] = scale_bits(s, indices, sc, blk(cur, j, nnz, c), brow(tid, c))
            zz[c] = zero_bits(s, indices, zr, blk(cur, j, nnz, c), brow(tid, c))
            cur[c] = cur[c] + popc(hits[c])

    @T.macro
    def store_w(sm, hm, tid, j, hits, grp, cw, scl, zz, d, buf):
        """Lane j writes its block's 16 x (G / 16) values where the block's group lies, and zeros over group j
        if the row does not keep it: together the row's lanes fill its whole chunk. With R = 16 the mma's of
        pruned blocks are skipped instead, so the row's bitmask goes to shared memory and no zeros are written."""
        for c in T.unroll(items):
            if grp[c] >= 0 and grp[c] < gpc:
                for q in T.unroll(words):
                    for t in T.unroll(4):
                        dequant(d, t, cw, scl, zz, c, q, t)
                    T.ptx.st.shared.v4.b32(
                        sm.ptr_to([buf * wsize + offset(tid // gpc + c * rows_per_pass, grp[c] * group + q * 8, wslab)]),
                        d[0], d[1], d[2], d[3])
            if skip:
                if j == 0:
                    T.ptx.st.shared.b32(hm.ptr_to([buf * br + tid // gpc + c * rows_per_pass]), hits[c])
            elif (hits[c] >> T.Cast("uint32", j)) & T.uint32(1) == T.uint32(0):
                for q in T.unroll(words):
                    T.ptx.st.shared.v4.b32(
                        sm.ptr_to([buf * wsize + offset(tid // gpc + c * rows_per_pass, j * group + q * 8, wslab)]),
                        T.uint32(0), T.uint32(0), T.uint32(0), T.uint32(0))

    @T.macro
    def compute(sm, hm, kb, af, bf, acc, tx, wri, wti, buf):
        if skip:  # the bitmasks of the warp's block rows: a pruned block costs no ldmatrix and no mma
            for jp in T.unroll(nt // 2):
                kb[jp] = hm[buf * br + wri * wrow + jp * 16]
        for ks in T.unroll(slices):
            for mi in T.unroll(mt):  # A: 16 tokens x 16 columns
                T.ptx_legacy.ldmatrix(
                    False, 4, ".b16", af.data, mi * 8, sm.data,
                    xoff + buf * xsize + offset(wti * wtok + mi * 16 + tx % 16, ks * 16 + tx // 16 * 8, xslab), dtype=dt)
            for jp in T.unroll(nt // 2):  # B: two 8-row tiles x 16 columns
                if not skip or (kb[jp] >> T.uint32(ks // kpg)) & T.uint32(1) == T.uint32(1):
                    T.ptx_legacy.ldmatrix(
                        False, 4, ".b16", bf.data, jp * 8, sm.data,
                        buf * wsize + offset(wri * wrow + jp * 16 + tx // 16 * 8 + tx % 8, ks * 16 + tx // 8 % 2 * 8, wslab),
                        dtype=dt)
                    for mi in T.unroll(mt):
                        for e in T.unroll(2):
                            T.ptx_legacy.mma("m16n8k16", "row", "col", "float16", "float16", "float32",
                                             af.data, mi * 8, bf.data, (jp * 2 + e) * 4, acc.data,
                                             (mi * nt + jp * 2 + e) * 4, False, dtype="float32")

    @T.macro
    def compute_wgmma(sm, acc, da, db, ty, buf):
        """The warpgroup's 64 tokens x all rows: one wgmma per k-step, operands straight from shared memory.
        Issued, not waited for: the tensor cores run while the warps dequantize the next chunk."""
        T.ptx.wgmma.fence.sync.aligned()
        for ks in T.unroll(slices):
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(da[0]), sm.ptr_to(
                [xoff + buf * xsize + offset(ty // 4 * 64, ks * 16, xslab)]), xslab // 8, 8, 0)  # 16-byte units:
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(db[0]), sm.ptr_to(  # 8-column slabs sl apart, 8-row
                [buf * wsize + offset(0, ks * 16, wslab)]), wslab // 8, 8, 0)  # core matrices 128 B apart
            mma_async(acc, da[0], db[0])
        T.ptx.wgmma.commit_group.sync.aligned()

    @T.macro
    def launch(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz):
        for by in T.thread_binding((m + bt - 1) // bt * splits, thread="blockIdx.y"):
            for bx in T.thread_binding(row_tiles, thread="blockIdx.x"):
                for ty in T.thread_binding(warps, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", blocks_per_sm):
                            sm = T.alloc_buffer((2 * (wsize + xsize),), dt, scope=scope)
                            acc = T.alloc_buffer((mt * nt * 4,), "float32", scope="local")
                            af = T.alloc_buffer((mt * 8,), dt, scope="local")
                            bf = T.alloc_buffer((nt * 4,), dt, scope="local")
                            cw = T.alloc_buffer((items * words,), "uint32", scope="local")  # next chunk's blocks
                            scl = T.alloc_buffer((items,), "uint32", scope="local")
                            zz = T.alloc_buffer((items,), "uint32", scope="local")
                            d = T.alloc_buffer((4,), "uint32", scope="local")
                            cur = T.alloc_buffer((items,), "int32", scope="local")
                            end = T.alloc_buffer((items,), "int32", scope="local")
                            ix = T.alloc_buffer((items,), "int32", scope="local")
                            grp = T.alloc_buffer((items,), "int32", scope="local")
                            hits = T.alloc_buffer((items,), "uint32", scope="local")
                            sw = T.alloc_buffer((1,), "uint32", scope="local")
                            hm = T.alloc_buffer((2 * br if skip else 1,), "uint32", scope="shared")
                            kb = T.alloc_buffer((nt // 2,), "uint32", scope="local")
                            da = T.alloc_buffer((1,), "uint64", scope="local")  # wgmma matrix descriptors
                            db = T.alloc_buffer((1,), "uint64", scope="local")
                            tid = ty * 32 + tx
                            j = tid % gpc
                            wri = ty % wr
                            wti = ty // wr
                            lo = T.alloc_buffer((1,), "int32", scope="local")
                            # the activation row each copy reads: its own, or for rows past M (never stored) the
                            # same row of the tile before, or row % M in the first tile (reading row M - 1 for all
                            # of them queued every thread block on one line: M = 129 ran 2.1x slower than 256 on
                            # 12288 x 4096, docs/perf.md)
                            xrow = T.alloc_buffer((xcopies,), "int64", scope="local")
                            for c in T.unroll(xcopies):
                                xrow[c] = T.Cast("int64", tile(by) * bt + xpiece(c * threads + tid)[0])
                                if xrow[c] >= m:
                                    xrow[c] = T.if_then_else(tile(by) > 0, xrow[c] - bt, xrow[c] % m)

                            for j in range(mt * nt * 4):
                                acc[j] = T.float32(0)
                            for c in range(items):
                                cur[c] = T.if_then_else(bx * br + tid // gpc + c * rows_per_pass < n, indptr[
                                    T.min(bx * br + tid // gpc + c * rows_per_pass, n - 1) // rb], 0)
                                end[c] = T.if_then_else(bx * br + tid // gpc + c * rows_per_pass < n, indptr[
                                    T.min(bx * br + tid // gpc + c * rows_per_pass, n - 1) // rb + 1], 0)
                                if sk:  # the row's first block at or after the split's first column group
                                    lo[0] = end[c]
                                    while cur[c] < lo[0]:
                                        if column(s, indices, (cur[c] + lo[0]) // 2) < first(by) * gpc:
                                            cur[c] = (cur[c] + lo[0]) // 2 + 1
                                        else:
                                            lo[0] = (cur[c] + lo[0]) // 2
                            load_index(indices, nnz, j, cur, ix)
                            if use_x:
                                load_x(x, sm, tid, first(by), 0, xrow)
                            if use_w:
                                load_w(qw, indices, sc, zr, nnz, tid, j, cur, end, ix, hits, grp, sw, cw, scl, zz, first(by))
                                load_index(indices, nnz, j, cur, ix)
                                store_w(sm, hm, tid, j, hits, grp, cw, scl, zz, d, 0)
                            T.ptx["cp.async.wait_all"]()
                            if wg:  # the generic-proxy writes above must be visible to wgmma's async proxy
                                T.ptx.fence.proxy.async_.shared__cta()
                            T.tvm_storage_sync("shared")
                            for ch in T.serial(cps):
                                # the next chunk's loads go out before this chunk's mma's (past the last chunk they
                                # are harmless: clamped columns, no kept groups, a buffer nobody reads); its index
                                # loads went out one chunk earlier still, so the code loads wait on nothing
                                if use_x:
                                    load_x(x, sm, tid, T.min(first(by) + ch + 1, nch - 1), (ch + 1) % 2, xrow)
                                if use_w:
                                    load_w(qw, indices, sc, zr, nnz, tid, j, cur, end, ix, hits, grp, sw, cw, scl, zz, first(by) + ch + 1)
                                    load_index(indices, nnz, j, cur, ix)
                                if wg:
                                    compute_wgmma(sm, acc, da, db, ty, ch % 2)
                                else:
                                    compute(sm, hm, kb, af, bf, acc, tx, wri, wti, ch % 2)
                                if use_w:
                                    store_w(sm, hm, tid, j, hits, grp, cw, scl, zz, d, (ch + 1) % 2)
                                T.ptx["cp.async.wait_all"]()
                                if wg:  # this chunk's wgmma's read the other buffer: done before it is rewritten
                                    T.ptx.wgmma.wait_group.sync.aligned(0)
                                    T.ptx.fence.proxy.async_.shared__cta()
                                T.tvm_storage_sync("shared")
                            for mi in T.unroll(mt):
                                for ni in T.unroll(nt):
                                    for h in T.unroll(2):  # rows 2t, 2t + 1 of token g + 8h: one 4-byte store
                                        if (tile(by) * bt + wti * wtok + mi * 16 + tx // 4 + h * 8 < m
                                                and bx * br + wri * wrow + ni * 8 + tx % 4 * 2 < n):
                                            if sk:  # fp32 partial sums of this split
                                                for e in T.unroll(2):
                                                    ws[(by % splits * m + tile(by) * bt + wti * wtok + mi * 16 + tx // 4 + h * 8)
                                                       * n + bx * br + wri * wrow + ni * 8 + tx % 4 * 2 + e] = acc[
                                                        (mi * nt + ni) * 4 + h * 2 + e]
                                            else:
                                                y2[((tile(by) * bt + wti * wtok + mi * 16 + tx // 4 + h * 8) * n
                                                    + bx * br + wri * wrow + ni * 8 + tx % 4 * 2) // 2] = T.Cast(
                                                    "uint32", T.reinterpret("uint16", T.Cast(dt, acc[(mi * nt + ni) * 4 + h * 2])))\
                                                    | T.shift_left(T.Cast("uint32", T.reinterpret("uint16", T.Cast(
                                                        dt, acc[(mi * nt + ni) * 4 + h * 2 + 1]))), T.uint32(16))
        if sk:  # a second launch sums the splits' partials into y, an output pair per thread
            for bi in T.thread_binding((m * n // 2 + 255) // 256, thread="blockIdx.x"):
                for ti in T.thread_binding(256, thread="threadIdx.x"):
                    if bi * 256 + ti < m * n // 2:
                        y2[bi * 256 + ti] = T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, sum_splits(ws, m, n, (bi * 256 + ti) * 2)))) | T.shift_left(
                            T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, sum_splits(ws, m, n, (bi * 256 + ti) * 2 + 1)))), T.uint32(16))

    return launch


def plan_supported(s: BSRShape, plan: tuple) -> bool:
    """Whether every configuration of a plan (tiled, or bsr_prefill_wgmma's) takes this matrix."""
    return all(supports(s, c) if isinstance(c, TiledConfig) else bsr_prefill_wgmma.supports(s, c) for _, c in plan)


def _wgmma_launch(s: BSRShape, cfg):
    """bsr_prefill_wgmma's launches with this family's launch signature (no split-K workspace)."""
    run = bsr_prefill_wgmma.launch(s, cfg)

    @T.macro
    def launch(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz):
        run(x, indptr, indices, qw, sc, zr, y2, m)

    return launch


def bsr_prefill_tiled(s: BSRShape, plan: TiledConfig | tuple = DEFAULT):
    """``plan``: one configuration, or ((max_m, cfg), ..., (None, cfg)): the first whose max_m >= M runs (M is
    only known at run time; the host side of the PrimFunc picks the launch)."""
    plan = ((None, plan),) if isinstance(plan, TiledConfig) else tuple(plan)
    assert plan[-1][0] is None and plan_supported(s, plan), (s, plan)
    n = s.n
    launches = [_launch(s, c) if isinstance(c, TiledConfig) else _wgmma_launch(s, c) for _, c in plan]
    bounds = [b for b, _ in plan[:-1]]
    nplan = len(plan)
    max_splits = max(getattr(c, "splits", 1) for _, c in plan)
    assert nplan <= 5, "at most five configurations by M"
    one, two, three, four, last = (launches + [launches[-1]] * 4)[:4] + launches[-1:]

    def below(m, i):  # does entry i (not the last) take M = m?
        return m <= bounds[i] if i + 1 < nplan else False

    @T.macro
    def dispatch(x, indptr, indices, qw, sc, zr, y, m, nnz):
        y2 = T.decl_buffer((m * n // 2,), "uint32", data=y.data)  # output pairs as 32-bit words
        ws = T.alloc_buffer((max_splits * m * n if max_splits > 1 else 1,), "float32", scope="global")  # split-K sums
        if below(m, 0):  # the plan's bounds in order (a missing entry's False drops its branch while parsing)
            one(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz)
        elif below(m, 1):
            two(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz)
        elif below(m, 2):
            three(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz)
        elif below(m, 3):
            four(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz)
        else:
            last(x, indptr, indices, qw, sc, zr, y2, ws, m, nnz)

    return bsr_func(s, dispatch)


def config_key(plan) -> str:
    """What the artifact's manifest records for a plan."""
    if isinstance(plan, TiledConfig):
        return plan.key
    return ";".join(f"m<={b}:{c.key}" if b is not None else c.key for b, c in plan)
