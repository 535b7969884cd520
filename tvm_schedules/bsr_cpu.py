"""BSR int-k matmul for CPUs (llvm): one kernel for every M, block rows spread over cores.

A block row's R x G block is dequantized once per token row and multiplied into R fp32 accumulators.
Correct and portable; the GPU families are where speed is pursued.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .common import BSRShape, code


def bsr_matmul_cpu(s: BSRShape):
    n, k, rows, group, words, per, dt = s.n, s.k, s.rows, s.group, s.words, s.per_word, s.dtype

    @T.prim_func
    def bsr_matmul(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, sc_h: T.handle,
                   zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        nnz = T.int64()
        x = T.match_buffer(x_h, (m, k), dt)
        indptr = T.match_buffer(indptr_h, (s.block_rows + 1,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, rows, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, rows), "float16")
        zr = T.match_buffer(zr_h, (nnz, rows), "uint8")
        y = T.match_buffer(y_h, (m, n), dt)
        for br in T.parallel(s.block_rows):
            acc = T.alloc_buffer((rows,), "float32")
            for i in range(m):
                for r in range(rows):
                    acc[r] = T.float32(0)
                for b in T.serial(indptr[br], indptr[br + 1]):
                    col = T.Cast("int64", indices[b]) * group
                    for r in range(rows):
                        scale = T.Cast("float32", sc[b, r])
                        zero = T.Cast("float32", zr[b, r])
                        for j in range(group):
                            acc[r] = acc[r] + (code(qw[b, r, j // per], j, s) - zero) * scale * T.Cast(
                                "float32", x[i, col + j])
                for r in range(rows):
                    y[i, br * rows + r] = T.Cast(dt, acc[r])

    return bsr_matmul
