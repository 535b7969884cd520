"""Programmatic dependent launch (sm_90+): a kernel may start while the one before it in the stream finishes.

A decode GEMV pays a fixed cost per call (launch, thread blocks ramping up, the last ones draining) that a
copy of the same bytes pays too (docs/perf.md). Its weights never depend on the kernel before it, only its
activations do, so the next kernel's thread blocks can be launched and placed while the current one drains.
The kernel says where it first needs the previous kernel's output (``griddepcontrol.wait``) and that the
next one may launch (``griddepcontrol.launch_dependents``); the launch itself must ask for it
(``cuLaunchKernelEx`` with programmatic stream serialization), which TVM's CUDA runtime does for kernels
whose launch parameters carry its flag. TVM 0.27 computes those parameters itself and never adds the flag,
so kernels are built with the TIR pipeline ``PIPELINE``: TVM's default plus one device pass that flags every
kernel that waits on the grid dependency, and only those. ``griddepcontrol`` exists from sm_90 on.
"""
from __future__ import annotations

import tvm
from tvm.s_tir import pipeline as s_tir_pipeline
from tvm.tirx import compilation_pipeline

PIPELINE = "gqsa"
PDL_TAG = "tirx.use_programtic_dependent_launch"  # (sic) TVM's spelling
DYN_SMEM_TAG = "tirx.use_dyn_shared_memory"  # must stay the last launch parameter
LAUNCH_PARAMS = "tirx.kernel_launch_params"
MIN_ARCH = 90


def supported(archs: list[str]) -> bool:
    """Whether every arch of a build has griddepcontrol (sm_90 and later)."""
    return all(int("".join(c for c in a if c.isdigit())) >= MIN_ARCH for a in archs)


def waits_on_grid(func) -> bool:
    return 'griddepcontrol("wait"' in func.script()


@tvm.transform.module_pass(opt_level=0, name="gqsa.FlagDependentLaunch")
def flag_dependent_launch(mod, _ctx):
    """Add the PDL flag to the launch parameters of each device kernel that calls griddepcontrol.wait."""
    for gv, func in list(mod.functions_items()):
        params = (func.attrs or {}).get(LAUNCH_PARAMS)
        if params is None or PDL_TAG in params or not waits_on_grid(func):
            continue
        tags = [str(t) for t in params]
        at = len(tags) - (tags[-1:] == [DYN_SMEM_TAG])
        mod.update_func(gv, func.with_attr(LAUNCH_PARAMS, tags[:at] + [PDL_TAG] + tags[at:]))
    return mod


def _pipeline():
    lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()
    return lower, finalize_host, lambda: tvm.ir.transform.Sequential([finalize_device(), flag_dependent_launch])


compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)
