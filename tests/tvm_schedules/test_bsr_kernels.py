"""BSR kernels against a numpy reference on random data (llvm), and CUDA builds checked for device code."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import tvm

import tvm_schedules
from tvm_schedules.common import WEIGHT_HINT, BSRShape
from training.bsr import compress_matrix, dequantize


def _bsr(n, k, bits, group, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    keep = torch.rand(n // rows, k // group, generator=g) < 0.5
    keep[0] = False  # a block row with no blocks
    keep[-1] = True  # a block row with all blocks
    return compress_matrix(w, keep, bits, group, rows)


@pytest.mark.parametrize("m", [1, 3, 8, 33])
@pytest.mark.parametrize("bits,group,rows", [(4, 16, 1), (8, 32, 1), (3, 16, 4), (2, 8, 16), (4, 128, 8)])
def test_cpu_kernel_matches_reference(m, bits, group, rows, rng):
    n, k = 64, 256
    b = _bsr(n, k, bits, group, rows)
    s = BSRShape(n, k, bits, group, rows, "float32")
    lib = tvm.compile(tvm.IRModule({"main": tvm_schedules.bsr_matmul(s, m, tvm.target.Target("llvm"))}),
                      target="llvm")
    x = rng.standard_normal((m, k)).astype("float32")
    ref = x @ dequantize(b).numpy().T
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((m, n), np.nan, "float32"), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, b.indptr, b.indices, b.qweight, b.scales, b.zeros)], y)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-4)
    assert np.all(y.numpy()[:, :rows] == 0)  # the empty block row


@pytest.mark.parametrize("bits,group,rows", [(4, 16, 1), (4, 32, 4)])
def test_interleaved_code_order_reads_the_same_weights(bits, group, rows, rng):
    """Every kernel reads codes through common.code(): with the CUDA artifacts' interleaved order (and the
    repacked words) the CPU kernel and the quantized embedding give bitwise the checkpoint order's result."""
    from tvm_schedules.layout import interleave_codes

    n, k, m = 64, 256, 3
    b = _bsr(n, k, bits, group, rows)
    x = rng.standard_normal((m, k)).astype("float32")
    dev, outs = tvm.cpu(), []
    for interleaved in (False, True):
        s = BSRShape(n, k, bits, group, rows, "float32", interleaved)
        lib = tvm.compile(tvm.IRModule({"main": tvm_schedules.bsr_matmul(s, m, tvm.target.Target("llvm"))}),
                          target="llvm")
        qw = interleave_codes(b.qweight) if interleaved else b.qweight
        y = tvm.runtime.tensor(np.full((m, n), np.nan, "float32"), dev)
        lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, b.indptr, b.indices, qw, b.scales, b.zeros)], y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], x @ dequantize(b).numpy().T, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(interleave_codes(b.qweight), b.qweight)  # the repack really moves codes


def test_packed_metadata_reads_the_same_weights(rng):
    """The CPU kernel with the CUDA artifacts' packed block metadata (one uint32 per block, no scales and
    zeros) gives bitwise the result of the separate tensors; a packed shape the layout cannot hold is refused."""
    from tvm_schedules.layout import pack_metadata

    n, k, m = 64, 256, 3
    b = _bsr(n, k, 4, 16, 1)
    x = rng.standard_normal((m, k)).astype("float32")
    outs = []
    for packed in (False, True):
        s = BSRShape(n, k, 4, 16, 1, "float32", packed=packed)
        lib = tvm.compile(tvm.IRModule({"main": tvm_schedules.bsr_matmul(s, m, tvm.target.Target("llvm"))}),
                          target="llvm")
        arrays = ((x, b.indptr, pack_metadata(b.indices, b.scales, b.zeros), b.qweight) if packed
                  else (x, b.indptr, b.indices, b.qweight, b.scales, b.zeros))
        y = tvm.runtime.tensor(np.full((m, n), np.nan, "float32"))
        lib["main"](*[tvm.runtime.tensor(a) for a in arrays], y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    with pytest.raises(ValueError):
        BSRShape(n, k, 4, 16, 4, packed=True)


def test_interleave_puts_code_pairs_in_fp16_halves():
    """(word >> 4p) & 0x000F000F must hold codes 2p and 2p + 1 in its low and high halves."""
    from tvm_schedules.layout import interleave_codes

    word = np.array([0x76543210], np.uint32)  # code i = i
    w = int(interleave_codes(word)[0])
    for p in range(4):
        pair = (w >> (4 * p)) & 0x000F000F
        assert (pair & 0xFFFF, pair >> 16) == (2 * p, 2 * p + 1)


def test_packed_metadata_keeps_column_zero_point_and_scale(rng):
    """pack_metadata (CUDA artifacts' block metadata): each block's column, zero point and fp16 scale come back
    bit for bit from its word, at the extremes of each field too; a column past 12 bits is refused."""
    from tvm_schedules.layout import pack_metadata

    nnz = 200
    col = np.concatenate([[0, 4095], rng.integers(0, 4096, nnz - 2)]).astype(np.uint16)
    zero = np.concatenate([[15, 0], rng.integers(0, 16, nnz - 2)]).astype(np.uint8)[:, None]
    scale = np.concatenate([[6.1e-5, 65504.0], rng.uniform(1e-3, 1, nnz - 2)]).astype(np.float16)[:, None]
    packed = pack_metadata(col, scale, zero)
    assert packed.dtype == np.uint32
    np.testing.assert_array_equal(packed & 0xFFF, col)
    np.testing.assert_array_equal((packed >> 12) & 0xF, zero[:, 0])
    np.testing.assert_array_equal((packed >> 16).astype(np.uint16).view(np.float16), scale[:, 0])
    with pytest.raises(AssertionError):
        pack_metadata(np.array([4096], np.uint16), scale[:1], zero[:1])


@pytest.fixture(scope="module")
def cuda_target():
    from gqsa_compile import cuda_toolchain

    cuda_toolchain.setup(["sm_80", "sm_87", "sm_89", "sm_90"])
    return tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")


ARCHS = {80, 87, 89, 90}


def test_cuda_kernels_build_to_device_code(cuda_target, tmp_path):
    """Every kernel family and tuning choice builds for sm_80/87/89/90 with real SASS; the prefill kernels
    use tensor cores (HMMA) on all four. Correctness on a GPU is checked by benchmarks/kernels.py."""
    from gqsa_compile.cuda_toolchain import fatbin_archs, functions_with, has_device_code, sass_by_arch
    from tvm_schedules import bsr_decode, bsr_decode_stream, bsr_prefill, bsr_prefill_tiled

    s = BSRShape(576, 1536, 4, 16, 1, interleaved=True)
    funcs = {f"decode{m}": tvm_schedules.bsr_matmul(s, m, cuda_target) for m in (1, 2, 4, 8)}  # 4, 8: rotated
    funcs.update({
        "decode_global_x": bsr_decode.bsr_decode_cuda(s, 1, bsr_decode.DecodeConfig(smem=False)),
        "decode_fp32": bsr_decode.bsr_decode_cuda(s, 2, bsr_decode.DecodeConfig(half2=False)),
        "decode_no_math": bsr_decode.bsr_decode_cuda(s, 1, bsr_decode.DecodeConfig(ablate="math")),  # benchmark only
        # rows to warps by a plan appended to indptr (tvm_schedules.warp_plan)
        "decode_plan": bsr_decode.bsr_decode_cuda(s, 4, replace(bsr_decode.tuned(4, 1, s.k), plan=True)),
        # 4 x 11008 activations (86 KB) staged in dynamic shared memory
        "decode_dyn_smem": tvm_schedules.bsr_matmul(BSRShape(64, 11008, 4, 16, 1, interleaved=True), 4, cuda_target),
        "decode3bit": tvm_schedules.bsr_matmul(BSRShape(64, 256, 3, 16, 4), 8, cuda_target),
        # warps that split a thread block's kept blocks across rows (plan appended to indptr; benchmark only)
        "decode_stream": bsr_decode_stream.bsr_decode_stream(replace(s, packed=True), 1),
        "decode_stream_rows": bsr_decode_stream.bsr_decode_stream(
            replace(s, packed=True), 1, bsr_decode_stream.StreamConfig(8, 7, ahead=False, trip_cut=False,
                                                                       one_boundary=False)),
        "decode_stream_lanes": bsr_decode_stream.bsr_decode_stream(  # two lanes a block, M = 2 (benchmark only)
            replace(s, packed=True), 2, bsr_decode_stream.StreamConfig(8, 7, unroll=4, lanes=2)),
        "decode_tall": tvm_schedules.bsr_matmul(BSRShape(256, 1536, 4, 16, 16, interleaved=True), 8, cuda_target),
        "decode_tall1": tvm_schedules.bsr_matmul(BSRShape(256, 1536, 4, 16, 16, interleaved=True), 1, cuda_target),
        "prefill_r1": tvm_schedules.bsr_matmul(BSRShape(576, 576, 4, 16, 1, interleaved=True), None, cuda_target),
        # CUDA artifacts' packed block metadata (one uint32 per block, no scales and zeros): decode and prefill
        "decode_packed": tvm_schedules.bsr_matmul(replace(s, packed=True), 1, cuda_target),
        "decode_packed8": tvm_schedules.bsr_matmul(replace(s, packed=True), 8, cuda_target),
        "prefill_r1_packed": tvm_schedules.bsr_matmul(BSRShape(576, 576, 4, 16, 1, interleaved=True, packed=True),
                                                      None, cuda_target),
        "prefill_r16": tvm_schedules.bsr_matmul(BSRShape(576, 1536, 4, 16, 16, interleaved=True), None,
                                                cuda_target),
        "prefill_g32_sweep": bsr_prefill.bsr_prefill_mma(BSRShape(256, 512, 4, 32, 4), bsr_prefill.SWEEP[3]),
        "prefill_warp_r1": bsr_prefill.bsr_prefill_mma(BSRShape(576, 576, 4, 16, 1, interleaved=True),
                                                       bsr_prefill.tuned(1)),
        "prefill_warp_r16": bsr_prefill.bsr_prefill_mma(BSRShape(576, 1536, 2, 16, 16), bsr_prefill.tuned(16)),
        # G = 32 and R = 4 in the tiled GEMM: a lane's block spans two k-steps, rows share a block's indices
        "prefill_tiled_g32": bsr_prefill_tiled.bsr_prefill_tiled(BSRShape(320, 512, 4, 32, 4, interleaved=True),
                                                                 bsr_prefill_tiled.TiledConfig(chunk=128)),
        "prefill_simt": tvm_schedules.bsr_matmul(BSRShape(64, 256, 4, 8, 1), None, cuda_target),
        "attention": tvm_schedules.attention(9, 3, 64, 256, "float16", cuda_target),
        "append": tvm_schedules.cache_append(3, 64, 256, "float16", cuda_target),
        "embed": tvm_schedules.embed(BSRShape(1000, 576, 8, 32, 1), cuda_target),
    })
    mod = tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()})
    with cuda_target:
        lib = tvm.compile(mod, target=cuda_target)
    lib.export_library(tmp_path / "k.so")
    fatbin, source = has_device_code(tmp_path / "k.so")
    assert fatbin and not source
    assert fatbin_archs(tmp_path / "k.so") == ARCHS
    sass = sass_by_arch(tmp_path / "k.so")
    assert set(sass) == ARCHS
    for arch, text in sass.items():
        mma = functions_with(text, "HMMA")
        # prefill_r1: the tiled GEMM's three launches, chosen by M at run time
        assert {"prefill_r1_kernel", "prefill_r1_kernel_1", "prefill_r1_kernel_2", "prefill_r1_packed_kernel",
                "prefill_r16_kernel",
                "prefill_g32_sweep_kernel", "prefill_warp_r1_kernel", "prefill_warp_r16_kernel",
                "prefill_tiled_g32_kernel"} <= mma, (arch, mma)
        assert "decode1_kernel" not in mma and "prefill_simt_kernel" not in mma


def _hgmma_kernels(func, name: str, tmp_path):
    """Build ``func`` alone for sm_90a (wgmma needs the arch-specific target) and return the kernels whose
    SASS holds HGMMA, after checking the library holds device code for sm_90 only and no CUDA source, and
    the built module (for what its host code asks of the launches)."""
    from gqsa_compile import cuda_toolchain
    from gqsa_compile.cuda_toolchain import functions_with, has_device_code, sass_by_arch

    cuda_toolchain.setup(["sm_90a"])
    try:
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
        with target:
            lib = tvm.compile(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=target)
        lib.export_library(tmp_path / f"{name}.so")
    finally:
        cuda_toolchain.setup(["sm_80", "sm_87", "sm_89", "sm_90"])  # what the module's other tests build for
    assert has_device_code(tmp_path / f"{name}.so") == (True, False)
    sass = sass_by_arch(tmp_path / f"{name}.so")
    assert set(sass) == {90}
    return set(functions_with(sass[90], "HGMMA")), lib.mod


def test_wgmma_prefill_builds_for_sm90a(tmp_path):
    """The tiled GEMM's Hopper variant (operands straight from shared memory) is real wgmma code in an sm_90a
    cubin; its layout pads 8-column slabs by 16 bytes (a multiple of 16, as the matrix descriptor needs)."""
    from tvm_schedules import bsr_prefill_tiled as t

    s = BSRShape(576, 1536, 4, 16, 1, interleaved=True)
    assert all(t.supports(s, c) for c in t.SWEEP_WGMMA)
    assert not t.supports(BSRShape(576, 1536, 4, 16, 16, interleaved=True), t.SWEEP_WGMMA[0])
    assert t.slab(128) * 2 % 16 == 0 and t.SWEEP_WGMMA[0].smem_bytes() < 99 * 1024
    assert "wg_kernel" in _hgmma_kernels(t.bsr_prefill_tiled(s, t.SWEEP_WGMMA[0]), "wg", tmp_path)[0]


def test_pipelined_wgmma_prefill_builds_for_sm90a(tmp_path):
    """bsr_prefill_wgmma: a dequantizing launch, then the wgmma GEMM (real HGMMA in an sm_90a cubin) over a ring in
    dynamic shared memory, for 4-bit codes of any block height; the GEMM loads and stores by TMA (UTMALDG, UTMASTG),
    its host side encodes both tensor maps per call, and the launch asks for the whole ring: bulk copies name only
    where they start (a first build got 3 KB less and wrote past the end), and 1 KB more starts it on a 1024-byte
    boundary for the swizzle."""
    from gqsa_compile.cuda_toolchain import functions_with, sass_by_arch
    from tvm_schedules import bsr_prefill_wgmma as w

    s = BSRShape(576, 1536, 4, 16, 1, interleaved=True)
    assert w.supports(s, w.BEST) and w.supports(s, w.SMALL) and w.supports(BSRShape(576, 1536, 4, 16, 16, interleaved=True))
    assert not w.supports(BSRShape(576, 1536, 8, 16, 1, interleaved=True))  # 4-bit codes only
    assert not w.supports(s, replace(w.BEST, stages=5))  # 241 KB of ring: more than a thread block may have
    kernels, mod = _hgmma_kernels(w.bsr_prefill_wgmma(s, w.BEST), "wgt", tmp_path)
    assert kernels == {"wgt_kernel_1"}  # dequantize, then the GEMM
    sass = sass_by_arch(tmp_path / "wgt.so")[90]
    assert functions_with(sass, "UTMALDG") == functions_with(sass, "UTMASTG") == {"wgt_kernel_1"}
    host = mod.inspect_source("ll")
    assert host.count("cuTensorMapEncodeTiled") >= 2
    ring = w.BEST.stages * (w.tile_halves(256) + w.tile_halves(128)) * 2 + 1024
    assert ring == w.ring_bytes(w.BEST) and f"i64 {ring}" in host


def test_swizzled_tiles_are_what_wgmma_reads():
    """128-byte swizzle: each row's 64 columns fill one 128-byte line (so the dequantizing launch writes whole
    lines) with 16-byte piece p at p ^ row % 8, and 8 rows one 1024-byte atom; every piece lands once."""
    from tvm_schedules import bsr_prefill_wgmma as w

    rows = 256
    pieces = {(r, kk): w.offset(r, kk) for r in range(rows) for kk in range(0, w.CHUNK, 8)}
    assert sorted(pieces.values()) == list(range(0, w.tile_halves(rows), 8))
    for (r, kk), o in pieces.items():
        assert o // 64 == r  # the row's line
        assert o % 64 // 8 == kk // 8 ^ r % 8 and o // w.ATOM == r // 8


def test_sm90a_prefill_plan_runs_wgmma_above_128_tokens(tmp_path):
    """Where every arch is sm_90a, prefill keeps the tiled plan up to WGMMA_ABOVE tokens and runs the
    producer-warp wgmma kernel above, in the same PrimFunc (its host side picks by M): with half-height tiles
    while BEST's grid would leave the SMs' only waves mostly idle (4096 rows: up to 512 tokens, 64 thread
    blocks of BEST); elsewhere nothing changes."""
    from tvm_schedules import bsr_prefill_tiled as t
    from tvm_schedules import bsr_prefill_wgmma as w

    wide = BSRShape(22016, 4096, 4, 16, 1, interleaved=True)  # 86 row tiles of 256: BEST from one token tile
    plan = t.tuned(wide, wgmma=True)
    assert plan[-1] == (None, w.BEST) and plan[-2] == (t.WGMMA_ABOVE, t.DEFAULT)
    assert plan[:-2] == tuple(e for e in t.tuned(wide) if e[0] is not None and e[0] < t.WGMMA_ABOVE)
    s = BSRShape(4096, 4096, 4, 16, 1, interleaved=True)
    plan = t.tuned(s, wgmma=True)
    assert plan[-2:] == ((512, w.SMALL), (None, w.BEST)) and plan[-3][0] == t.WGMMA_ABOVE
    assert w.by_tokens(BSRShape(6144, 4096, 4, 16, 1, interleaved=True))[0][0] == 256
    tall = BSRShape(4096, 4096, 4, 16, 16, interleaved=True)  # R = 16: the same dense tiles (no block skipping)
    assert w.supports(tall, w.BEST) and t.tuned(tall, wgmma=True)[-2:] == plan[-2:]
    assert t.tuned(tall)[-1][1] == t.DEFAULT
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    f = tvm_schedules.bsr_matmul(s, None, cuda, wgmma=True)
    assert str(f.attrs["gqsa.config"]).endswith(f";m<=512:{w.SMALL.key};{w.BEST.key}")
    kernels, _ = _hgmma_kernels(f, "plan", tmp_path)
    assert len(kernels) == 2  # both wgmma GEMMs beside the tiled launches (HMMA) in one module


def test_decode_tuning_follows_activation_staging():
    """Fewer, larger thread blocks only where the activations are staged (M x K x 2 bytes <= 92 KB)."""
    from tvm_schedules import bsr_decode as d

    assert d.tuned(4, 1, 4096) == d.TUNED_STAGED[4] and d.tuned(2, 1, 14336) == d.TUNED_STAGED[2]
    assert d.tuned(4, 1, 11008) == d.TUNED_STAGED[4]  # 88 KB: dynamic shared memory
    assert d.tuned(4, 1, 14336) == d.TUNED[4] and d.tuned(2, 1, 28672) == d.TUNED[2]
    assert d.tuned(1, 1, 4096) == d.TUNED[1] and d.tuned(1, 16, 4096) == d.TALL
    # M = 8: staged (and rotated) where 64 KB fit, the L1-cached gather beyond
    assert d.tuned(8, 1, 4096) == d.TUNED_STAGED[8] and d.tuned(8, 1, 11008) == d.TUNED[8]


def test_resident_decode_grids_load_ahead():
    """M = 1: where a warp per row fits in one wave of an H100 (132 thread blocks of 8, 16 or 32 warps, but 8-warp
    thread blocks where 32-warp ones would leave a fifth of the SMs idle), that grid loads ahead; up to 6336 rows,
    a warp per row in thread blocks of 8 warps, 6 per SM (16 warps, 3 per SM, with PDL), loads ahead and triggers
    early; from 8449 (where the tuned launch has no warp for each row) to 12672, two rows per warp, the first trip
    ahead; M = 2 alike up to 6336 rows, M = 4 up to 4224; other rows, unstaged activations (56 KB; an 8-bit matrix
    gathers them from L1), M = 8 or tall blocks keep the tuned launch."""
    from tvm_schedules import bsr_decode as d

    def cfg(n, k, m=1, bits=4, rows=1, pdl=False):
        return d.for_shape(BSRShape(n, k, bits, 16, rows, interleaved=bits == 4), m, pdl)

    def pick(n, k, m=1, bits=4, rows=1):
        c = cfg(n, k, m, bits, rows)
        return c.warps, c.ahead

    def grid(n, k):
        return d.launch(BSRShape(n, k, 4, 16, 1, interleaved=True), 1, cfg(n, k))["warps"]

    assert pick(576, 576) == pick(1056, 4096) == (8, 2)
    assert pick(1057, 4096) == pick(2112, 576) == (16, 2) and pick(3380, 4096) == pick(4224, 14336) == (32, 2)
    assert grid(4096, 4096) == 4096  # 128 thread blocks of 32 warps, a row each
    # fewer than 0.8 x 132 thread blocks of 32 warps: thread blocks of 8 warps, all resident (3072 rows: 384)
    assert pick(2113, 4096) == pick(3379, 4096) == (8, 2) and cfg(3072, 576).ctas == 384 and grid(3072, 576) == 3072
    assert pick(4225, 4096) == pick(6336, 13824) == (8, 2) and grid(6144, 4096) == 6144  # 768 thread blocks
    # with PDL, which stages the activations after the wait, half as many thread blocks of 16 warps
    assert (cfg(6144, 13824, pdl=True).warps, cfg(6144, 13824, pdl=True).ctas) == (16, 384)
    assert cfg(3072, 4096, pdl=True).warps == cfg(12288, 4096, pdl=True).warps == 8
    assert all(cfg(n, 4096, m, pdl=True).pdl for n in (576, 28672) for m in (1, 2, 8))
    assert pick(8449, 4096) == pick(12672, 4096) == (8, 1) and grid(12288, 4096) == 6144  # two rows each
    assert {cfg(n, 4096).trigger for n in (4225, 6336, 8449, 12672)} == {"early"}
    tuned = lambda m, k=4096: replace(d.tuned(m, 1, k), hint=WEIGHT_HINT)  # noqa: E731  (and weights past L1)
    # from 4096 columns at M = 1 without the fence (bsr_decode.NO_FENCE_K), but where one trip goes ahead
    assert cfg(6337, 4096) == cfg(8448, 4096) == cfg(12673, 4096) == cfg(28672, 4096) == replace(tuned(1), fence=False)
    assert cfg(12288, 4096).fence and cfg(576, 1536).fence and not cfg(4096, 4096, pdl=True).fence
    assert all(cfg(4096, 4096, m).fence for m in (2, 4, 8))
    assert pick(576, 28672)[1] == pick(576, 576, bits=8)[1] == pick(576, 576, m=8)[1] == pick(576, 576, rows=4)[1] == 0
    # M = 2: thread blocks of 16 warps, 2 per SM loading two trips ahead, or 3 loading one
    assert pick(4224, 14336, m=2) == (16, 2) and pick(4225, 4096, m=2) == pick(6336, 4096, m=2) == (16, 1)
    assert cfg(4096, 4096, m=2).ctas == 256 and cfg(6336, 4096, m=2).trigger == "early"
    assert cfg(4224, 4096, m=2, pdl=True).ahead == 3 and cfg(6336, 4096, m=2, pdl=True).ahead == 1  # two trips in flight
    assert cfg(6337, 4096, m=2) == tuned(2) and cfg(4096, 28672, m=2) == tuned(2, 28672)  # unstaged
    # M = 4: the tuned one-wave grid, loading ahead where it gives each row a warp
    assert pick(576, 576, m=4) == pick(4224, 11008, m=4) == (32, 2) and cfg(4096, 4096, m=4).ctas == 132
    assert cfg(4225, 4096, m=4) == tuned(4) and cfg(4096, 14336, m=4) == tuned(4, 14336)


def test_rotated_staging_is_a_permutation_and_a_quarter_warp_never_shares_a_bank():
    """The group-major layout moves each 16-byte activation chunk to its own place, and the four blocks of a
    quarter-warp (two lanes each), with tokens rotated by slot, read four distinct 32-byte bank slots for any
    four column groups: the property the rotation is for."""
    from tvm_schedules import bsr_decode as d

    for m, k, group in ((8, 256, 16), (4, 512, 16), (2, 256, 32)):
        places = [d.group_major(i, q, m, group) for i in range(m) for q in range(k // 8)]
        assert sorted(places) == list(range(m * k // 8))
    rng = np.random.default_rng(0)
    for m in (4, 8):
        for _ in range(200):
            groups = rng.integers(0, 256, size=4)
            for i in range(m):
                slots = {d.group_major((i + b) % m, 2 * g, m, 16) * 16 % 128 for b, g in enumerate(groups)}
                assert len(slots) == 4, (m, groups, i)
    assert d.TUNED_STAGED[8].rotate and d.TUNED_STAGED[4].rotate and not d.TUNED_STAGED[2].rotate


def test_tiled_prefill_plan_is_chosen_by_m_and_recorded():
    """4-bit codes take the tiled GEMM: one launch per configuration of the plan behind a host-side branch on M,
    and the manifest key names every bound; other code widths keep bsr_prefill's per-warp kernel."""
    from tvm_schedules import bsr_prefill_tiled as t

    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    s = BSRShape(576, 1536, 4, 16, 1, interleaved=True)
    f = tvm_schedules.bsr_matmul(s, None, target)
    assert f.attrs["gqsa.config"] == t.config_key(t.tuned(s)) == (  # K = 1536: 24 chunks, 4 splits
        "m<=32:t64x32w2x2c64b4s4;m<=128:t64x64w2x2c64b4s4;m<=256:t64x64w2x2c64b4;t128x128w2x4c64b2")
    script = f.script()  # four launches of the main kernel (row tiles on blockIdx.x), two split-K sums
    assert script.count('"blockIdx.x"') == 6 and "m <= T.int64(32)" in script and "m <= T.int64(256)" in script
    # K = 576 is 9 chunks: no split, so the two 64 x 64 entries become one
    assert t.config_key(t.tuned(BSRShape(576, 576, 4, 16, 1, interleaved=True))) == (
        "m<=32:t64x32w2x2c64b4;m<=256:t64x64w2x2c64b4;t128x128w2x4c64b2")
    assert t.tuned(BSRShape(8192, 4096, 4, 16, 1, interleaved=True))[0][1].splits == 2
    assert t.tuned(BSRShape(16384, 4096, 4, 16, 1, interleaved=True)) == t.TUNED["many rows"]
    r16 = BSRShape(576, 1536, 4, 16, 16, interleaved=True)  # R = 16 too: it skips pruned blocks' mma's
    assert tvm_schedules.bsr_matmul(r16, None, target).attrs["gqsa.config"] == t.config_key(t.tuned(r16))
    assert "w8n" in tvm_schedules.bsr_matmul(BSRShape(576, 1536, 8, 32, 1), None, target).attrs["gqsa.config"]
    assert not t.supports(BSRShape(576, 1000, 4, 16, 1, interleaved=True))  # K not a multiple of the chunk
    assert not t.supports(BSRShape(576, 1536, 4, 16, 1))  # checkpoint code order


@pytest.mark.parametrize("group,rows,chunk,look", [(16, 1, 128, 4), (32, 4, 128, 4), (64, 1, 128, 2), (16, 16, 256, 1)])
def test_prefill_records_the_configuration_it_runs(group, rows, chunk, look):
    """The manifest's prefill key: the chunk that divides K, a look-ahead dividing the chunk's column groups,
    and 1 for the R = 16 walk (one kept block at a time)."""
    from tvm_schedules import bsr_prefill as p

    eff = p.effective(BSRShape(4096, 4096, 4, group, rows, interleaved=True), p.tuned(rows))
    assert (eff.chunk, eff.look) == (chunk, look)


def test_tiled_prefill_spreads_rows_past_m():
    """A tile's rows past M read distinct rows (the tile before's, or row % M in the first tile), chosen once
    per thread, not row M - 1 for each: with all of them on one line, M = 129 ran 1.9x slower than M = 256 on
    12288 x 4096 (docs/perf.md, tag ragged m)."""
    import re

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_prefill_tiled as t
    from tvm_schedules import launch

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    s = BSRShape(1536, 576, 4, 16, 1, interleaved=True)
    with target:
        lib = tvm.compile(tvm.IRModule({"p": t.bsr_prefill_tiled(s, t.tuned(s)).with_attr("global_symbol", "p")}),
                          target=target, tir_pipeline=launch.PIPELINE)
    source = lib.mod.imports[0].inspect_source()
    copies = re.findall(r"tvm_builtin_ptx_cp_async_cg\w*\((.*)\);", source)
    assert copies and all("x_ptr[(" in c and "xrow_ptr[" in c and "m - (int64_t)1" not in c for c in copies)


def test_prefill_plan_splits_k_past_128_tokens_on_4096_to_8191_rows():
    """129-256 tokens: 128 x 128 tiles in 4 K-splits for 32 row tiles, 2 for 33-63, where K's chunks divide;
    64 x 64 (MID) for fewer rows, which were not measured; 257-512: 2 splits for 32 row tiles (docs/perf.md,
    tags split-k 256 and split-k 512)."""
    from dataclasses import replace

    from tvm_schedules import bsr_prefill_tiled as t

    def at_256(n, k):  # the entry that takes M = 256
        return next(c for b, c in t.tuned(BSRShape(n, k, 4, 16, 1, interleaved=True)) if b is None or b >= 256)

    assert at_256(4096, 14336) == replace(t.DEFAULT, splits=4) and at_256(6144, 4096) == replace(t.DEFAULT, splits=2)
    assert at_256(4096, 384) == replace(t.DEFAULT, splits=2) and at_256(4096, 1216) == t.MID  # 6 and 19 chunks
    assert at_256(576, 1536) == t.MID and 256 not in dict(t.tuned(BSRShape(12288, 4096, 4, 16, 1, interleaved=True)))
    plan = t.tuned(BSRShape(4096, 11008, 4, 16, 1, interleaved=True))  # 257-512 tokens: 2 splits, 32 row tiles only
    assert plan[-2:] == ((512, replace(t.DEFAULT, splits=2)), (None, t.DEFAULT)) and len(plan) <= 5
    assert 512 not in dict(t.tuned(BSRShape(6144, 4096, 4, 16, 1, interleaved=True)))
