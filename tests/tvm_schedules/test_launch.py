"""Programmatic dependent launch: only kernels that wait on the grid dependency get the launch flag."""
import re
from dataclasses import replace

import pytest


def _kernel_bodies(source: str) -> dict:
    """Each device kernel's body in a CUDA source, by name."""
    return {m[1]: source[m.end():source.find("\n}\n", m.end())]
            for m in re.finditer(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\([^;{]*\{', source)}


def _global_loads_before_wait(so_path) -> dict:
    """Per kernel that waits on the grid dependency (ACQBULK in its sm_90 SASS): the global loads placed before the
    wait, and the first one after it. ptxas hoists an unconditional wait to the top, but it is free to move
    ``ld.global.nc`` loads (what nvcc emits for ``__restrict__`` inputs) above a wait it cannot hoist, and they
    would read the previous kernel's output before it is written (docs/perf.md, loads in flight across phases)."""
    from gqsa_compile.cuda_toolchain import sass_by_arch

    out = {}
    for chunk in sass_by_arch(so_path)[90].split("Function : ")[1:]:
        name, code = chunk[:chunk.index("\n")].strip(), chunk[chunk.index("\n"):]
        if "ACQBULK" in code:
            before, after = code.split("ACQBULK", 1)
            out[name] = (re.findall(r"LDG\.[\w.]+", before), (re.findall(r"LDG\.[\w.]+", after) or [None])[0])
    return out


def _resources_sm90(funcs: dict, target, tmp_path) -> dict:
    """Build ``funcs`` with the PDL-flagging pipeline into tmp_path/k.so; ptxas' resources per sm_90 kernel."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import launch

    with target:
        lib = tvm.compile(tvm.IRModule(funcs), target=target, tir_pipeline=launch.PIPELINE)
    lib.export_library(str(tmp_path / "k.so"))
    return cuda_toolchain.resources_by_arch(tmp_path / "k.so")[90]


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
    (name, (before, _)), = _global_loads_before_wait(tmp_path / "k.so").items()
    assert name == f"decode_{replace(bsr_decode.tuned(m, 1, s.k), pdl=True).key}_kernel" and before == []


def test_every_kernel_waits_with_the_pdl_pipeline(tmp_path):
    """gqsa-compile --pdl: kernels that do not wait yet wait first thing, and then trigger the next launch
    unless their grid is a constant of more than one wave; the PDL GEMV waits before staging activations and
    triggers right after where its grid is one wave (having loaded its first weights before the wait), and not at
    all where it is larger (a thread block that exits
    counts: a trigger after each warp's loop let the next kernel launch while other warps still walked long rows)."""
    import tvm

    import tvm_schedules
    from gqsa_compile import cuda_toolchain
    from tvm_schedules import launch
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    s = BSRShape(256, 512, 4, 16, 1, "float16", True)
    big = BSRShape(16384, 512, 4, 16, 1, "float16", True)  # 1056 thread blocks at M = 1 (three rounds of rows)
    funcs = {"gemv": tvm_schedules.bsr_matmul(s, 1, target, pdl=True),
             "biggemv": tvm_schedules.bsr_matmul(big, 1, target, pdl=True),
             "big": tvm_schedules.bsr_matmul(big, 1, target),
             "attention": tvm_schedules.attention(9, 3, 64, 256, "float16", target),  # grid: tokens x heads
             "append": tvm_schedules.cache_append(3, 64, 256, "float16", target)}
    funcs = {k: f.with_attr("global_symbol", k) for k, f in funcs.items()}
    with target:
        lib = tvm.compile(tvm.IRModule(funcs), target=target, tir_pipeline=launch.PIPELINE_ALL)
    source = lib.mod.imports[0].inspect_source()
    kernels = _kernel_bodies(source)
    assert {k.split("_kernel")[0] for k in kernels} == set(funcs)
    wait, trigger = "tvm_builtin_ptx_griddepcontrol_wait();", "tvm_builtin_ptx_griddepcontrol_launch_dependents();"
    for name, body in kernels.items():
        lines = [ln.strip() for ln in body.strip().splitlines()]
        # 1056 thread blocks (big, biggemv): no trigger, each thread block's exit lets the next kernel launch
        # (the one-wave GEMV waits in both arms of a branch on its first loads: ahead = 2)
        assert lines.count(wait) == 1 + name.startswith("gemv") and lines.count(trigger) == 1 - name.startswith(
            ("big_", "biggemv")), name
        if name.startswith(("attention", "append")):
            assert lines[:2] == [wait, trigger], name
        if name.startswith("big_"):  # 1056 thread blocks: the next kernel launches as this one ends
            assert lines[0] == wait
        if name.startswith("gemv"):  # its own wait, before staging activations; one wave: the trigger after it
            assert lines[lines.index(trigger) - 1] == "}" and lines.index(trigger) > lines.index(wait)
    lib.export_library(str(tmp_path / "k.so"))
    assert (tmp_path / "k.so").read_bytes().count(launch.PDL_TAG.encode()) == len(kernels)
    loads = _global_loads_before_wait(tmp_path / "k.so")
    assert {k for k, (before, _) in loads.items() if before} == {"gemv_kernel"}
    # the one-wave GEMV loads its first trip's weights (indptr, metadata words, codes: at most 8 bytes a lane)
    # before the wait, and stages the activations after it with coherent 16-byte loads
    before, after = loads["gemv_kernel"]
    assert before and all(op.endswith("CONSTANT") and ".128" not in op for op in before) and after == "LDG.E.128"


def test_resident_decode_grids_fit_their_registers(tmp_path):
    """The grids that trigger the next launch early assume all their thread blocks are resident at once, from the
    registers bsr_decode.AHEAD_REGISTERS says their kernels take (M = 1: 6 thread blocks of 8 warps per SM at 40,
    or 3 of 16 with PDL; M = 2: 2 of 16 warps at 56, 3 at 40; M = 4: 1 of 32 at 64): the built kernels take no more,
    and spill nothing.
    With PDL only weight loads come before the wait, the activations' after it; the weight loads skip L1."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode as d, launch
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    funcs, limit = {}, {}
    for m, n, k, pdl in ((1, 6144, 4096, False), (1, 6144, 13824, True), (1, 12288, 4096, True), (2, 4096, 4096, True),
                         (2, 4096, 14336, False), (2, 6144, 4096, True), (4, 4096, 4096, True)):
        s = BSRShape(n, k, 4, 16, 1, interleaved=True, packed=True)
        c = d.for_shape(s, m, pdl)
        regs = d.AHEAD_REGISTERS[m, c.ahead]
        resident = launch.SMALL_GRID * d.per_sm(c.warps, regs) * c.warps
        assert (c.trigger == "early" or c.ctas <= launch.SMALL_GRID) and d.launch(s, m, c)["warps"] <= resident
        name = f"decode_m{m}_{n}x{k}_{c.key}"
        funcs[name], limit[f"{name}_kernel"] = d.bsr_decode_cuda(s, m, c).with_attrs(
            {"global_symbol": name, "tirx.is_scheduled": True}), regs
    usage = _resources_sm90(funcs, target, tmp_path)
    assert set(usage) == set(limit)
    for name, res in usage.items():
        assert res["REG"] <= limit[name] and res["STACK"] == res["LOCAL"] == 0, (name, res)
    loads = _global_loads_before_wait(tmp_path / "k.so")
    assert len(loads) == 5 and all(before and all(op.endswith("CONSTANT") and ".128" not in op for op in before)
                                   and after == "LDG.E.128" for before, after in loads.values())
    # the weights past L1 (common.WEIGHT_HINT): the loads' no-allocate flag
    assert all(any(op.startswith("LDG.E.NA.") for op in before) for before, _ in loads.values())


def test_stream_decode_grids_are_resident_and_load_only_weights_before_the_wait(tmp_path):
    """bsr_decode_stream's plan gives every thread block an equal share, which pays only if they all run at once:
    the kernels ask ptxas for that many thread blocks per SM (launch bounds) and spill nothing. With PDL the records
    and the first trip's weights are loaded before the wait, the activations after it."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode as d, bsr_decode_stream as st, launch
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    funcs, cfgs = {}, {}
    for n, k, cfg in ((4096, 4096, st.StreamConfig(32, 132, pdl=True)), (22016, 4096, st.StreamConfig(pdl=True)),
                      (12288, 4096, st.StreamConfig(8, 792)), (4096, 14336, st.StreamConfig(16, 528, ahead=False))):
        name = f"stream_{n}x{k}_{cfg.key}"
        funcs[name] = st.bsr_decode_stream(BSRShape(n, k, 4, 16, 1, interleaved=True, packed=True), 1, cfg).with_attrs(
            {"global_symbol": name, "tirx.is_scheduled": True})
        cfgs[f"{name}_kernel"] = cfg
    usage = _resources_sm90(funcs, target, tmp_path)
    assert set(usage) == set(cfgs)
    for name, res in usage.items():
        cfg = cfgs[name]
        assert launch.SMALL_GRID * d.per_sm(cfg.warps, res["REG"]) >= cfg.ctas, (name, res)
        assert res["STACK"] == res["LOCAL"] == 0, (name, res)
    loads = _global_loads_before_wait(tmp_path / "k.so")
    assert len(loads) == 2 and all(before and all(op.endswith("CONSTANT") and ".128" not in op for op in before)
                                   and after == "LDG.E.128" for before, after in loads.values())


@pytest.mark.parametrize("everywhere", [False, True])
def test_wgmma_gemm_is_a_dependent_launch_of_its_dequantizing_launch(everywhere, tmp_path):
    """BEST: the dequantizing launch lets the GEMM launch once all its blocks have started; the GEMM waits on it in
    the producer, before the first copy, and is the launch that carries the flag (with gqsa-compile's pipeline the
    dequantizing launch also waits first thing, for the launch before it, whose scratch it overwrites)."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_prefill_wgmma as w
    from tvm_schedules import launch
    from tvm_schedules.common import BSRShape

    assert w.BEST.pdl and w.SMALL.pdl
    cuda_toolchain.setup(["sm_90a"])
    try:
        target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
        f = w.bsr_prefill_wgmma(BSRShape(576, 1536, 4, 16, 1, interleaved=True), w.BEST).with_attr("global_symbol", "g")
        with target:
            lib = tvm.compile(tvm.IRModule({"g": f}), target=target,
                              tir_pipeline=launch.PIPELINE_ALL if everywhere else launch.PIPELINE)
        source = lib.mod.imports[0].inspect_source()
        lib.export_library(str(tmp_path / "g.so"))
    finally:
        cuda_toolchain.setup(["sm_80", "sm_87", "sm_89", "sm_90"])
    kernels = _kernel_bodies(source)
    wait, trigger = "tvm_builtin_ptx_griddepcontrol_wait();", "tvm_builtin_ptx_griddepcontrol_launch_dependents();"
    k0, k1 = kernels["g_kernel"], kernels["g_kernel_1"]
    # (its 72 thread blocks are one wave: gqsa-compile's pipeline also puts a trigger after the wait it adds)
    assert k0.count(trigger) == 1 + everywhere and k0.count(wait) == everywhere
    assert not everywhere or k0.index(wait) < k0.index(trigger)
    assert k1.count(wait) == 1 and k1.count(trigger) == 0
    assert k1.index(wait) < k1.index("cp_async_bulk")  # before the producer's first copy
    assert (tmp_path / "g.so").read_bytes().count(launch.PDL_TAG.encode()) == 1 + everywhere


def test_mma_decode_loads_only_weights_before_the_wait(tmp_path):
    """bsr_decode_mma with PDL: its words, codes and metadata load before the wait (read-only ``ld.global.nc``),
    its activations after it (coherent 16-byte loads, which ptxas does not move above the wait); it spills
    nothing; without PDL it does not wait and is not a dependent launch."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode_mma as mma, launch
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    funcs = {}
    for m, cfg in ((1, mma.MmaConfig(8, 2, pdl=True)), (8, mma.MmaConfig(16, 1, pdl=True)), (4, mma.MmaConfig()),
                   (2, mma.MmaConfig(8, 1, 2, tiles=2, absent_loads=True, pdl=True))):
        name = f"mma{m}_{cfg.key}"
        funcs[name] = mma.bsr_decode_mma(BSRShape(4096, 4096, 4, 16, 1), m, cfg).with_attr("global_symbol", name)
    usage = _resources_sm90(funcs, target, tmp_path)
    assert all(res["STACK"] == res["LOCAL"] == 0 for res in usage.values()), usage
    loads = _global_loads_before_wait(tmp_path / "k.so")
    assert set(loads) == {"mma1_mm_w8l2ag_kernel", "mma8_mm_w16l1ag_kernel", "mma2_mm_w8l1a2t2bg_kernel"}
    assert all(before and all(op.endswith("CONSTANT") and ".128" not in op for op in before)
               and after == "LDG.E.128" for before, after in loads.values()), loads
    assert (tmp_path / "k.so").read_bytes().count(launch.PDL_TAG.encode()) == 3  # the three waiting kernels' launches


def test_min_blocks_hint_caps_registers(tmp_path):
    """A kernel body carrying launch.MIN_BLOCKS_HINT gets it as __launch_bounds__' second argument, so ptxas
    allots at most 65536 / (threads x that many) registers; the same kernel without it takes more."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode_mma as mma
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    cfgs = {"free": mma.MmaConfig(8, 2, absent_loads=True), "six": mma.MmaConfig(8, 2, absent_loads=True, min_blocks=6),
            "eight": mma.MmaConfig(8, 2, absent_loads=True, min_blocks=8)}
    funcs = {name: mma.bsr_decode_mma(BSRShape(4096, 4096, 4, 16, 1), 8, c).with_attr("global_symbol", name)
             for name, c in cfgs.items()}
    regs = {name[:-len("_kernel")]: res["REG"] for name, res in _resources_sm90(funcs, target, tmp_path).items()}
    assert regs["six"] <= 65536 // (256 * 6) and regs["eight"] <= 65536 // (256 * 8) < regs["free"], regs


def test_mma_decode_early_trigger_follows_the_wait(tmp_path):
    """bsr_decode_mma with ``early``: the next launch's trigger (PREEXIT in the SASS) comes right after the grid
    wait (ACQBULK), before any mma; without it, after the last mma."""
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import bsr_decode_mma as mma
    from tvm_schedules.common import BSRShape

    cuda_toolchain.setup(["sm_90"])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    funcs = {name: mma.bsr_decode_mma(BSRShape(4096, 4096, 4, 16, 1), 8, mma.MmaConfig(16, 1, pdl=True, early=e))
             .with_attr("global_symbol", name) for name, e in (("late", False), ("early", True))}
    _resources_sm90(funcs, target, tmp_path)
    order = {}
    for chunk in cuda_toolchain.sass_by_arch(tmp_path / "k.so")[90].split("Function : ")[1:]:
        ops = re.findall(r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z]+)", chunk, re.M)
        order[chunk[:chunk.index("_kernel")]] = {op: [i for i, o in enumerate(ops) if o == op]
                                                 for op in ("ACQBULK", "PREEXIT", "HMMA")}
    early, late = order["early"], order["late"]
    assert len(early["PREEXIT"]) == len(late["PREEXIT"]) == 1, order
    assert max(early["ACQBULK"]) < early["PREEXIT"][0] < min(early["HMMA"]), early
    assert late["PREEXIT"][0] > max(late["HMMA"]), late
