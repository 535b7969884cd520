"""Token embedding rows dequantized straight from the full-density BSR table (the tied lm_head's weights).

Row ``v`` of the table is block row ``v``: its blocks are indptr[v] .. indptr[v]+K/G-1 in column order.
"""
from __future__ import annotations

from tvm.script import tirx as T

from .common import BSRShape, code

NT = 256


def embedding(s: BSRShape, gpu: bool):
    k, group, words, per, dt, vocab = s.k, s.group, s.words, s.per_word, s.dtype, s.n

    @T.prim_func
    def embed_gpu(ids_h: T.handle, indptr_h: T.handle, qw_h: T.handle, sc_h: T.handle, zr_h: T.handle,
                  out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        nnz = T.int64()
        ids = T.match_buffer(ids_h, (t,), "int32")
        indptr = T.match_buffer(indptr_h, (vocab + 1,), "int32")
        qw = T.match_buffer(qw_h, (nnz, 1, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, 1), "float16")
        zr = T.match_buffer(zr_h, (nnz, 1), "uint8")
        out = T.match_buffer(out_h, (t, k), dt)
        for bt in T.thread_binding(t, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for it in range((k + NT - 1 - tx) // NT):
                    c = tx + it * NT
                    b = indptr[ids[bt]] + c // group
                    j = c % group
                    out[bt, c] = T.Cast(dt, (code(qw[b, 0, j // per], j, s) - T.Cast("float32", zr[b, 0]))
                                        * T.Cast("float32", sc[b, 0]))

    @T.prim_func
    def embed_cpu(ids_h: T.handle, indptr_h: T.handle, qw_h: T.handle, sc_h: T.handle, zr_h: T.handle,
                  out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        nnz = T.int64()
        ids = T.match_buffer(ids_h, (t,), "int32")
        indptr = T.match_buffer(indptr_h, (vocab + 1,), "int32")
        qw = T.match_buffer(qw_h, (nnz, 1, words), "uint32")
        sc = T.match_buffer(sc_h, (nnz, 1), "float16")
        zr = T.match_buffer(zr_h, (nnz, 1), "uint8")
        out = T.match_buffer(out_h, (t, k), dt)
        for bt in range(t):
            for c in range(k):
                b = indptr[ids[bt]] + c // group
                j = c % group
                out[bt, c] = T.Cast(dt, (code(qw[b, 0, j // per], j, s) - T.Cast("float32", zr[b, 0]))
                                    * T.Cast("float32", sc[b, 0]))

    return embed_gpu if gpu else embed_cpu
