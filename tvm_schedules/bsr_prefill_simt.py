"""BSR int-k matmul on CUDA for any M without tensor cores: one thread per (token row, block row).

Threads of a thread block share a block row, so every weight word is a broadcast load served once from
L1/L2 for 64 token rows; activations are read per thread. The fallback where bsr_prefill (mma) does not
apply: G = 8, or fp32 activations.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .common import BSRShape, code

TM = 64


def bsr_prefill_simt(s: BSRShape):
    n, k, rows, group, words, per, dt = s.n, s.k, s.rows, s.group, s.words, s.per_word, s.dtype
    nbr = s.block_rows

    @T.prim_func
    def bsr_prefill(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, sc_h: T.handle,
                    zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        nnz = T.int64()
        x = T.match_buffer(x_h, (m, k), dt)
        indptr = T.match_buffer(indptr_h, (nbr + 1,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, rows, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, rows), "float16")
        zr = T.match_buffer(zr_h, (nnz, rows), "uint8")
        y = T.match_buffer(y_h, (m, n), dt)
        for br in T.thread_binding(nbr, thread="blockIdx.y"):
            for bx in T.thread_binding((m + TM - 1) // TM, thread="blockIdx.x"):
                for tx in T.thread_binding(TM, thread="threadIdx.x"):
                    acc = T.alloc_buffer((rows,), "float32", scope="local")
                    i = bx * TM + tx
                    if i < m:
                        for r in range(rows):
                            acc[r] = T.float32(0)
                        for b in T.serial(indptr[br], indptr[br + 1]):
                            col = T.Cast("int64", indices[b]) * group
                            for r in range(rows):
                                scale = T.Cast("float32", sc[b, r])
                                zero = T.Cast("float32", zr[b, r])
                                for w in range(words):
                                    word = qw[b, r, w]
                                    for jj in T.unroll(per):
                                        if w * per + jj < group:
                                            acc[r] = acc[r] + (code(word, jj, s) - zero) * scale * T.Cast(
                                                "float32", x[i, col + w * per + jj])
                        for r in range(rows):
                            y[i, br * rows + r] = T.Cast(dt, acc[r])

    return bsr_prefill
