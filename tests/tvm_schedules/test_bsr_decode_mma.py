"""The tensor-core decode GEMV (tvm_schedules.bsr_decode_mma): its weight layout, read back the way its lanes
read it, and its CUDA build. Correctness on a GPU is checked by benchmarks/kernels.py before it times a case."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import tvm

from training.bsr import compress_matrix, dequantize
from tvm_schedules import bsr_decode_mma
from tvm_schedules.common import SMS, BSRShape
from tvm_schedules.layout import TILE, column_tiles


def _unequal_bsr(n, k, seed=0):
    """4-bit G16 R = 1 weights whose rows keep 0-100% of their blocks (row 0 none, the last all)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, k // 16, generator=g) < torch.rand(n, 1, generator=g)
    keep[0], keep[-1] = False, True
    return compress_matrix(torch.randn(n, k, generator=g), keep, 4, 16, 1)


def _read_as_lanes(tile_ptr, words, codes, meta, n, k):
    """The dense matrix as the kernel's lanes see it: the lane of row j's block in column group c finds it by the
    word's offset plus a popcount (an in-bounds position even where the block is absent, for ``absent_loads``),
    takes value pair p (columns 2p, 2p + 1) from bits 4 (p % 4) and 16 + 4 (p % 4) of code word p // 4, and
    (c - z) * s with the block's metadata word's zero point (low half: 1024 + z as fp16) and fp16 scale (high
    half)."""
    w = np.zeros((n, k), np.float32)
    for t in range(n // TILE):
        for c in range(k // 16):
            word = int(words[t, c])
            mask, offset = word & 0xFFFF, word >> 16
            for j in range(TILE):
                p = tile_ptr[t] + offset + bin(mask & ((1 << j) - 1)).count("1")
                assert p < len(codes)  # an absent block's lane loads there too
                if not mask >> j & 1:
                    continue
                zero = (int(meta[p]) & 0xFFFF) - 0x6400  # the fp16 bits of 1024 + z
                scale = np.array([int(meta[p]) >> 16], np.uint16).view(np.float16)[0].astype(np.float32)
                for pair in range(8):
                    v = int(codes[p, pair // 4]) >> 4 * (pair % 4) & 0x000F000F
                    for e, code in enumerate((v & 15, v >> 16)):
                        w[t * TILE + j, c * 16 + 2 * pair + e] = (code - zero) * scale
    return w


def test_column_tiles_hold_the_same_weights():
    b = _unequal_bsr(48, 256)
    arrays = column_tiles(b.indptr, b.indices, b.qweight, b.scales, b.zeros, 256)
    tile_ptr, words, codes, meta = arrays
    assert tile_ptr[-1] == b.nnzb == len(codes) - 1 == len(meta) - 1  # and the zero block absent lanes load
    assert not codes[-1].any() and meta[-1] == 0
    assert words.shape == (48 // TILE, 256 // 16)
    np.testing.assert_array_equal(_read_as_lanes(*arrays, 48, 256), dequantize(b).numpy())


def test_column_tiles_refuse_what_the_kernel_cannot_read():
    b = _unequal_bsr(40, 64)  # 40 rows: not whole 16-row tiles
    with pytest.raises(AssertionError, match="multiple of 16"):
        column_tiles(b.indptr, b.indices, b.qweight, b.scales, b.zeros, 64)
    assert not bsr_decode_mma.supports(BSRShape(40, 64, 4, 16, 1), 1)
    assert not bsr_decode_mma.supports(BSRShape(48, 64, 4, 16, 1), 9)  # 8 tokens: the mma's N


def test_slices_cover_every_column_group():
    for k in (576, 1536, 4096, 11008, 14336):
        for cfg in (bsr_decode_mma.MmaConfig(4, 2), bsr_decode_mma.MmaConfig(16, 1)):
            per = bsr_decode_mma.slice_groups(BSRShape(64, k, 4, 16, 1), cfg)
            share = -(-(k // 16) // cfg.warps)  # the warps' equal share, rounded up
            step = bsr_decode_mma.QUAD * cfg.look  # column groups of a register set
            assert per % step == 0 and share <= per < share + step


def test_mma_decode_builds_with_tensor_cores(tmp_path):
    """M = 1, 3 and 8 build to SASS holding HMMA for sm_80, sm_87, sm_89 and sm_90, in one library (M = 3 with
    two tiles a thread block and absent blocks loaded too)."""
    from gqsa_compile import cuda_toolchain
    from gqsa_compile.cuda_toolchain import fatbin_archs, functions_with, has_device_code, sass_by_arch

    archs = {80, 87, 89, 90}
    cuda_toolchain.setup([f"sm_{a}" for a in sorted(archs)])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    s = BSRShape(64, 1536, 4, 16, 1)
    cfgs = {1: bsr_decode_mma.MmaConfig(4, 4, ahead=0), 3: bsr_decode_mma.MmaConfig(4, 2, tiles=2, absent_loads=True),
            8: bsr_decode_mma.MmaConfig(4, 4, ahead=2)}
    funcs = {f"mma{m}": bsr_decode_mma.bsr_decode_mma(s, m, cfg) for m, cfg in cfgs.items()}
    with target:
        lib = tvm.compile(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()}), target=target)
    lib.export_library(tmp_path / "k.so")
    assert has_device_code(tmp_path / "k.so") == (True, False) and fatbin_archs(tmp_path / "k.so") == archs
    for arch, text in sass_by_arch(tmp_path / "k.so").items():
        assert {f"mma{m}_kernel" for m in (1, 3, 8)} <= set(functions_with(text, "HMMA")), arch


def test_dequantization_arithmetic_is_exact_in_fp16():
    """The kernel's two fp16 routes to c - z, for every code c and zero point z: the lower nibble's (1024 + c) -
    (1024 + z), and the upper nibble's 1024 + 16c times 1/16 plus 960 - (1024 + z) (one rounding, of an exact
    value); then times the scale once, as the reference (c - z) * s rounds it."""
    c, z = (a.ravel() for a in np.meshgrid(np.arange(16), np.arange(16)))
    h = np.float16
    low = h(1024 + c) - h(1024 + z)
    zero_term = h(960) - h(1024 + z)
    high = (np.float32(h(1024 + 16 * c)) * np.float32(h(1 / 16)) + np.float32(zero_term)).astype(h)  # fma
    np.testing.assert_array_equal(low, c - z)
    np.testing.assert_array_equal(high, c - z)
    s = h(0.0371)
    np.testing.assert_array_equal(high * s, h(c - z) * s)


def test_for_shape_launches_one_wave_with_the_early_trigger():
    """for_shape: on the seven LLaMA shapes a launch the kernel accepts, whose grid is at most one wave of the
    thread blocks an H100 SM holds at the registers ptxas gave it for sm_90a (benchmarks/probes/mma_sass.py),
    triggering early only with PDL; past 14 tiles an SM, a thread block per tile triggering after its loop."""
    per_sm = {"mm_w16l1a3b": 2, "mm_w10l1a3o3b": 3, "mm_w16l1ao3": 3, "mm_w12l1a3o3b": 3, "mm_w8l2at2o3b": 3,
              "mm_w4l1a2t2b": 6, "mm_w4l1at2b": 7}  # 64, 64, 40, 56, 80, 78 and 70-72 registers
    for n, k in ((4096, 4096), (4096, 11008), (4096, 14336), (6144, 4096), (12288, 4096), (22016, 4096),
                 (28672, 4096)):
        s = BSRShape(n, k, 4, 16, 1)
        for m in (1, 2, 4, 8):
            for pdl in (False, True):
                cfg = bsr_decode_mma.for_shape(s, m, pdl)
                assert cfg.pdl == cfg.early == pdl, cfg
                assert cfg.hint == ("n" if n // TILE > 3 * SMS else ""), cfg  # weight loads past L1 on tall grids
                assert n // TILE // cfg.tiles <= SMS * per_sm[replace(cfg, hint="").key.rstrip("ge")], (n, m, cfg.key)
        bsr_decode_mma.bsr_decode_mma(s, 8, bsr_decode_mma.for_shape(s, 8, True))  # builds as TensorIR
    wide = bsr_decode_mma.for_shape(BSRShape(TILE * SMS * 15, 4096, 4, 16, 1), 1, True)
    assert wide.tiles == 1 and wide.pdl and not wide.early


def test_keys_spell_their_configurations():
    """MmaConfig.from_key inverts MmaConfig.key (benchmarks/probes/mma_sass.py builds any key it is given), and
    refuses what no configuration spells."""
    import itertools

    cfgs = [bsr_decode_mma.MmaConfig(w, look, ahead, tiles, absent, pdl, blocks, pdl and early, hint)
            for w, look, ahead, tiles, absent, pdl, blocks, early, hint in itertools.product(
                (4, 16), (1, 2), (0, 1, 3), (1, 2), (False, True), (False, True), (0, 3), (False, True), ("", "np"))]
    assert len({c.key for c in cfgs}) == len(set(cfgs)) > 100
    assert all(bsr_decode_mma.MmaConfig.from_key(c.key) == c for c in cfgs)
    for bad in ("mm_w8l2ae", "w8u2l1hs1056f", "mm_w8l2abgcx"):
        with pytest.raises(ValueError, match="not a tensor-core GEMV key"):
            bsr_decode_mma.MmaConfig.from_key(bad)
