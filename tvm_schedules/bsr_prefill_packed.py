"""BSR int4 prefill on Hopper (sm_90a), experiment: weights dequantized inside the GEMM, weights as wgmma's A.

bsr_prefill_wgmma writes every weight as fp16 to a scratch and reads it back (7-10% of its time at 4096 tokens,
29-41% at 512). Expanding the weights inside its GEMM from a packed copy measured 0.73-0.80x its speed: one
dequantizing warpgroup could not expand a 256-row tile's chunk while two consumer warpgroups multiplied it by
128 tokens. Here the tile is turned around: wgmma's A operand is the weights (64 rows per consumer warpgroup, 128
per thread block) and its B operand the tokens (256), so a chunk's multiply-adds need half as many dequantized
weights.

- the first launch packs the weights still quantized in 128-row tiles (bsr_prefill_wgmma._dequant_pass(packed=True):
  1 byte per weight);
- the GEMM: 2 consumer warpgroups (m64n256k16, 64 weight rows x 256 tokens each), and a dequantizing warpgroup
  whose first thread copies each chunk's packed tile into a ring of its own (bulk copy) and the chunk's 256 tokens
  into the wgmma ring (TMA), while the warpgroup expands the packed tile into the wgmma ring's swizzled fp16 tile;
- the epilogue writes y[token, row] (the accumulators hold row x token) through swizzled [tokens, 64 rows] boxes
  and TMA, like bsr_prefill_wgmma's.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from . import bsr_prefill_wgmma as w
from .common import BSRShape

ROWS, TOKENS = 128, 256  # weight rows (wgmma's M, two warpgroups) and tokens (wgmma's N) per thread block


@dataclass(frozen=True)
class PackedConfig:
    stages: int = 4  # chunks in the wgmma ring
    raw_stages: int = 2  # chunks in the packed weights' ring
    early: bool = False  # refill the packed ring from the chunk before's stage, mid-chunk, not after a barrier

    @property
    def key(self) -> str:
        return f"pk{ROWS}x{TOKENS}p{self.stages}q{self.raw_stages}" + ("e" if self.early else "")


def ring_bytes(cfg: PackedConfig) -> int:
    return 2 * (cfg.stages * (w.tile_halves(ROWS) + w.tile_halves(TOKENS)) + w.ATOM
                + cfg.raw_stages * w.packed_words(ROWS) * 2)


def supports(s: BSRShape, cfg: PackedConfig = PackedConfig()) -> bool:
    return w.supports(s, w.SMALL) and ring_bytes(cfg) <= w.MAX_SMEM


def launch(s: BSRShape, cfg: PackedConfig):
    """The two launches as a macro ``run(x, indptr, indices, qw, sc, zr, y2, m)``."""
    assert supports(s, cfg), (s, cfg)
    n, k, dt = s.n, s.k, s.dtype
    br, bt, stages, raw = ROWS, TOKENS, cfg.stages, cfg.raw_stages
    ck, nch, pieces = w.CHUNK, k // w.CHUNK, w.CHUNK // 8
    threads = 256  # the consumers; the dequantizing warpgroup after them
    wsize, xsize = w.tile_halves(br), w.tile_halves(bt)
    stage = wsize + xsize
    pw = w.packed_words(br)
    steps = br // 16  # the dequantizing warpgroup expands 16 rows a step
    ring = ring_bytes(cfg) // 2
    xmap = T.Var("x_tensormap", ty=T.handle("tensormap").ty)
    ymap = T.Var("y_tensormap", ty=T.handle("tensormap").ty)
    prepass = w._dequant_pass(s, br, packed=True)

    @T.macro
    def wait_bar(bars, i, parity, ready):
        ready[0] = T.uint32(0)
        while ready[0] == T.uint32(0):
            T.ptx.mbarrier.try_wait.parity.shared__cta.b64(ready[0], bars.ptr_to([i]), T.Cast("uint32", parity))

    @T.macro
    def multiply(sm, acc, da, db, wg, buf, base):
        T.ptx.wgmma.fence.sync.aligned()
        for ks in T.unroll(ck // 16):  # A: the warpgroup's 64 weight rows; B: the 256 tokens
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(da[0]), sm.ptr_to(
                [base + buf * stage + wg * 64 * ck + ks * 16]), 1, w.ATOM // 8, 3)
            T.cuda.wgmma.encode_matrix_descriptor(T.address_of(db[0]), sm.ptr_to(
                [base + buf * stage + wsize + ks * 16]), 1, w.ATOM // 8, 3)
            T.ptx.wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16(
                *[acc[i] for i in range(128)], da[0], db[0], T.ptx.pred(1), 1, 1, 0, 0)
        T.ptx.wgmma.commit_group.sync.aligned()

    @T.macro
    def copy_packed(sm, wd, bars, base, bx, ch):
        T.ptx.mbarrier.arrive.expect_tx.shared__cta.b64(bars.ptr_to([2 * stages + ch % raw]), T.uint32(pw * 4))
        T.ptx["cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"](
            sm.ptr_to([base + stages * stage + ch % raw * pw * 2]), wd.ptr_to([(bx * nch + ch) * pw * 2]),
            T.uint32(pw * 4), bars.ptr_to([2 * stages + ch % raw]))

    @T.macro
    def load_words(sm, dd, base, ch, d):
        for st in T.unroll(steps):
            T.ptx.ld.shared.u32(dd[5 + st * 3], sm.ptr_to([base + stages * stage + (
                ch % raw * pw + (st * 16 + d // 8) * pieces + (d % 8 ^ (st * 16 + d // 8) % 8)) * 2]))
            T.ptx.ld.shared.v2.u32(dd[6 + st * 3], dd[7 + st * 3], sm.ptr_to([base + stages * stage + (
                ch % raw * pw + br * pieces + (st * 16 + d // 8) * pieces + (d % 8 ^ (st * 16 + d // 8) % 8) // 2 * 2) * 2]))

    @T.macro
    def expand(sm, sm2, dd, base, ch, d):
        """Thread d's pieces of a chunk: in step st, row st * 16 + d // 8, the piece at slot d % 8 of its swizzled
        128-byte line; each step's three words loaded first (inline PTX: as ordinary loads of the ring TVM would
        want a barrier inside the warpgroup's branch). Codes in bits 4-7 of a byte or'ed into 0x6400 are the fp16
        1024 + 16 code, and (that / 16) - (64 + zero) is exact: one shift per word."""
        if not cfg.early:  # (early: loaded by the caller)
            load_words(sm, dd, base, ch, d)
        for st in T.unroll(steps):
            T.ptx.sub.f16x2(dd[4], T.uint32(0x63806380), dd[6 + st * 3])  # 960 - (1024 + zero)
            for h in T.unroll(2):  # codes of byte 0 and 2 (h = 0), then bytes 1 and 3; (a & b) | c in one LOP3
                T.ptx.lop3.b32(dd[2 * h], dd[5 + st * 3] >> T.uint32(8 * h), T.uint32(0x000F000F),
                               T.uint32(0x64006400), 0xEA)
                T.ptx.lop3.b32(dd[2 * h + 1], dd[5 + st * 3] >> T.uint32(8 * h), T.uint32(0x00F000F0),
                               T.uint32(0x64006400), 0xEA)
                T.ptx.sub.f16x2(dd[2 * h], dd[2 * h], dd[6 + st * 3])
                T.ptx.fma.rn.f16x2(dd[2 * h + 1], dd[2 * h + 1], T.uint32(0x2C002C00), dd[4])
            for v in T.unroll(4):
                T.ptx.mul.rn.f16x2(dd[v], dd[v], dd[7 + st * 3])
            for v in T.vectorized(4):
                sm2[(base + ch % stages * stage + (st * 16 + d // 8) * ck + d % 8 * 8) // 2 + v] = dd[v]

    @T.macro
    def store_tma(sm, acc, t0, bx, ty, tx, tid, base):
        """The accumulators (weight row x token) as fp16 into br / 64 swizzled [tokens, 64 rows] boxes at the
        ring's start, one 2-byte store each (a fragment's pairs are two tokens, not two rows), then out by TMA."""
        T.tvm_storage_sync("shared")
        if ty < threads // 32:
            for ni in T.unroll(bt // 8):
                for h in T.unroll(2):
                    for e in T.unroll(2):
                        sm[base + (ty * 16 + tx // 4 + h * 8) // 64 * bt * 64
                           + w.offset(ni * 8 + tx % 4 * 2 + e, (ty * 16 + tx // 4 + h * 8) % 64)] = T.Cast(
                            dt, acc[ni * 4 + h * 2 + e])
            T.ptx.fence.proxy.async_.shared__cta()
        T.tvm_storage_sync("shared")
        if tid == 0:
            for j in T.unroll(br // 64):
                T.ptx["cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group"](
                    T.address_of(ymap), T.Cast("int32", bx * br + j * 64), T.Cast("int32", t0),
                    sm.ptr_to([base + j * bt * 64]))
            T.ptx["cp.async.bulk.commit_group"]()
            T.ptx["cp.async.bulk.wait_group.read"](0)

    @T.macro
    def run(x, indptr, indices, qw, sc, zr, y2, m):
        wd = T.alloc_buffer((-(-n // br) * nch * pw * 2,), dt, scope="global")
        wd2 = T.decl_buffer((-(-n // br) * nch * pw,), "uint32", data=wd.data)
        prepass(indptr, indices, qw, sc, zr, wd2)
        T.Bind(T.tvm_stack_alloca("tensormap", 1), var=xmap)
        T.tensormap_encode_tiled(xmap, x.data, k, m, k * 2, ck, bt, 1, 1, descriptor_dtype=dt, rank=2, swizzle=3)
        T.Bind(T.tvm_stack_alloca("tensormap", 1), var=ymap)
        T.tensormap_encode_tiled(ymap, y2.data, n, m, n * 2, 64, bt, 1, 1, descriptor_dtype=dt, rank=2, swizzle=3)
        for bx in T.thread_binding((n + br - 1) // br, thread="blockIdx.y"):
            for by in T.thread_binding((m + bt - 1) // bt, thread="blockIdx.x"):
                for ty in T.thread_binding(threads // 32 + 4, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        with T.attr(0, "tirx.launch_bounds_min_blocks_per_sm", 1):
                            sm = T.alloc_buffer((ring,), dt, scope="shared.dyn")
                            sm2 = T.decl_buffer((ring // 2,), "uint32", data=sm.data, scope="shared.dyn")
                            acc = T.alloc_buffer((128,), "float32", scope="local")
                            da = T.alloc_buffer((1,), "uint64", scope="local")
                            db = T.alloc_buffer((1,), "uint64", scope="local")
                            dd = T.alloc_buffer((5 + steps * 3,), "uint32", scope="local")
                            tid = ty * 32 + tx
                            t0 = T.max(T.min(by * bt, m - bt), 0)
                            bars = T.alloc_buffer((2 * stages + 2 * raw,), "uint64", scope="shared")
                            ready = T.alloc_buffer((1,), "uint32", scope="local")
                            base = T.alloc_buffer((1,), "int32", scope="local")
                            base[0] = (w.ATOM - T.Cast("int32", T.call_extern(
                                "uint32", "__cvta_generic_to_shared", sm.ptr_to([0]))) // 2 % w.ATOM) % w.ATOM
                            for i in range(128):
                                acc[i] = T.float32(0)
                            if tid == threads:
                                sm[ring - 1] = T.Cast(dt, 0)
                                for i in range(stages):  # "full": the copy's arrival and the 128 dequantizing threads'
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([i]), T.uint32(129))
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([stages + i]), T.uint32(threads))
                                for j in range(raw):
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([2 * stages + j]), T.uint32(1))
                                    T.ptx.mbarrier.init.shared__cta.b64(bars.ptr_to([2 * stages + raw + j]), T.uint32(128))
                                T.ptx.fence.mbarrier_init.release.cluster()
                            T.tvm_storage_sync("shared")
                            if ty >= threads // 32:  # the dequantizing warpgroup, its first thread the producer
                                if tid == threads:
                                    for ch in range(min(raw, nch)):
                                        copy_packed(sm, wd, bars, base[0], bx, ch)
                                for ch in T.serial(nch):
                                    wait_bar(bars, 2 * stages + ch % raw, ch // raw % 2, ready)  # packed chunk in
                                    if ch >= stages:  # the consumers released chunk ch - stages
                                        wait_bar(bars, stages + ch % stages, (ch // stages - 1) % 2, ready)
                                    if tid == threads:
                                        T.ptx.mbarrier.arrive.expect_tx.shared__cta.b64(
                                            bars.ptr_to([ch % stages]), T.uint32(2 * xsize))
                                        T.ptx["cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"](
                                            sm.ptr_to([base[0] + ch % stages * stage + wsize]), T.address_of(xmap),
                                            T.Cast("int32", ch * ck), T.Cast("int32", t0), bars.ptr_to([ch % stages]))
                                    if cfg.early:  # the words first; then the stage of chunk ch - 1, which every
                                        # thread read before this chunk's words, refills while this one expands
                                        load_words(sm, dd, base[0], ch, tid - threads)
                                        if tid == threads and ch >= 1 and ch - 1 + raw < nch:
                                            wait_bar(bars, 2 * stages + raw + (ch - 1) % raw, (ch - 1) // raw % 2, ready)
                                            copy_packed(sm, wd, bars, base[0], bx, ch - 1 + raw)
                                    expand(sm, sm2, dd, base[0], ch, tid - threads)
                                    T.ptx.fence.proxy.async_.shared__cta()  # written here, read by wgmma
                                    T.ptx.mbarrier.arrive.shared__cta.b64(bars.ptr_to([ch % stages]))
                                    T.ptx.mbarrier.arrive.shared__cta.b64(bars.ptr_to([2 * stages + raw + ch % raw]))
                                    if not cfg.early and tid == threads and ch + raw < nch:  # all read the stage
                                        wait_bar(bars, 2 * stages + raw + ch % raw, ch // raw % 2, ready)
                                        copy_packed(sm, wd, bars, base[0], bx, ch + raw)
                            else:
                                for ch in T.serial(nch):
                                    wait_bar(bars, ch % stages, ch // stages % 2, ready)
                                    multiply(sm, acc, da, db, ty // 4, ch % stages, base[0])
                                    T.ptx.wgmma.wait_group.sync.aligned(1)
                                    if ch >= 1:
                                        T.ptx.mbarrier.arrive.shared__cta.b64(bars.ptr_to([stages + (ch - 1) % stages]))
                                T.ptx.wgmma.wait_group.sync.aligned(0)
                            store_tma(sm, acc, t0, bx, ty, tx, tid, base[0])

    return run


def bsr_prefill_packed(s: BSRShape, cfg: PackedConfig = PackedConfig()):
    """The kernel alone, as a prefill PrimFunc (benchmarks/kernels.py)."""
    from .bsr_prefill_tiled import bsr_prefill_tiled

    return bsr_prefill_tiled(s, ((None, cfg),))
