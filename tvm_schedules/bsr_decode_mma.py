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
two popcounts and every load of a step issues at once. Absent blocks are zeros, loaded by no one; the work per
tile is its column groups, whatever its rows keep, so rows with unequal numbers of blocks cost about what
equal ones do.

A thread block takes one tile; its warps split the tile's column groups into equal slices, each warp keeping
its 16 x 8 fp32 partial sums in the mma's accumulators, and the thread block adds the warps' sums through
shared memory. Loads go out ``look`` steps at a time, the next set's before this set's mma's; with programmatic
dependent launch (``pdl``) the first set's weights go out before the wait for the previous kernel, its
activations after.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .common import BSRShape
from .layout import TILE

FULL = T.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class MmaConfig:
    warps: int = 8  # warps per thread block (one 16-row tile), each a slice of its column groups
    look: int = 1  # steps of 4 column groups (four mma's) whose loads issue together: one register set
    ahead: bool = True  # the next set's loads before this set's mma's (two register sets)
    pdl: bool = False  # programmatic dependent launch: the first set's weights load before the wait, the
    # activations after it; the next launch triggered after the loop (sm_90; launch.PIPELINE flags the kernel)

    @property
    def key(self) -> str:
        return f"mm_w{self.warps}l{self.look}" + ("a" if self.ahead else "") + ("g" if self.pdl else "")


QUAD = 4  # column groups a step takes: one per lane of a quad


def supports(s: BSRShape, m: int) -> bool:
    return (s.rows == 1 and s.bits == 4 and s.group == 16 and s.dtype == "float16" and 1 <= m <= 8
            and s.n % TILE == 0 and TILE * (s.k // 16) <= 1 << 16)


def slice_groups(s: BSRShape, cfg: MmaConfig) -> int:
    """Column groups a warp takes: an equal share of the tile's, rounded up to whole register sets."""
    share = -(-(s.k // 16) // cfg.warps)
    return -(-share // (QUAD * cfg.look)) * QUAD * cfg.look


def bsr_decode_mma(s: BSRShape, m: int, cfg: MmaConfig = MmaConfig()):
    """The PrimFunc ``(x, tile_ptr, words, codes, meta, y)`` over layout.column_tiles' arrays."""
    assert supports(s, m), f"the mma GEMV takes 4-bit G16 R1 fp16 matrices of 16-row tiles at M <= 8, not {s}, M = {m}"
    assert cfg.warps >= 4 and 32 % (QUAD * cfg.look) == 0, cfg
    n, k = s.n, s.k
    groups, tiles = k // 16, n // TILE
    warps, look = cfg.warps, cfg.look
    per = slice_groups(s, cfg)
    sets_n = per // (QUAD * look)  # register sets a warp loads
    windows = -(-per // 32)  # 32 words a load: lane l holds the word of the slice's group 32i + l
    sets = 2 if cfg.ahead else 1

    def popc(v):
        return T.call_extern("int32", "__popc", v)

    @T.macro
    def issue(codes, meta, wd, wv, pos, cw, mt, base, st, g, q):
        """Register set ``st``'s weights into slot st % sets: per step, the lane's column group's word and the
        blocks of rows g and g + 8 there (zero where absent)."""
        for l in T.unroll(look):
            wv[0] = T.tvm_warp_shuffle(FULL, wd[(st * look + l) * QUAD // 32], (st * look + l) * QUAD % 32 + q, 32, 32)
            for h in T.unroll(2):
                pos[0] = base + T.Cast("int32", wv[0] >> T.uint32(16)) + popc(
                    wv[0] & ((T.uint32(1) << T.Cast("uint32", g + 8 * h)) - T.uint32(1)))
                for v in T.unroll(2):
                    cw[st % sets, l, h, v] = T.uint32(0)
                mt[st % sets, l, h] = T.uint32(0)
                if (wv[0] >> T.Cast("uint32", g + 8 * h)) & T.uint32(1) == T.uint32(1):
                    for v in T.vectorized(2):
                        cw[st % sets, l, h, v] = codes[pos[0], v]
                    mt[st % sets, l, h] = meta[pos[0]]

    @T.macro
    def stage(x32, xb, c0, st, g, q):
        """Register set ``st``'s activations into slot st % sets: per step, the lane's column group's 16 of token
        g (zero past M)."""
        for l in T.unroll(look):
            for v in T.unroll(8):
                xb[st % sets, l, v] = T.uint32(0)
            if g < m:  # coherent loads (not ld.global.nc), which ptxas keeps after a grid-dependency wait
                for u in T.unroll(2):
                    T.ptx.ld.global_.v4.b32(
                        xb[st % sets, l, u * 4], xb[st % sets, l, u * 4 + 1], xb[st % sets, l, u * 4 + 2],
                        xb[st % sets, l, u * 4 + 3], x32.ptr_to([g * (k // 2) + T.min(
                            c0 + (st * look + l) * QUAD + q, groups - 1) * 8 + u * 4]))

    @T.macro
    def compute(cw, mt, xb, a32, acc, st):
        """Set ``st``'s mma's: mma i of a step takes value pairs 2i, 2i + 1 of the lane's two blocks (A registers
        h and 2 + h: rows g + 8h), each (1024 + c) - (1024 + z) exactly, then * s once, in fp16 pairs (both
        halves of the metadata word duplicated); B the same columns."""
        for l in T.unroll(look):
            for i in T.unroll(4):
                for h in T.unroll(2):
                    for e in T.unroll(2):  # pair p = 2i + e: word p // 4, nibbles p and p + 4 (interleave_codes)
                        T.ptx.lop3.b32(a32[2 * e + h], cw[st % sets, l, h, (2 * i + e) // 4] >> T.uint32(
                            (2 * i + e) % 4 * 4), T.uint32(0x000F000F), T.uint32(0x64006400), 0xEA)  # (a & b) | c
                        T.ptx.sub.f16x2(a32[2 * e + h], a32[2 * e + h], (mt[st % sets, l, h] & T.uint32(0xFFFF)) | (
                            mt[st % sets, l, h] << T.uint32(16)))
                        T.ptx.mul.rn.f16x2(a32[2 * e + h], a32[2 * e + h],
                                           (mt[st % sets, l, h] >> T.uint32(16)) | (mt[st % sets, l, h] & T.uint32(
                                               0xFFFF0000)))
                T.ptx_legacy.mma("m16n8k16", "row", "col", "float16", "float16", "float32", a32.data, 0, xb.data,
                                 ((st % sets) * look + l) * 8 + 2 * i, acc.data, 0, False, dtype="float32")

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
        for bx in T.thread_binding(tiles, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    red = T.alloc_buffer((warps * 128,), "float32", scope="shared")
                    wd = T.alloc_buffer((windows,), "uint32", scope="local")
                    wv = T.alloc_buffer((1,), "uint32", scope="local")
                    pos = T.alloc_buffer((1,), "int32", scope="local")
                    cw = T.alloc_buffer((sets, look, 2, 2), "uint32", scope="local")
                    mt = T.alloc_buffer((sets, look, 2), "uint32", scope="local")
                    xb = T.alloc_buffer((sets, look, 8), "uint32", scope="local")
                    a32 = T.alloc_buffer((4,), "uint32", scope="local")
                    acc = T.alloc_buffer((4,), "float32", scope="local")
                    sm = T.alloc_buffer((1,), "float32", scope="local")
                    base = tile_ptr[bx]
                    for i in T.unroll(windows):
                        wd[i] = T.if_then_else(ty * per + i * 32 + tx < groups,
                                               words[bx, T.min(ty * per + i * 32 + tx, groups - 1)], T.uint32(0))
                    for e in T.unroll(4):
                        acc[e] = T.float32(0)
                    if cfg.ahead:
                        issue(codes, meta, wd, wv, pos, cw, mt, base, 0, tx // 4, tx % 4)
                    if cfg.pdl:  # a branch on the loaded words keeps ptxas from hoisting the wait above the loads
                        if cw[0, 0, 0, 0] ^ mt[0, 0, 0] != T.uint32(0x9E3779B9):
                            T.ptx.griddepcontrol.wait()
                        else:
                            T.ptx.griddepcontrol.wait()
                    if cfg.ahead:
                        stage(x32, xb, ty * per, 0, tx // 4, tx % 4)
                    for st in T.unroll(sets_n):
                        if cfg.ahead:
                            if st + 1 < sets_n:
                                issue(codes, meta, wd, wv, pos, cw, mt, base, st + 1, tx // 4, tx % 4)
                                stage(x32, xb, ty * per, st + 1, tx // 4, tx % 4)
                        else:
                            issue(codes, meta, wd, wv, pos, cw, mt, base, st, tx // 4, tx % 4)
                            stage(x32, xb, ty * per, st, tx // 4, tx % 4)
                        compute(cw, mt, xb, a32, acc, st)
                    if cfg.pdl:
                        T.ptx.griddepcontrol.launch_dependents()
                    for e in T.unroll(4):
                        red[ty * 128 + tx * 4 + e] = acc[e]
                    T.tvm_storage_sync("shared")
                    # element tx * 4 + e of a warp's sums: row g + 8 (e // 2) of the tile, token 2q + e % 2
                    if ty * 32 + tx < 128:
                        sm[0] = T.float32(0)
                        for w in T.unroll(warps):
                            sm[0] = sm[0] + red[w * 128 + ty * 32 + tx]
                        if (ty * 32 + tx) // 4 % 4 * 2 + tx % 2 < m:
                            y[(ty * 32 + tx) // 4 % 4 * 2 + tx % 2, bx * TILE + (ty * 32 + tx) // 16 + tx % 4 // 2 * 8
                              ] = T.Cast("float16", sm[0])

    return bsr_mma
