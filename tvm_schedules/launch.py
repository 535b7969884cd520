"""Programmatic dependent launch (sm_90+): a kernel may start while the one before it in the stream finishes.

A decode GEMV pays a fixed cost per call (launch, thread blocks ramping up, the last ones draining) that a
copy of the same bytes pays too (docs/perf.md). Its weights never depend on the kernel before it, only its
activations do, so the next kernel's thread blocks can be launched and placed while the current one drains.
The kernel says where it first needs the previous kernel's output (``griddepcontrol.wait``) and that the
next one may launch (``griddepcontrol.launch_dependents``); the launch itself must ask for it
(``cuLaunchKernelEx`` with programmatic stream serialization), which TVM's CUDA runtime does for kernels
whose launch parameters carry its flag. TVM 0.27 computes those parameters itself and never adds the flag,
so kernels are built with the TIR pipeline ``PIPELINE``: TVM's default plus one device pass that flags every
kernel that waits on the grid dependency, and only those (and gives __launch_bounds__ the thread blocks per SM a
kernel's body asks for). ``PIPELINE_ALL`` (gqsa-compile's default where every
arch is sm_90+) first makes every other kernel wait too, so that all of a model's kernels take part: the
GEMVs alone gained nothing end to end, between norms, RoPE and attention launched the plain way.
``griddepcontrol`` exists from sm_90 on.
"""
from __future__ import annotations

import re

import tvm
from tvm.s_tir import pipeline as s_tir_pipeline
from tvm.script import tirx as T
from tvm.tirx import compilation_pipeline

PIPELINE = "gqsa"
PIPELINE_ALL = "gqsa_pdl"  # every kernel a dependent launch (gqsa-compile --pdl)
SMALL_GRID = 132  # thread blocks: at most one wave on an H100, so an early trigger takes no slot it needs
PDL_TAG = "tirx.use_programtic_dependent_launch"  # (sic) TVM's spelling
DYN_SMEM_TAG = "tirx.use_dyn_shared_memory"  # must stay the last launch parameter
LAUNCH_PARAMS = "tirx.kernel_launch_params"
MIN_BLOCKS_HINT = "gqsa.min_blocks_per_sm"  # an AttrStmt a kernel's body may carry: thread blocks an SM must hold
MIN_BLOCKS_TAG = "tirx.launch_bounds_min_blocks_per_sm"  # what TVM's CUDA codegen puts in __launch_bounds__
MIN_ARCH = 90


def supported(archs: list[str]) -> bool:
    """Whether every arch of a build has griddepcontrol (sm_90 and later)."""
    return all(int("".join(c for c in a if c.isdigit())) >= MIN_ARCH for a in archs)


WAIT_CALL = 'griddepcontrol("wait"'  # how a kernel's script shows the call


def _flagged(func):
    """``func`` with the PDL flag in its launch parameters (before the dynamic shared memory tag, the last)."""
    tags = [str(t) for t in func.attrs[LAUNCH_PARAMS]]
    at = len(tags) - (tags[-1:] == [DYN_SMEM_TAG])
    return func.with_attr(LAUNCH_PARAMS, tags[:at] + [PDL_TAG] + tags[at:])


@tvm.transform.module_pass(opt_level=0, name="gqsa.LaunchAttributes")
def launch_attributes(mod, _ctx):
    """What each device kernel's body asks of its launch, from one read of its script (2.6 ms for the 4096 x 4096
    decode kernel here; under PIPELINE_ALL wait_on_grid_everywhere reads it once more):
    - the PDL flag in its launch parameters where it calls griddepcontrol.wait, and only there;
    - __launch_bounds__' second argument where its body carries the attribute MIN_BLOCKS_HINT (a schedule's
      register budget: ptxas allots registers so that that many thread blocks fit an SM). The hint has to travel
      in the body: a PrimFunc's own attributes do not reach the kernels split from it."""
    for gv, func in list(mod.functions_items()):
        params = (func.attrs or {}).get(LAUNCH_PARAMS)
        if params is None:
            continue
        script = func.script()
        if PDL_TAG not in params and WAIT_CALL in script:
            func = _flagged(func)
        hint = re.findall(rf'"{re.escape(MIN_BLOCKS_HINT)}": (\d+)', script)
        if hint and int(hint[0]) > 0:
            func = func.with_attr(MIN_BLOCKS_TAG, int(hint[0]))
        mod.update_func(gv, func)
    return mod


def _grid_size(script: str) -> int | None:
    """Thread blocks of a device kernel (the product of its blockIdx extents), None where one is not a constant
    (TVM 0.27's Python side has no statement visitor; its script is what launch_attributes reads too)."""
    size = 1
    for extent in re.findall(r'T\.launch_thread\("blockIdx\.[xyz]", (.*)\) as blockIdx', script):
        if not extent.strip().isdigit():
            return None
        size *= int(extent)
    return size


def _prepend(stmt, first):
    """``first`` inside the kernel's leading attributes (thread extents), so every thread runs it first."""
    if isinstance(stmt, tvm.tirx.AttrStmt):
        return tvm.tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _prepend(stmt.body, first))
    return tvm.tirx.SeqStmt(first + [stmt])


@tvm.transform.module_pass(opt_level=0, name="gqsa.WaitOnGridEverywhere")
def wait_on_grid_everywhere(mod, _ctx):
    """Every device kernel that does not wait on the grid dependency yet waits for it before anything else, so
    all of them can be launched as dependents: a kernel's thread blocks are placed while the one before it
    finishes. Each then lets the next kernel launch as soon as its own wait is over (that one cannot pass its
    own wait before this one ends, so at most one kernel runs ahead), unless its grid is a constant of more
    than SMALL_GRID thread blocks: an early trigger in the decode GEMV, whose 1056 thread blocks fill the
    GPU, measured slower (docs/perf.md). A grid that grows with the token count triggers early too: the next
    kernel launches only once every thread block of this one has started, so it takes slots of the last wave."""
    for gv, func in list(mod.functions_items()):
        if (func.attrs or {}).get(LAUNCH_PARAMS) is None:
            continue
        script = func.script()
        if WAIT_CALL in script:
            continue
        size = _grid_size(script)
        first = [tvm.tirx.Evaluate(T.ptx.griddepcontrol.wait())]
        if size is None or size <= SMALL_GRID:
            first.append(tvm.tirx.Evaluate(T.ptx.griddepcontrol.launch_dependents()))
        # flagged here, as this pass knows it waits now (launch_attributes leaves the flag as it is)
        mod.update_func(gv, _flagged(func.with_body(_prepend(func.body, first))))
    return mod


def _pipeline(everywhere: bool = False):
    lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()
    device = [finalize_device()] + [wait_on_grid_everywhere] * everywhere + [launch_attributes]
    return lower, finalize_host, lambda: tvm.ir.transform.Sequential(device)


compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)
compilation_pipeline.register_tir_pipeline(PIPELINE_ALL, lambda: _pipeline(everywhere=True))
