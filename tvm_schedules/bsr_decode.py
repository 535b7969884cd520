"""BSR int-k GEMV for decode on CUDA (M = 1..8 token rows).

One warp per block row; its 32 lanes stride over the row's kept blocks, so rows with more blocks simply
loop more (per-layer sparsity stays correct). Each lane keeps M x R fp32 partial sums, reduced across the
warp through shared memory. Memory-bound by design: every weight byte is read exactly once per call.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .common import BSRShape, code

WARPS = 4


def bsr_decode_cuda(s: BSRShape, m: int):
    n, k, rows, group, words, per, dt = s.n, s.k, s.rows, s.group, s.words, s.per_word, s.dtype
    nbr = s.block_rows
    acc_n = m * rows

    @T.prim_func
    def bsr_decode(x_h: T.handle, indptr_h: T.handle, indices_h: T.handle, qw_h: T.handle, sc_h: T.handle,
                   zr_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        nnz = T.int64()
        x = T.match_buffer(x_h, (m, k), dt)
        indptr = T.match_buffer(indptr_h, (nbr + 1,), "int32")
        indices = T.match_buffer(indices_h, (nnz,), "uint16")
        qw = T.match_buffer(qw_h, (nnz, rows, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, rows), "float16")
        zr = T.match_buffer(zr_h, (nnz, rows), "uint8")
        y = T.match_buffer(y_h, (m, n), dt)
        for bx in T.thread_binding((nbr + WARPS - 1) // WARPS, thread="blockIdx.x"):
            for ty in T.thread_binding(WARPS, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer((acc_n,), "float32", scope="local")
                    red = T.alloc_buffer((WARPS, 32), "float32", scope="shared")
                    for j in range(acc_n):
                        acc[j] = T.float32(0)
                    br = bx * WARPS + ty
                    if br < nbr:
                        start = indptr[br]
                        for it in range((indptr[br + 1] - start + 31 - tx) // 32):
                            b = start + tx + it * 32
                            col = T.Cast("int32", indices[b]) * group
                            for r in range(rows):
                                scale = T.Cast("float32", sc[b, r])
                                zero = T.Cast("float32", zr[b, r])
                                for w in range(words):
                                    word = qw[b, r, w]
                                    for jj in T.unroll(per):
                                        if w * per + jj < group:
                                            wv = (code(word, jj, s) - zero) * scale
                                            for i in range(m):
                                                acc[i * rows + r] = acc[i * rows + r] + wv * T.Cast(
                                                    "float32", x[i, col + w * per + jj])
                    for j in range(acc_n):
                        red[ty, tx] = acc[j]
                        T.tvm_storage_sync("shared")
                        if tx == 0 and br < nbr:
                            total = T.alloc_buffer((1,), "float32", scope="local")
                            total[0] = T.float32(0)
                            for l in range(32):
                                total[0] = total[0] + red[ty, l]
                            y[j // rows, br * rows + j % rows] = T.Cast(dt, total[0])
                        T.tvm_storage_sync("shared")

    return bsr_decode
