"""Programmatic dependent launch: only kernels that wait on the grid dependency get the launch flag."""
from dataclasses import replace

import pytest


def test_pdl_needs_sm90_everywhere():
    from tvm_schedules import launch

    assert launch.supported(["sm_90"]) and launch.supported(["sm_90a", "sm_100"])
    assert not launch.supported(["sm_87", "sm_90"]) and not launch.supported(["sm_80"])


@pytest.mark.parametrize("m", [1, 8])
def test_only_waiting_decode_kernels_are_flagged(m, tmp_path):
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode, launch
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    s = BSRShape(256, 512, 4, 16, 1, "float16", True)
    funcs = {}
    for pdl in (False, True):
        cfg = replace(bsr_decode.tuned(m, 1, s.k), pdl=pdl)
        name = f"decode_{cfg.key}"
        funcs[name] = bsr_decode.bsr_decode_cuda(s, m, cfg).with_attrs(
            {"global_symbol": name, "tirx.is_scheduled": True})
    with target:
        lib = tvm.compile(tvm.IRModule(funcs), target=target, tir_pipeline=launch.PIPELINE)
    source = lib.mod.imports[0].inspect_source()
    assert source.count("griddepcontrol_wait();") == 1  # called by the PDL kernel only
    lib.export_library(str(tmp_path / "k.so"))
    data = (tmp_path / "k.so").read_bytes()
    assert data.count(launch.PDL_TAG.encode()) == 1  # one kernel's launch parameters carry the flag
