"""BSR int4 GEMV for decode at M = 1-8 on tensor cores: a column group's activations serve 16 rows at once.

The row kernels (bsr_decode, bsr_decode_stream) give each lane whole blocks and read each block's 16
activations per token from shared memory: 32 bytes a token against the block's 12 bytes from DRAM. An SM's
shared memory moves about 10x what its share of DRAM does, so from M = 4 that read, not DRAM, is the time
(the row kernel at M = 8 took 1.8-3.2x its time at M = 1 on an H100, plain launches, on about the same bytes;
kernels_mma_decode_run1_h100.json).

Here the rows go in tiles of 16 and a tile's kept blocks are stored by column group (layout.column_tiles), and
the 16 rows x 4 column groups of a tile are the A operands of four ``mma.sync.m16n8k16`` (fp16 in, fp32
accumulators) whose B operands are the groups' activations of up to 8 tokens: a column group's activations
are read once per 16 rows instead of once per block, and the time no longer grows with M up to 8. An mma's K
order is free as long as A and B agree, so lane (g, q) of the warp owns whole blocks, those of rows g and
g + 8 in column group q of the four: one 8-byte load of codes each (the interleaved order of the other CUDA
kernels), and it dequantizes exactly its blocks' 16 values (the first version gave each lane 4 values of two
blocks per mma: 2.6x the instructions, 0.42-0.69x the row kernel at M = 1). Mma i takes value pairs 2i and
2i + 1 of each lane's blocks and, as B, the same columns of the lane's column group for token g.
Where a tile's block of row j sits comes from one 32-bit word per (tile, column group): the tile's blocks
before the group (16 bits) and which of its 16 rows keep it (16 bits), so a lane finds its two blocks with
two popcounts and every load of a step issues at once. A lane whose block is absent either skips its loads
(predicated) or, with ``absent_loads``, loads the next kept block (or the zero block past the last) without a
branch; either way a byte selector zeroes its scale. The work per tile is its column groups, whatever its rows
keep, so rows with unequal numbers of blocks cost about what equal ones do.

A thread block takes one tile; its warps split the tile's column groups into equal slices, each warp keeping
its 16 x 8 fp32 partial sums in the mma's accumulators, and the thread block adds the warps' sums through
shared memory (``tiles`` > 1: a thread block takes that many tiles, and each warp's activation loads serve
them all). Loads go out ``look`` steps at a time, ``ahead`` register sets before the set whose mma's run; with
programmatic dependent launch (``pdl``) the first sets' weights go out before the wait for the previous kernel,
their activations after. Its time is flat in M. for_shape makes the grid one wave of resident thread blocks (two
tiles a thread block on tall matrices, registers capped with ``min_blocks`` where that fits one more) that with PDL
triggers the next launch right after its wait (``early``). H100, with PDL (kernels_mma_plan_run{1,2}_h100.json):
3.4-4.2x cuBLAS fp16 at M = 2-8, 4x or more on 9 of the 21 (shape, M) pairs of the LLaMA shapes; at M = 1 the row
kernel stays faster but on 4096 x 4096.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from tvm.script import tirx as T

from .common import FULL, SMS, WEIGHT_HINT, BSRShape, weight_load
from .launch import MIN_BLOCKS_HINT
from .layout import TILE


@dataclass(frozen=True)
class MmaConfig:
    warps: int = 8  # warps per thread block (one 16-row tile), each a slice of its column groups
    look: int = 1  # steps of 4 column groups (four mma's) whose loads issue together: one register set
    ahead: int = 1  # register sets whose loads are out while a set's mma's run (ahead + 1 sets in registers)
    tiles: int = 1  # 16-row tiles per thread block: each warp's activation loads serve them all (L2 traffic / tiles)
    absent_loads: bool = False  # absent blocks loaded too (the next kept one's lines), branch-free; else predicated
    pdl: bool = False  # programmatic dependent launch: the first set's weights load before the wait, the
    # activations after it; the next launch triggered after the loop (sm_90; launch.PIPELINE flags the kernel)
    min_blocks: int = 0  # > 0: thread blocks an SM must hold (__launch_bounds__; ptxas caps registers to fit)
    early: bool = False  # with pdl, trigger the next launch right after the wait, not after the loop: for grids
    # all resident at once, whose next launch's thread blocks then take SM slots only as this one's leave
    hint: str = ""  # cache hints on the weight loads (common.weight_load): "n", "f", "p" or several

    @property
    def key(self) -> str:
        depth = "" if self.ahead < 1 else "a" if self.ahead == 1 else f"a{self.ahead}"
        return (f"mm_w{self.warps}l{self.look}{depth}" + (f"t{self.tiles}" if self.tiles > 1 else "")
                + (f"o{self.min_blocks}" if self.min_blocks else "") + ("b" if self.absent_loads else "")
                + ("g" if self.pdl else "") + ("e" if self.pdl and self.early else "")
                + (f"c{self.hint}" if self.hint else ""))

    @classmethod
    def from_key(cls, key: str) -> "MmaConfig":
        """The configuration a key spells (the inverse of ``key``; ValueError for anything else)."""
        f = re.fullmatch(r"mm_w(\d+)l(\d+)(a(\d*))?(t(\d+))?(o(\d+))?(b)?(g)?(e)?(c([nfp]+))?", key)
        if not f or (f[11] and not f[10]):
            raise ValueError(f"not a tensor-core GEMV key: {key}")
        return cls(int(f[1]), int(f[2]), 0 if f[3] is None else int(f[4] or 1), int(f[6] or 1), bool(f[9]),
                   bool(f[10]), int(f[8] or 0), bool(f[11]), f[13] or "")


QUAD = 4  # column groups a step takes: one per lane of a quad


def supports(s: BSRShape, m: int) -> bool:
    return (s.rows == 1 and s.bits == 4 and s.group == 16 and s.dtype == "float16" and 1 <= m <= 8
            and s.n % TILE == 0 and TILE * (s.k // 16) <= 1 << 16)


def for_shape(s: BSRShape, m: int, pdl: bool) -> MmaConfig:
    """The launch for a shape: the grid made one wave of thread blocks all resident on an H100's SMS SMs, whose
    size and registers decide how many fit (docs/perf.md, "Decode on tensor cores"; kernels_mma_early*,
    kernels_mma_ten_warps*, kernels_mma_plan*). With PDL such a grid triggers the next launch right after its wait:
    on the 4096-row shapes 1.01-1.09x faster, and where a grid fills every slot, the same. Tiles per SM of the
    grid, and the launch measured fastest there:
    - up to 2 (4096 rows): 16 warps, one step a set, three sets ahead (64 registers, 2 thread blocks an SM);
    - up to 3 (6144 rows): 16 warps capped to 3 thread blocks an SM at M = 2 and 4, 10 warps at M = 1, 12 at M = 8;
    - up to 6 (12288 rows): two tiles a thread block of 8 warps, two steps a set, capped to 3 an SM;
    - up to 12 (22016 rows): two tiles a thread block of 4 warps, two sets ahead (78 registers, 6 an SM);
    - up to 14 (28672 rows): two tiles a thread block of 4 warps, one set ahead (72 registers, 7 an SM);
    - past that, or with an odd number of tiles where two share a thread block: 8 warps, two steps a set, a
      thread block per tile, the trigger after the loop (more than one wave).
    Past 3 tiles an SM the weight loads skip L1 (common.WEIGHT_HINT: 1.00-1.04x there, 0.97-1.01x on fewer)."""
    per_sm = -(-(s.n // TILE) // SMS)
    even = s.n // TILE % 2 == 0
    hint = WEIGHT_HINT if per_sm > 3 else ""
    if per_sm <= 2:
        cfg = MmaConfig(16, 1, 3, 1, True)
    elif per_sm <= 3:
        cfg = {1: MmaConfig(10, 1, 3, 1, True, min_blocks=3), 8: MmaConfig(12, 1, 3, 1, True, min_blocks=3)}.get(
            m, MmaConfig(16, 1, 1, min_blocks=3))
    elif per_sm <= 6 and even:
        cfg = MmaConfig(8, 2, 1, 2, True, min_blocks=3)
    elif per_sm <= 12 and even:
        cfg = MmaConfig(4, 1, 2, 2, True)
    elif per_sm <= 14 and even:
        cfg = MmaConfig(4, 1, 1, 2, True)
    else:
        return MmaConfig(8, 2, 1, 1, True, pdl=pdl, hint=hint)
    return replace(cfg, pdl=pdl, early=pdl, hint=hint)


def slice_groups(s: BSRShape, cfg: MmaConfig) -> int:
    """Column groups a warp takes: an equal share of the tile's, rounded up to whole register sets."""
    share = -(-(s.k // 16) // cfg.warps)
    return -(-share // (QUAD * cfg.look)) * QUAD * cfg.look


def bsr_decode_mma(s: BSRShape, m: int, cfg: MmaConfig = MmaConfig()):
    """The PrimFunc ``(x, tile_ptr, words, codes, meta, y)`` over layout.column_tiles' arrays."""
    assert supports(s, m), f"the mma GEMV takes 4-bit G16 R1 fp16 matrices of 16-row tiles at M <= 8, not {s}, M = {m}"
    assert cfg.warps >= 4 and 32 % (QUAD * cfg.look) == 0 and s.n // TILE % cfg.tiles == 0, cfg
    n, k = s.n, s.k
    groups, tiles = k // 16, n // TILE
    warps, look, tpb = cfg.warps, cfg.look, cfg.tiles
    per = slice_groups(s, cfg)
    sets_n = per // (QUAD * look)  # register sets a warp loads
    windows = -(-per // 32)  # 32 words a load: lane l holds the word of the slice's group 32i + l
    ahead = min(int(cfg.ahead), sets_n - 1)
    sets = ahead + 1

    def popc(v):
        return T.call_extern("int32", "__popc", v)

    ld, hinted = weight_load(cfg.hint), bool(cfg.hint)

    @T.macro
    def load(codes, meta, cw, mt, pos, st, l, u, h):
        """One block's two code words and its metadata word into register set ``st``: plain loads the compiler
        places, or with cache hints (``hint``) inline PTX."""
        if hinted:
            ld.v2.b32(cw[st % sets, l, u, h, 0], cw[st % sets, l, u, h, 1], codes.ptr_to([pos[0], 0]))
            ld.b32(mt[st % sets, l, u, h], meta.ptr_to([pos[0]]))
        else:
            for v in T.vectorized(2):
                cw[st % sets, l, u, h, v] = codes[pos[0], v]
            mt[st % sets, l, u, h] = meta[pos[0]]

    @T.macro
    def issue(codes, meta, wd, wv, pos, cw, mt, sel, bs, st, g, q):
        """Register set ``st``'s weights into slot st % sets: per step, the lane's column group's word and the
        blocks of rows g and g + 8 there. An absent block's loads are predicated off, or with ``absent_loads`` go
        to where it would sit (the next kept block, at most the zero block past the last) without a branch;
        either way its byte selector for the scale picks zeros, so its values dequantize to 0 (nothing here waits
        for a load: a select on the loaded word would stall the warp at once)."""
        for l in T.unroll(look):
            for u in T.unroll(tpb):
                wv[0] = T.tvm_warp_shuffle(FULL, wd[u, (st * look + l) * QUAD // 32],
                                           (st * look + l) * QUAD % 32 + q, 32, 32)
                for h in T.unroll(2):
                    pos[0] = bs[u] + T.Cast("int32", wv[0] >> T.uint32(16)) + popc(
                        wv[0] & ((T.uint32(1) << T.Cast("uint32", g + 8 * h)) - T.uint32(1)))
                    if cfg.absent_loads:
                        load(codes, meta, cw, mt, pos, st, l, u, h)
                    elif (wv[0] >> T.Cast("uint32", g + 8 * h)) & T.uint32(1) == T.uint32(1):
                        load(codes, meta, cw, mt, pos, st, l, u, h)
                    sel[st % sets, l, u, h] = T.Select(
                        (wv[0] >> T.Cast("uint32", g + 8 * h)) & T.uint32(1) == T.uint32(1), T.uint32(0x3232),
                        T.uint32(0x4444))

    @T.macro
    def stage(x32, xb, c0, st, g, q):
        """Register set ``st``'s activations into slot st % sets: per step, the lane's column group's 16 of token
        g, or of token M - 1 past M (no branch; those columns of the result are never stored)."""
        for l in T.unroll(look):
            for u in T.unroll(2):  # coherent loads (not ld.global.nc), which ptxas keeps after a grid-dependency wait
                T.ptx.ld.global_.v4.b32(
                    xb[st % sets, l, u * 4], xb[st % sets, l, u * 4 + 1], xb[st % sets, l, u * 4 + 2],
                    xb[st % sets, l, u * 4 + 3], x32.ptr_to([T.min(g, m - 1) * (k // 2) + T.min(
                        c0 + (st * look + l) * QUAD + q, groups - 1) * 8 + u * 4]))

    @T.macro
    def compute(cw, mt, sel, xb, a32, hz, acc, st):
        """Set ``st``'s mma's: mma i of a step takes value pairs 2i, 2i + 1 of the lane's two blocks (A registers
        h and 2 + h: rows g + 8h), B the same columns. Pair p sits in code word p // 4 at nibbles p % 4 and
        p % 4 + 4 (interleave_codes); one shift by 8 serves pairs 2 and 3 of a word, and a mask of the upper
        nibble of a byte (pairs 1 and 3) makes 1024 + 16c, which one fma by 1/16 less 64 + z turns into c - z,
        the lower nibble's 1024 + c a subtraction of 1024 + z: exact either way, then * s once, in fp16 pairs
        (the metadata word's halves duplicated by a byte permute each, the scale's zero for an absent block)."""
        for l in T.unroll(look):
            for u in T.unroll(tpb):
                for h in T.unroll(2):
                    hz[u, h, 0] = T.call_extern("uint32", "__byte_perm", mt[st % sets, l, u, h], T.uint32(0),
                                                T.uint32(0x1010))
                    hz[u, h, 2] = T.call_extern("uint32", "__byte_perm", mt[st % sets, l, u, h], T.uint32(0),
                                                sel[st % sets, l, u, h])
                    T.ptx.sub.f16x2(hz[u, h, 1], T.uint32(0x63806380), hz[u, h, 0])  # 960 - (1024 + z) = -(64 + z)
            for i in T.unroll(4):
                for u in T.unroll(tpb):
                    for h in T.unroll(2):
                        for e in T.unroll(2):
                            T.ptx.lop3.b32(a32[u * 4 + 2 * e + h], cw[st % sets, l, u, h, i // 2] >> T.uint32(
                                i % 2 * 8), T.uint32(0x000F000F << 4 * e), T.uint32(0x64006400), 0xEA)  # (a & b) | c
                            if e == 0:
                                T.ptx.sub.f16x2(a32[u * 4 + 2 * e + h], a32[u * 4 + 2 * e + h], hz[u, h, 0])
                            else:
                                T.ptx.fma.rn.f16x2(a32[u * 4 + 2 * e + h], a32[u * 4 + 2 * e + h],
                                                   T.uint32(0x2C002C00), hz[u, h, 1])
                            T.ptx.mul.rn.f16x2(a32[u * 4 + 2 * e + h], a32[u * 4 + 2 * e + h], hz[u, h, 2])
                    T.ptx_legacy.mma("m16n8k16", "row", "col", "float16", "float16", "float32", a32.data, u * 4,
                                     xb.data, ((st % sets) * look + l) * 8 + 2 * i, acc.data, u * 4, False,
                                     dtype="float32")

    @T.prim_func
    def bsr_mma(x_h: T.handle, tp_h: T.handle, w_h: T.handle, c_h: T.handle, mt_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        nnz = T.int32()
        x = T.match_buffer(x_h, (m, k), "float16")
        tile_ptr = T.match_buffer(tp_h, (tiles + 1,), "int32")
        words = T.match_buffer(w_h, (tiles, groups), "uint32")
        codes = T.match_buffer(c_h, (nnz, 2), "uint32")
        meta = T.match_buffer(mt_h, (nnz,), "uint32")
        y = T.match_buffer(y_h, (m, n), "float16")
        x32 = T.decl_buffer((m * k // 2,), "uint32", data=x.data)
        for bx in T.thread_binding(tiles // tpb, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    red = T.alloc_buffer((tpb, warps * 128), "float32", scope="shared")
                    wd = T.alloc_buffer((tpb, windows), "uint32", scope="local")
                    bs = T.alloc_buffer((tpb,), "int32", scope="local")
                    wv = T.alloc_buffer((1,), "uint32", scope="local")
                    pos = T.alloc_buffer((1,), "int32", scope="local")
                    cw = T.alloc_buffer((sets, look, tpb, 2, 2), "uint32", scope="local")
                    mt = T.alloc_buffer((sets, look, tpb, 2), "uint32", scope="local")
                    sel = T.alloc_buffer((sets, look, tpb, 2), "uint32", scope="local")
                    xb = T.alloc_buffer((sets, look, 8), "uint32", scope="local")
                    a32 = T.alloc_buffer((tpb * 4,), "uint32", scope="local")
                    hz = T.alloc_buffer((tpb, 2, 3), "uint32", scope="local")
                    acc = T.alloc_buffer((tpb * 4,), "float32", scope="local")
                    sm = T.alloc_buffer((1,), "float32", scope="local")
                    for u in T.unroll(tpb):
                        bs[u] = tile_ptr[bx * tpb + u]
                        for i in T.unroll(windows):
                            wd[u, i] = T.if_then_else(ty * per + i * 32 + tx < groups, words[
                                bx * tpb + u, T.min(ty * per + i * 32 + tx, groups - 1)], T.uint32(0))
                    with T.attr(0, MIN_BLOCKS_HINT, cfg.min_blocks):  # read by launch.PIPELINE (0: none)
                        for e in T.unroll(tpb * 4):
                            acc[e] = T.float32(0)
                    if not cfg.absent_loads:  # an absent block's registers keep a finite earlier block (or these zeros)
                        for st, l, u, h in T.grid(sets, look, tpb, 2):
                            mt[st, l, u, h] = T.uint32(0)
                            for v in T.unroll(2):
                                cw[st, l, u, h, v] = T.uint32(0)
                    for st in T.unroll(ahead):
                        issue(codes, meta, wd, wv, pos, cw, mt, sel, bs, st, tx // 4, tx % 4)
                    if cfg.pdl and ahead == 0:
                        T.ptx.griddepcontrol.wait()
                    elif cfg.pdl:  # a branch on the loaded words keeps ptxas from hoisting the wait above the loads
                        if cw[0, 0, 0, 0, 0] ^ mt[0, 0, 0, 0] != T.uint32(0x9E3779B9):
                            T.ptx.griddepcontrol.wait()
                        else:
                            T.ptx.griddepcontrol.wait()
                    if cfg.pdl and cfg.early:
                        T.ptx.griddepcontrol.launch_dependents()
                    for st in T.unroll(ahead):
                        stage(x32, xb, ty * per, st, tx // 4, tx % 4)
                    for st in T.unroll(sets_n):
                        if st + ahead < sets_n:
                            issue(codes, meta, wd, wv, pos, cw, mt, sel, bs, st + ahead, tx // 4, tx % 4)
                            stage(x32, xb, ty * per, st + ahead, tx // 4, tx % 4)
                        compute(cw, mt, sel, xb, a32, hz, acc, st)
                    if cfg.pdl and not cfg.early:
                        T.ptx.griddepcontrol.launch_dependents()
                    for u in T.unroll(tpb):
                        for e in T.unroll(4):
                            red[u, ty * 128 + tx * 4 + e] = acc[u * 4 + e]
                    T.tvm_storage_sync("shared")
                    # element r = tx * 4 + e of a warp's sums of a tile: row g + 8 (e // 2), token 2q + e % 2
                    for o in T.unroll(-(-tpb * 128 // (warps * 32))):
                        if o * warps * 32 + ty * 32 + tx < tpb * 128:
                            sm[0] = T.float32(0)
                            for w in T.unroll(warps):
                                sm[0] = sm[0] + red[(o * warps * 32 + ty * 32 + tx) // 128,
                                                    w * 128 + (o * warps * 32 + ty * 32 + tx) % 128]
                            if (o * warps * 32 + ty * 32 + tx) // 4 % 4 * 2 + tx % 2 < m:
                                y[(o * warps * 32 + ty * 32 + tx) // 4 % 4 * 2 + tx % 2,
                                  (bx * tpb + (o * warps * 32 + ty * 32 + tx) // 128) * TILE
                                  + (o * warps * 32 + ty * 32 + tx) % 128 // 16 + tx % 4 // 2 * 8] = T.Cast(
                                      "float16", sm[0])

    return bsr_mma
