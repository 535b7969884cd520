"""What every kernel family shares: the BSR int-k layout's constants and the dequantization expression."""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .layout import nibble
from .warp_plan import stream_len

FULL = T.uint32(0xFFFFFFFF)  # every lane of a warp: the mask of a shuffle all 32 lanes meet at
SMS = 132  # SMs of an H100 / H200 SXM, the parts the CUDA kernels are tuned on


WEIGHT_HINT = "n"  # the decode GEMVs' weight loads skip L1 (H100, tags "cache hints" and "cache hints 2" in
# docs/perf.md: the row kernel at M = 1 1.03-1.16x faster plain, 0.99-1.16x with PDL; the stream kernel 1.02-1.06x;
# the tensor-core GEMV 1.00-1.04x past 3 tiles an SM and 0.97-1.01x below, where for_shape leaves it out)


def weight_load(hint: str = ""):
    """``ld.global.nc`` (add ``.v2.b32`` etc.) for weights, which every call reads once: with ``hint`` "n" not kept
    in L1 (``.L1::no_allocate``), "f" evicted from L1 first (``.L1::evict_first``), "p" fetched into L2 256 bytes at
    a time (``.L2::256B``, the prefetch-size hint); "n" and "f" are one PTX slot, so not both."""
    assert set(hint) <= set("nfp") and not {"n", "f"} <= set(hint), hint
    op = T.ptx.ld.global_.nc
    if "n" in hint:
        op = op.L1__no_allocate
    if "f" in hint:
        op = op.L1__evict_first
    if "p" in hint:
        op = op.L2__256B
    return op


@dataclass(frozen=True)
class BSRShape:
    """A compressed Linear's static description: y[M, n] = x[M, k] @ W^T, W in R x G blocks of ``bits``."""

    n: int
    k: int
    bits: int
    group: int
    rows: int
    dtype: str = "float16"  # activations
    interleaved: bool = False  # 4-bit codes in half2 pair order (tvm_schedules.layout)
    packed: bool = False  # block metadata in one uint32 per block (layout.pack_metadata): the kernel takes
    # (x, indptr, indices, qweight, y), no scales or zero points
    stream: int = 0  # thread blocks of the stream GEMV's plan appended to indptr (warp_plan.stream); 0: none

    def __post_init__(self):
        # the artifact's code order is one flag for all matrices; other widths keep the checkpoint order
        object.__setattr__(self, "interleaved", self.interleaved and self.bits == 4)
        if self.packed and not packable(self.bits, self.rows, self.k, self.group):
            raise ValueError(f"block metadata packs for 4-bit R = 1 matrices of < 4096 column groups, not {self}")

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def words(self) -> int:
        return -(-self.group // self.per_word)

    @property
    def block_rows(self) -> int:
        return self.n // self.rows

    @property
    def indptr_len(self) -> int:
        """indptr's length: the block rows + 1, and the stream plan where there is one."""
        return stream_len(self.block_rows, self.stream) if self.stream else self.block_rows + 1

    @property
    def key(self) -> str:
        return f"n{self.n}_k{self.k}_b{self.bits}_g{self.group}_r{self.rows}_{self.dtype}" + (
            "_il" if self.interleaved else "") + ("_pm" if self.packed else "") + (
            f"_st{self.stream}" if self.stream else "")


def packable(bits: int, rows: int, k: int, group: int) -> bool:
    """Whether a matrix's block metadata fits one uint32 per block: 4-bit zero points, one row per block, a
    12-bit column group."""
    return bits == 4 and rows == 1 and k // group <= 4096


def word_column(w):
    """A packed metadata word's column group (layout.pack_metadata: scale << 16 | zero << 12 | column)."""
    return w & T.uint32(0xFFF)


def word_zero(w):
    """A packed metadata word's zero point."""
    return (w >> T.uint32(12)) & T.uint32(0xF)


def word_scale_bits(w):
    """A packed metadata word's fp16 scale, as its bits."""
    return w >> T.uint32(16)


def column(s: BSRShape, indices, b):
    """Block ``b``'s column group, int32."""
    return T.Cast("int32", word_column(indices[b]) if s.packed else indices[b])


def zero_bits(s: BSRShape, indices, zr, b, r):
    """Row ``r`` of block ``b``: its zero point, uint32."""
    return word_zero(indices[b]) if s.packed else T.Cast("uint32", zr[b, r])


def scale_bits(s: BSRShape, indices, sc, b, r):
    """Row ``r`` of block ``b``: its fp16 scale's bits, uint32."""
    return word_scale_bits(indices[b]) if s.packed else T.Cast("uint32", T.reinterpret("uint16", sc[b, r]))


def scale(s: BSRShape, indices, sc, b, r):
    """Row ``r`` of block ``b``: its scale, float32."""
    if s.packed:
        return T.Cast("float32", T.reinterpret("float16", T.Cast("uint16", word_scale_bits(indices[b]))))
    return T.Cast("float32", sc[b, r])


def code(word, i: int | T.PrimExpr, s: BSRShape):
    """Integer code ``i`` (0..G-1) of a group from its packed uint32 word, as fp32."""
    pos = nibble(i) if s.interleaved else i % s.per_word
    shift = T.Cast("uint32", pos * s.bits)
    return T.Cast("float32", (word >> shift) & T.uint32(2**s.bits - 1))


def is_gpu(target) -> bool:
    return target.kind.name in ("cuda", "rocm", "metal", "vulkan", "opencl")


def slab(rows: int) -> int:
    """fp16 between 8-column slabs of a wgmma tile (its descriptor's leading-dimension byte offset / 2): the
    K-major core matrices of ``rows`` rows, then 16 bytes so that a row's slabs land in different banks."""
    return rows // 8 * 64 + 8


def bsr_func(s: BSRShape, body, tokens: int | None = None, nnz_dtype: str = "int32", indptr_len: int | None = None):
    """The PrimFunc ``(x, indptr, indices, qweight, scales, zeros, y)`` around ``body``, a T.macro taking
    ``(x, indptr, indices, qw, sc, zr, y, m, nnz)``; with packed metadata (BSRShape.packed) the PrimFunc has no
    scales and zeros and ``body`` gets None for them. ``tokens``: M, static, or None for a symbolic int64 one;
    ``indptr_len``: indptr's length where not BSRShape.indptr_len (the decode warp plan). One definition of
    the signatures for every family (TVMScript functions have a fixed parameter list)."""
    n, k, rows, words, dt = s.n, s.k, s.rows, s.words, s.dtype
    ind = indptr_len or s.indptr_len

    if s.packed:
        @T.prim_func
        def bsr_packed(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            m = T.int64()
            nnz = T.int32() if nnz_dtype == "int32" else T.int64()
            x = T.match_buffer(x_h, (m if tokens is None else tokens, k), dt)
            indptr = T.match_buffer(indptr_h, (ind,), "int32")
            indices = T.match_buffer(indices_h, (nnz,), "uint32")
            qw = T.match_buffer(qw_h, (nnz, rows, words), "uint32")
            y = T.match_buffer(y_h, (m if tokens is None else tokens, n), dt)
            body(x, indptr, indices, qw, None, None, y, m if tokens is None else tokens, nnz)

        return bsr_packed

    @T.prim_func
    def bsr(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, sc_h: T.handle,
            zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        nnz = T.int32() if nnz_dtype == "int32" else T.int64()
        x = T.match_buffer(x_h, (m if tokens is None else tokens, k), dt)
        indptr = T.match_buffer(indptr_h, (ind,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, rows, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, rows), "float16")
        zr = T.match_buffer(zr_h, (nnz, rows), "uint8")
        y = T.match_buffer(y_h, (m if tokens is None else tokens, n), dt)
        body(x, indptr, indices, qw, sc, zr, y, m if tokens is None else tokens, nnz)

    return bsr
