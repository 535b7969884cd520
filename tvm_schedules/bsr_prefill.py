"""BSR int-k matmul for prefill on CUDA (any M, symbolic) on tensor cores: ``mma.sync.m16n8k16`` fp16 -> fp32.

A warp computes a 16-row x (8 * n_tiles)-token tile of y^T: the weights are the mma's A operand (16 output
rows x 16 input columns, dequantized in registers straight from the packed codes: every lane decodes
exactly the 8 values its A fragment holds, for 4-bit interleaved codes as fp16 pairs with one LOP3, one
subtract and one multiply per pair) and the activations its B operand. The thread block stages the
token tile's activations in shared memory ``chunk`` columns at a time (rows padded so ldmatrix is free of
bank conflicts) and every warp feeds its mma's from there with ldmatrix.x4 (two 8-token tiles per load):
the first version read B straight from global memory, two 4-byte loads per lane per mma, and was bound by
L1 transactions at 0.05-0.15x cuBLAS.

How the A tile is found is where the block height R matters:
- R = 16: a 16-row tile is one block row, so the warp walks only its kept blocks: pruned blocks cost
  nothing, and time follows the kept fraction.
- R < 16: the 16 rows of a tile belong to 16 / R block rows whose kept columns differ, so the warp walks
  every column group and each lane fills its two rows' values from a per-row cursor (zeros where the
  row's block is pruned): dense tensor-core work, sparse bytes. Per chunk, one round of index loads gives
  each row a bitmask of its kept column groups, so the block of group j is the cursor plus a popcount and
  the weight loads of ``look`` groups issue together (the first version loaded each group's index, then its
  codes: two dependent loads per group, 14% slower over M = 16..4096).
Needs G a multiple of 16 (one mma k-step per 16 columns); other G use the SIMT kernel in bsr_prefill_simt.
4-bit codes in the CUDA artifacts' interleaved order go to bsr_prefill_tiled instead (on an H100, seven
shapes x M = 16..4096: 1.1-6.4x faster at R = 1; at R = 16 0.9-6.3x, slower only on 6144 x 4096 at
M = 512); this kernel serves the other code widths.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm.script import tirx as T

from .common import BSRShape, code


@dataclass(frozen=True)
class PrefillConfig:
    warps: int = 8  # warps per thread block, each a 16-row tile
    n_tiles: int = 8  # 8-token mma tiles per warp (the token tile is 8 * n_tiles)
    chunk: int = 256  # input columns of activations staged in shared memory at a time
    look: int = 4  # R < 16: column groups of a chunk whose weight loads are issued together
    # (R = 16 walks its kept blocks one at a time: issuing 2, 4 or 8 blocks' loads together after one
    # round of index loads was 6-41% slower, measured on all seven shapes at M = 16..4096)

    @property
    def key(self) -> str:
        return f"w{self.warps}n{self.n_tiles}c{self.chunk}l{self.look}"


DEFAULT = PrefillConfig()
SWEEP = [PrefillConfig(8, 8, 256), PrefillConfig(4, 8, 256), PrefillConfig(8, 4, 256), PrefillConfig(4, 16, 128),
         PrefillConfig(8, 16, 128)]
# The sweep's winners on an H100 (benchmarks/kernels.py, tag "sweep", M = 512 on 12288 x 4096 and
# 4096 x 14336): the dense walk (R < 16) spends most of its time building A fragments, so 128-token tiles
# use each one for twice the mma's; the sparse walk (R = 16) prefers 64-token tiles and longer chunks.
# Issuing the weight loads of 4 column groups together (``look``; all seven shapes, M = 16..4096) beat 1, 2
# and 8: 8 holds so many loads in registers that a second thread block no longer fits on an SM.
TUNED = {1: PrefillConfig(8, 16, 128, look=4), 16: PrefillConfig(8, 8, 256)}
PAD = 8  # fp16 of padding per staged row: rows 16 B off the bank period, so ldmatrix has no conflicts


def tuned(rows: int) -> PrefillConfig:
    return TUNED[16] if rows == 16 else TUNED[1]


def chunk_for(s: BSRShape, cfg: PrefillConfig) -> int:
    """``cfg.chunk`` or the largest smaller multiple of 32 and of G that divides K (0 if none does)."""
    step = max(32, s.group)
    for c in range(cfg.chunk - cfg.chunk % step, 0, -step):
        if s.k % c == 0 and (8 * cfg.n_tiles * c // 8) % (cfg.warps * 32) == 0:
            return c
    return 0


def effective(s: BSRShape, cfg: PrefillConfig) -> PrefillConfig:
    """The configuration the kernel really runs for this shape (what the artifact's manifest records): the
    chunk that divides K, and the look-ahead that divides a chunk's column groups (1 for R = 16)."""
    ck = chunk_for(s, cfg)
    groups = max(ck // s.group, 1)
    look = 1 if s.rows == 16 else max(d for d in range(1, min(cfg.look, groups) + 1) if groups % d == 0)
    return replace(cfg, chunk=ck, look=look)


def supports(s: BSRShape, cfg: PrefillConfig = DEFAULT) -> bool:
    return (s.group % 16 == 0 and s.rows in (1, 2, 4, 8, 16) and s.n % 16 == 0 and s.dtype == "float16"
            and 0 < chunk_for(s, cfg) <= 31 * s.group)  # a chunk's column groups fit the bits of one int32


def bsr_prefill_mma(s: BSRShape, cfg: PrefillConfig = DEFAULT):
    n, k, rows, group, dt = s.n, s.k, s.rows, s.group, s.dtype
    nbr, ksteps = s.block_rows, s.group // 16
    cfg = effective(s, cfg)
    warps, nt, ck, look = cfg.warps, cfg.n_tiles, cfg.chunk, cfg.look
    tile_m = 8 * nt
    row_tiles = n // 16
    sparse_walk = rows == 16
    stride = ck + PAD
    copies = tile_m * ck // 8 // (warps * 32)  # 16-byte copies per thread per chunk
    assert copies * warps * 32 * 8 == tile_m * ck, f"{cfg} does not split the staged tile evenly"
    per_chunk = ck // group  # column groups per chunk
    half2 = s.interleaved

    def popc(v):
        return T.call_extern("int32", "__popc", T.Cast("uint32", v))

    @T.macro
    def a_fragment(ks, t, qw, zr, sc, blk, rib, keep, a32, cw):
        """The A registers of one 16 x 16 k-step: rows g and g + 8 of blocks blk[0], blk[1] (row rib[h] in its
        block), columns 2t.. and 2t + 8..; zero where keep[h] is 0. Register 2q + h holds row g + 8h."""
        for h in T.unroll(2):
            if half2:  # one LOP3 per code pair, then (c - z) exactly and * s once, in fp16 pairs
                if sparse_walk:  # (one 8-byte load made R = 16 1-2% slower, R < 16 5-17% faster)
                    for q in T.unroll(2):
                        cw[h * 2 + q] = qw[blk[h], rib[h], ks * 2 + q]
                else:
                    for q in T.vectorized(2):  # both code words of the k-step in one 8-byte load
                        cw[h * 2 + q] = qw[blk[h], rib[h], ks * 2 + q]
                for q in T.unroll(2):
                    T.ptx.sub.f16x2(a32[q * 2 + h], ((cw[h * 2 + q] >> T.Cast("uint32", t * 4))
                                                     & T.uint32(0x000F000F)) | T.uint32(0x64006400),
                                    (T.uint32(0x6400) + T.Cast("uint32", zr[blk[h], rib[h]])) * T.uint32(0x10001))
                    T.ptx.mul.rn.f16x2(a32[q * 2 + h], a32[q * 2 + h], T.Cast(
                        "uint32", T.reinterpret("uint16", sc[blk[h], rib[h]])) * T.uint32(0x10001))
                    a32[q * 2 + h] = a32[q * 2 + h] * T.Cast("uint32", keep[h])
            else:  # any bits: each value in fp32, rounded to fp16 once, packed in pairs
                for q in T.unroll(2):
                    a32[q * 2 + h] = T.uint32(0)
                    for e in T.unroll(2):
                        a32[q * 2 + h] = a32[q * 2 + h] | (T.Cast("uint32", T.reinterpret("uint16", T.Cast(dt, (code(
                            qw[blk[h], rib[h], (ks * 16 + t * 2 + q * 8 + e) // s.per_word],
                            ks * 16 + t * 2 + q * 8 + e, s) - T.Cast("float32", zr[blk[h], rib[h]]))
                            * T.Cast("float32", sc[blk[h], rib[h]]) * T.Cast("float32", keep[h])))) << T.uint32(16 * e))

    @T.prim_func
    def bsr_prefill(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, sc_h: T.handle,
                    zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        nnz = T.int32()
        x = T.match_buffer(x_h, (m, k), dt)
        indptr = T.match_buffer(indptr_h, (nbr + 1,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, rows, s.words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, rows), "float16")
        zr = T.match_buffer(zr_h, (nnz, rows), "uint8")
        y = T.match_buffer(y_h, (m, n), dt)
        for by in T.thread_binding((m + tile_m - 1) // tile_m, thread="blockIdx.y"):
            for bx in T.thread_binding((row_tiles + warps - 1) // warps, thread="blockIdx.x"):
                for ty in T.thread_binding(warps, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        xs = T.alloc_buffer((tile_m * stride,), dt, scope="shared")
                        acc = T.alloc_buffer((nt * 4,), "float32", scope="local")
                        a32 = T.alloc_buffer((4,), "uint32", scope="local")
                        cw = T.alloc_buffer((4,), "uint32", scope="local")  # the code words of a k-step
                        blk = T.alloc_buffer((2,), "int32", scope="local")
                        rib = T.alloc_buffer((2,), "int32", scope="local")
                        keep = T.alloc_buffer((2,), "int32", scope="local")
                        end = T.alloc_buffer((2,), "int32", scope="local")
                        bf = T.alloc_buffer((8,), dt, scope="local")
                        cur = T.alloc_buffer((2,), "int32", scope="local")
                        grp = T.alloc_buffer((1,), "int32", scope="local")
                        hits = T.alloc_buffer((2,), "int32", scope="local")
                        st = T.alloc_buffer((copies * 4,), "uint32", scope="local")
                        g = tx // 4
                        t = tx % 4
                        tile = bx * warps + ty
                        for j in range(nt * 4):
                            acc[j] = T.float32(0)
                        for h in T.unroll(2):  # the walk's position in the block list (per row for R < 16)
                            cur[h] = indptr[T.min(tile * 16 + g + h * 8, n - 1) // rows]
                            end[h] = indptr[T.min(tile * 16 + g + h * 8, n - 1) // rows + 1]
                            rib[h] = (g + h * 8) % rows
                        for ch in range(k // ck):
                            for c in T.unroll(copies):  # 16 bytes per copy, all loads before any store
                                T.ptx.ld.global_.nc.v4.b32(
                                    st[c * 4], st[c * 4 + 1], st[c * 4 + 2], st[c * 4 + 3], x.ptr_to([
                                        T.min(by * tile_m + ((c * warps + ty) * 32 + tx) // (ck // 8), m - 1),
                                        ch * ck + ((c * warps + ty) * 32 + tx) % (ck // 8) * 8]))
                            T.tvm_storage_sync("shared")
                            for c in T.unroll(copies):
                                T.ptx.st.shared.v4.b32(
                                    xs.ptr_to([((c * warps + ty) * 32 + tx) // (ck // 8) * stride
                                               + ((c * warps + ty) * 32 + tx) % (ck // 8) * 8]),
                                    st[c * 4], st[c * 4 + 1], st[c * 4 + 2], st[c * 4 + 3])
                            T.tvm_storage_sync("shared")
                            if tile < row_tiles:
                                if sparse_walk:
                                    while cur[0] < end[0] and T.Cast(
                                            "int32", indices[T.min(cur[0], nnz - 1)]) < (ch + 1) * per_chunk:
                                        for h in T.unroll(2):
                                            blk[h] = cur[0]
                                            keep[h] = 1
                                        for ks in T.unroll(ksteps):
                                            a_fragment(ks, t, qw, zr, sc, blk, rib, keep, a32, cw)
                                            for jp in T.unroll(nt // 2):
                                                T.ptx_legacy.ldmatrix(
                                                    False, 4, ".b16", bf.data, 0, xs.data,
                                                    ((jp * 2 + tx // 16) * 8 + tx % 8) * stride
                                                    + (T.Cast("int32", indices[cur[0]]) - ch * per_chunk) * group
                                                    + ks * 16 + tx // 8 % 2 * 8, dtype=dt)
                                                for e in T.unroll(2):
                                                    T.ptx_legacy.mma("m16n8k16", "row", "col", "float16", "float16",
                                                                     "float32", a32.data, 0, bf.data, e * 4, acc.data,
                                                                     (jp * 2 + e) * 4, False, dtype="float32")
                                        cur[0] = cur[0] + 1
                                else:
                                    # the row's kept blocks in this chunk, from one round of index loads: bit j of
                                    # hits[h] says column group j of the chunk is kept, so the weight loads of
                                    # ``look`` groups can issue together instead of waiting on one index each
                                    for h in T.unroll(2):
                                        hits[h] = 0
                                        for p in T.unroll(per_chunk):  # the row's next blocks, as groups of this chunk
                                            grp[0] = T.Cast("int32", indices[T.min(cur[h] + p, nnz - 1)]) - ch * per_chunk
                                            hits[h] = hits[h] | T.if_then_else(
                                                cur[h] + p < end[h] and grp[0] >= 0 and grp[0] < per_chunk,
                                                1 << T.max(T.min(grp[0], 30), 0), 0)
                                    for cq in T.serial(per_chunk // look):  # ``look`` groups' loads in flight at once
                                        for cl in T.unroll(look):
                                            for h in T.unroll(2):  # group j is block cur + (kept groups before j)
                                                blk[h] = T.min(cur[h] + popc(hits[h] & ((1 << (cq * look + cl)) - 1)), nnz - 1)
                                                keep[h] = (hits[h] >> (cq * look + cl)) & 1
                                            for ks in T.unroll(ksteps):
                                                a_fragment(ks, t, qw, zr, sc, blk, rib, keep, a32, cw)
                                                for jp in T.unroll(nt // 2):
                                                    T.ptx_legacy.ldmatrix(
                                                        False, 4, ".b16", bf.data, 0, xs.data,
                                                        ((jp * 2 + tx // 16) * 8 + tx % 8) * stride + (cq * look + cl) * group
                                                        + ks * 16 + tx // 8 % 2 * 8, dtype=dt)
                                                    for e in T.unroll(2):
                                                        T.ptx_legacy.mma("m16n8k16", "row", "col", "float16", "float16",
                                                                         "float32", a32.data, 0, bf.data, e * 4, acc.data,
                                                                         (jp * 2 + e) * 4, False, dtype="float32")
                                    for h in T.unroll(2):
                                        cur[h] = cur[h] + popc(hits[h])
                        if tile < row_tiles:
                            for j in T.unroll(nt):
                                for h in T.unroll(2):
                                    for e in T.unroll(2):
                                        if by * tile_m + j * 8 + t * 2 + e < m:
                                            y[by * tile_m + j * 8 + t * 2 + e, tile * 16 + g + h * 8] = T.Cast(
                                                dt, acc[j * 4 + h * 2 + e])

    return bsr_prefill
