"""BSR kernels against a numpy reference on random data (llvm), and CUDA builds checked for device code."""
import numpy as np
import pytest
import torch
import tvm

import tvm_schedules
from tvm_schedules.common import BSRShape
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


@pytest.fixture(scope="module")
def cuda_target():
    from gqsa_compile import cuda_toolchain

    cuda_toolchain.setup(["sm_87", "sm_90"])
    return tvm.target.Target({"kind": "cuda", "arch": "sm_87"}, host="llvm")


def test_cuda_kernels_build_to_device_code(cuda_target, tmp_path):
    from gqsa_compile.cuda_toolchain import fatbin_archs, has_device_code

    s = BSRShape(576, 1536, 4, 16, 1)
    funcs = {
        "decode": tvm_schedules.bsr_matmul(s, 1, cuda_target),
        "decode8": tvm_schedules.bsr_matmul(BSRShape(64, 256, 3, 16, 4), 8, cuda_target),
        "prefill": tvm_schedules.bsr_matmul(s, None, cuda_target),
        "attention": tvm_schedules.attention(9, 3, 64, 256, "float16", cuda_target),
        "append": tvm_schedules.cache_append(3, 64, 256, "float16", cuda_target),
        "embed": tvm_schedules.embed(BSRShape(1000, 576, 8, 32, 1), cuda_target),
    }
    mod = tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()})
    with cuda_target:
        lib = tvm.compile(mod, target=cuda_target)
    lib.export_library(tmp_path / "k.so")
    fatbin, source = has_device_code(tmp_path / "k.so")
    assert fatbin and not source
    assert fatbin_archs(tmp_path / "k.so") == {87, 90}
