"""Causal attention of T new query rows over a preallocated KV cache (grouped-query heads).

Query row t sees cache positions 0 .. positions[t]; the cache has already been written at ``positions``
(kv_cache.py), so prefill and decode are the same kernel with a different T. Softmax in fp32.
CUDA: one thread block per (row, head); scores live in shared memory (the cache length is static).
Shared memory is never read-modified-written inside a loop whose trip count depends on the thread:
TVM would put a __syncthreads() there, which deadlocks (seen on an H100).
CPU: the same algorithm with plain loops, parallel over rows.
"""
from __future__ import annotations

import math

from tvm.script import tirx as T

NT = 128


def attention_cuda(n_heads: int, n_kv: int, head_dim: int, cache_len: int, dt: str):
    group, D, S = n_heads // n_kv, head_dim, cache_len
    scale = 1.0 / math.sqrt(head_dim)

    @T.prim_func
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, pos_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        q = T.match_buffer(q_h, (t, n_heads, D), dt)
        kc = T.match_buffer(k_h, (S, n_kv, D), dt)
        vc = T.match_buffer(v_h, (S, n_kv, D), dt)
        pos = T.match_buffer(pos_h, (t,), "int32")
        o = T.match_buffer(o_h, (t, n_heads, D), dt)
        for bt in T.thread_binding(t, thread="blockIdx.x"):
            for h in T.thread_binding(n_heads, thread="blockIdx.y"):
                for tx in T.thread_binding(NT, thread="threadIdx.x"):
                    scores = T.alloc_buffer((S,), "float32", scope="shared")
                    qs = T.alloc_buffer((D,), "float32", scope="shared")
                    red = T.alloc_buffer((NT,), "float32", scope="shared")
                    stat = T.alloc_buffer((2,), "float32", scope="shared")
                    part = T.alloc_buffer((1,), "float32", scope="local")
                    dot = T.alloc_buffer((1,), "float32", scope="local")
                    length = pos[bt] + 1
                    kvh = h // group
                    for it in range((D + NT - 1 - tx) // NT):
                        qs[tx + it * NT] = T.Cast("float32", q[bt, h, tx + it * NT]) * T.float32(scale)
                    T.tvm_storage_sync("shared")
                    part[0] = T.float32(-3.0e38)
                    for it in range((length + NT - 1 - tx) // NT):
                        j = tx + it * NT
                        dot[0] = T.float32(0)
                        for d in range(D):
                            dot[0] = dot[0] + qs[d] * T.Cast("float32", kc[j, kvh, d])
                        scores[j] = dot[0]
                        part[0] = T.max(part[0], dot[0])
                    red[tx] = part[0]
                    T.tvm_storage_sync("shared")
                    if tx == 0:
                        part[0] = red[0]
                        for l in range(1, NT):
                            part[0] = T.max(part[0], red[l])
                        stat[0] = part[0]
                    T.tvm_storage_sync("shared")
                    part[0] = T.float32(0)
                    for it in range((length + NT - 1 - tx) // NT):  # read-only: no sync inside
                        part[0] = part[0] + T.exp(scores[tx + it * NT] - stat[0])
                    red[tx] = part[0]
                    T.tvm_storage_sync("shared")
                    if tx == 0:
                        part[0] = T.float32(0)
                        for l in range(NT):
                            part[0] = part[0] + red[l]
                        stat[1] = part[0]
                    T.tvm_storage_sync("shared")
                    for it in range((D + NT - 1 - tx) // NT):
                        d = tx + it * NT
                        dot[0] = T.float32(0)
                        for j in range(length):
                            dot[0] = dot[0] + T.exp(scores[j] - stat[0]) * T.Cast("float32", vc[j, kvh, d])
                        o[bt, h, d] = T.Cast(dt, dot[0] / stat[1])

    return attention


def attention_cpu(n_heads: int, n_kv: int, head_dim: int, cache_len: int, dt: str):
    group, D, S = n_heads // n_kv, head_dim, cache_len
    scale = 1.0 / math.sqrt(head_dim)

    @T.prim_func
    def attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, pos_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        q = T.match_buffer(q_h, (t, n_heads, D), dt)
        kc = T.match_buffer(k_h, (S, n_kv, D), dt)
        vc = T.match_buffer(v_h, (S, n_kv, D), dt)
        pos = T.match_buffer(pos_h, (t,), "int32")
        o = T.match_buffer(o_h, (t, n_heads, D), dt)
        for bt in T.parallel(t):
            scores = T.alloc_buffer((S,), "float32")
            acc = T.alloc_buffer((D,), "float32")
            stat = T.alloc_buffer((3,), "float32")  # max, sum, dot
            for h in range(n_heads):
                kvh = h // group
                stat[0] = T.float32(-3.0e38)
                for j in range(pos[bt] + 1):
                    stat[2] = T.float32(0)
                    for d in range(D):
                        stat[2] = stat[2] + T.Cast("float32", q[bt, h, d]) * T.Cast("float32", kc[j, kvh, d])
                    scores[j] = stat[2] * T.float32(scale)
                    stat[0] = T.max(stat[0], scores[j])
                stat[1] = T.float32(0)
                for d in range(D):
                    acc[d] = T.float32(0)
                for j in range(pos[bt] + 1):
                    scores[j] = T.exp(scores[j] - stat[0])
                    stat[1] = stat[1] + scores[j]
                    for d in range(D):
                        acc[d] = acc[d] + scores[j] * T.Cast("float32", vc[j, kvh, d])
                for d in range(D):
                    o[bt, h, d] = T.Cast(dt, acc[d] / stat[1])

    return attention
