"""Write T new key (or value) rows into the preallocated cache at ``positions``, in place.

Called through ``relax.call_tir_inplace``: the cache buffer is both input and output, so a generated
token costs one row written, never a copy of the cache.
"""
from __future__ import annotations

from tvm.script import tirx as T

NT = 256


def kv_append(n_kv: int, head_dim: int, cache_len: int, dt: str, gpu: bool):
    width = n_kv * head_dim

    @T.prim_func
    def kv_append_gpu(c_h: T.handle, new_h: T.handle, pos_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        cache = T.match_buffer(c_h, (cache_len, n_kv, head_dim), dt)
        new = T.match_buffer(new_h, (t, n_kv, head_dim), dt)
        pos = T.match_buffer(pos_h, (t,), "int32")
        for bt in T.thread_binding(t, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                for it in range((width + NT - 1 - tx) // NT):
                    e = tx + it * NT
                    cache[pos[bt], e // head_dim, e % head_dim] = new[bt, e // head_dim, e % head_dim]

    @T.prim_func
    def kv_append_cpu(c_h: T.handle, new_h: T.handle, pos_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        t = T.int64()
        cache = T.match_buffer(c_h, (cache_len, n_kv, head_dim), dt)
        new = T.match_buffer(new_h, (t, n_kv, head_dim), dt)
        pos = T.match_buffer(pos_h, (t,), "int32")
        for bt in range(t):
            for h in range(n_kv):
                for d in range(head_dim):
                    cache[pos[bt], h, d] = new[bt, h, d]

    return kv_append_gpu if gpu else kv_append_cpu
