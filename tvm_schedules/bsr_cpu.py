"""BSR int-k matmul for CPUs (llvm): one kernel for every M, block rows spread over cores.

A block row's R x G block is dequantized once per token row and multiplied into R fp32 accumulators.
Correct and portable; the GPU families are where speed is pursued. It also reads packed block metadata
(BSRShape.packed), so CPU tests check the CUDA artifacts' layout end to end.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .common import BSRShape, bsr_func, code, column, scale, zero_bits


def bsr_matmul_cpu(s: BSRShape):
    rows, group, per, dt = s.rows, s.group, s.per_word, s.dtype

    @T.macro
    def body(x, indptr, indices, qw, sc, zr, y, m, nnz):
        for br in T.parallel(s.block_rows):
            acc = T.alloc_buffer((rows,), "float32")
            for i in range(m):
                for r in range(rows):
                    acc[r] = T.float32(0)
                for b in T.serial(indptr[br], indptr[br + 1]):
                    col = T.Cast("int64", column(s, indices, b)) * group
                    for r in range(rows):
                        w_scale = scale(s, indices, sc, b, r)
                        zero = T.Cast("float32", zero_bits(s, indices, zr, b, r))
                        for j in range(group):
                            acc[r] = acc[r] + (code(qw[b, r, j // per], j, s) - zero) * w_scale * T.Cast(
                                "float32", x[i, col + j])
                for r in range(rows):
                    y[i, br * rows + r] = T.Cast(dt, acc[r])

    return bsr_func(s, body, nnz_dtype="int64")
