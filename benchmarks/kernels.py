"""BSR int4 kernel benchmark: build every variant here (no GPU), run them all on a GPU from one bundle.

    python benchmarks/kernels.py build out/kbench [--quick]         # CPU machine: kernels.so + runtime bundle
    python3 out/kbench/run.py --json kernels.json                   # GPU host: check, then time (no compiler)
    python benchmarks/kernels.py report kernels.json [--doc docs/perf.md]

On the GPU every kernel's output is first checked against an fp32 torch reference on fresh random data
(a failure is reported and the run exits non-zero), then timed with CUDA events: a spin kernel holds the
stream while a few hundred calls are queued, so launch overhead is not timed, and calls cycle over enough
copies of the weights (>= 3x the 50 MB L2) that every call reads its weights from DRAM. Medians of 7.
Baselines timed in the same run: torch fp16 ``F.linear`` (cuBLAS) on the dense shape, TVM's dlight
GEMV / LowBatchGEMV rules on a dense int4 g32 dequant-GEMV (the MLC-LLM q4f16_1 path), and the
device-to-device copy bandwidth that "% of copy" refers to.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import zlib
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (6144, 4096), (28672, 4096), (4096, 14336)]
DECODE_M = (1, 2, 4, 8)
PREFILL_M = (16, 128, 512, 4096)
BITS, GROUP = 4, 16
L2_BYTES = 50 * 2**20


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


# ----------------------------------------------------------------------------------------------- cases
def kernel_name(family: str, n: int, k: int, m: int | None, rows: int, cfg: str = "") -> str:
    return f"{family}_n{n}_k{k}_m{m or 'T'}_r{rows}" + (f"_{cfg}" if cfg else "")


def plan(quick: bool = False, archs=("sm_90",)) -> tuple[dict, list]:
    """(kernels to build: name -> spec, cases to run: list of dicts); wgmma variants only for sm_90a."""
    from tvm_schedules import (bsr_decode, bsr_decode_mma, bsr_decode_stream, bsr_prefill, bsr_prefill_tiled,
                               bsr_prefill_wgmma, launch)
    from tvm_schedules.common import WEIGHT_HINT, BSRShape

    kernels, cases = {}, []
    shapes = SHAPES[:2] if quick else SHAPES

    def add(fam, n, k, m, rows, sparsity=0.5, alloc="row", cfg=None, tag="main", bits=BITS, group=GROUP,
            packed=False, listed=True):
        """Register the kernel and return its case, appended to the run's cases unless ``listed`` is False (a
        member of a chain case)."""
        kind = "prefill" if fam.startswith("bsr_prefill") else "decode"
        key = cfg.key if cfg else ""
        name = kernel_name(fam, n, k, m if kind == "decode" else None, rows, key) + (
            f"_b{bits}g{group}" if (bits, group) != (BITS, GROUP) else "") + ("_pm" if packed else "")
        kernels[name] = {"family": fam, "n": n, "k": k, "m": m if kind == "decode" else None, "rows": rows,
                         "cfg": cfg.__dict__ if cfg else None, "interleaved": True, "bits": bits, "group": group,
                         "packed": packed}
        case = {"kind": kind, "tag": tag, "kernel": name, "n": n, "k": k, "m": m, "rows": rows, "sparsity": sparsity,
                "alloc": alloc, "cfg": key, "family": fam, "bits": bits, "group": group}
        if listed:
            cases.append(case)
        return case

    for n, k in shapes:
        for m in DECODE_M:
            add("bsr_decode", n, k, m, 1)
            add("bsr_decode", n, k, m, 1, alloc="layer", tag="unequal rows")
            kernels[kernel_name("dense_int4", n, k, m, 1)] = {"family": "dense_int4", "n": n, "k": k, "m": m}
        for m in (1, 8):
            for sp in (0.3, 0.7):
                add("bsr_decode", n, k, m, 1, sparsity=sp, tag="sparsity")
            for rows in (4, 8, 16):
                add("bsr_decode", n, k, m, rows, tag="block height")
    for n, k in shapes:  # thread block count and size: activations are staged once per thread block
        for m in (1, 2, 4):
            for warps, ctas in ((4, 1056), (8, 1056), (8, 264), (8, 528), (16, 132), (16, 264), (32, 132)):
                cfg = replace(bsr_decode.tuned(m, 1, k), warps=warps, ctas=ctas)
                if cfg != bsr_decode.tuned(m, 1, k):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="sweep", cfg=cfg)
    for n, k in shapes[:1] + shapes[-1:]:
        for m in (1, 8):
            for cfg in bsr_decode.SWEEP:
                add("bsr_decode", n, k, m, 1, cfg=cfg, tag="sweep")
            for cfg in bsr_decode.SWEEP_TALL:
                add("bsr_decode", n, k, m, 16, cfg=cfg, tag="sweep")
    # the other code paths (fp32 decode, packed-halves prefill): an 8-bit G32 head like SmolLM2's tied one,
    # and 2-bit G16; correctness first, their times are in the JSON
    for bits, group in ((8, 32), (2, 16)):
        for m in (1, 8):
            add("bsr_decode", 49152, 576, m, 1, sparsity=0.0, tag="other bits", bits=bits, group=group)
        add("bsr_prefill", 49152, 576, 128, 1, sparsity=0.0, tag="other bits", bits=bits, group=group)
        add("bsr_prefill", 4096, 4096, 128, 16, tag="other bits", bits=bits, group=group)
    for n, k in shapes[:1] + shapes[-1:]:  # R = 16 (the per-warp kernel's sparse walk)
        for cfg in bsr_prefill.SWEEP:
            add("bsr_prefill", n, k, 512, 16, cfg=cfg, tag="sweep")
    for n, k in shapes:  # activations staged in dynamic shared memory (up to 96 KB) where static cannot hold them
        for m in (2, 4, 8):
            if 48 * 1024 < m * k * 2 <= 96 * 1024:
                for warps, ctas in ((8, 264), (16, 132), (16, 264), (32, 132)):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="sweep",
                            cfg=replace(bsr_decode.tuned(m, 1, k), warps=warps, ctas=ctas, smem_kb=96))
    for n, k in shapes:
        for m in PREFILL_M[:3] if quick else PREFILL_M:
            for rows in (1, 16):
                add("bsr_prefill", n, k, m, rows)
        for rows in (4, 8):
            add("bsr_prefill", n, k, 512, rows, tag="block height")
        for sp in (0.3, 0.7):
            add("bsr_prefill", n, k, 512, 16, sparsity=sp, tag="sparsity")
    for n, k in shapes:  # R < 16: the tiled GEMM's configurations beside the per-warp kernel it replaced
        for m in PREFILL_M:
            add("bsr_prefill_warp", n, k, m, 1, tag="tiled")
            for cfg in [bsr_prefill_tiled.DEFAULT] + bsr_prefill_tiled.SWEEP:
                add("bsr_prefill_tiled", n, k, m, 1, cfg=cfg, tag="tiled")
        for m in PREFILL_M:  # R = 16: the per-warp walk over kept blocks, beside the tiled GEMM (tag main)
            add("bsr_prefill_warp", n, k, m, 16, tag="tiled")
        for sp in (0.3, 0.7):
            add("bsr_prefill_warp", n, k, 512, 16, sparsity=sp, tag="tiled")
        for m in (32, 64, 256):  # around the bounds of the choice by M (bsr_prefill_tiled.TUNED)
            add("bsr_prefill", n, k, m, 1, tag="tiled")
            add("bsr_prefill_warp", n, k, m, 1, tag="tiled")
            for cfg in sorted({c for plan in bsr_prefill_tiled.TUNED.values() for _, c in plan}, key=str):
                add("bsr_prefill_tiled", n, k, m, 1, cfg=cfg, tag="tiled")
    for n, k in shapes[:1] + shapes[-1:]:  # token counts that are not a multiple of the token tile
        for m in (40, 100, 128, 129, 130, 136, 160, 192, 255, 256):
            for rows in (1, 16):
                add("bsr_prefill", n, k, m, rows, tag="ragged m")
    for m in (128, 129, 200, 256):  # the same for the per-warp kernel (SmolLM2's 8-bit tied head)
        add("bsr_prefill", 49152, 576, m, 1, sparsity=0.0, tag="ragged m head", bits=8, group=32)
    for n, k in shapes:  # split-K at small M: more thread blocks where a grid of few row tiles leaves SMs idle
        for m in (16, 64, 128):
            add("bsr_prefill", n, k, m, 1, tag="split-k")
            for base in (bsr_prefill_tiled.SMALL, bsr_prefill_tiled.MID, bsr_prefill_tiled.LARGE):
                for splits in (1, 2, 4):
                    add("bsr_prefill_tiled", n, k, m, 1, cfg=replace(base, splits=splits), tag="split-k")
    for n, k in [sh for sh in shapes if sh[0] < 8192]:  # split-K past 128 tokens, where the plan has none
        for m in (384, 512):  # and past 256: 128 x 128 tiles leave 4096 rows at 1 to 4 token tiles half a wave
            add("bsr_prefill", n, k, m, 1, tag="split-k 512")
            for splits in (1, 2, 4):
                add("bsr_prefill_tiled", n, k, m, 1, cfg=replace(bsr_prefill_tiled.DEFAULT, splits=splits),
                    tag="split-k 512")
        for m in (192, 256):
            add("bsr_prefill", n, k, m, 1, tag="split-k 256")
            for base in (bsr_prefill_tiled.MID, bsr_prefill_tiled.DEFAULT):
                for splits in (1, 2, 4):
                    add("bsr_prefill_tiled", n, k, m, 1, cfg=replace(base, splits=splits), tag="split-k 256")
    wgmma = "sm_90a" in archs  # Hopper's wgmma: operands straight from shared memory (sm_90a code only)
    current(add, shapes, archs)
    layers(add, cases, archs)
    if wgmma:
        for n, k in shapes:
            for m in PREFILL_M:
                add("bsr_prefill", n, k, m, 1, tag="wgmma")
                for cfg in bsr_prefill_tiled.SWEEP_WGMMA:
                    add("bsr_prefill_tiled", n, k, m, 1, cfg=cfg, tag="wgmma")
    if wgmma:  # R = 1, sm_90a: weights dequantized once per call, then a wgmma GEMM over a shared-memory ring (the
        # tags of the variants it replaced, "wgmma pipeline", "wgmma swizzle", "wgmma swizzle sweep", "wgmma direct",
        # "wgmma store", build at commit 94b0234, the last with them; docs/perf.md)
        for n, k in shapes:
            for m in (128, 256, 512, 1024):  # where the producer-warp kernel overtakes the compiled plan
                add("bsr_prefill", n, k, m, 1, tag="wgmma crossover")
                add("bsr_prefill_wgmma", n, k, m, 1, cfg=bsr_prefill_wgmma.BEST, tag="wgmma crossover")
            for m in (128, 129, 512, 513, 1024, 2048, 4096):  # what gqsa-compile builds for sm_90a: wgmma from 129 tokens
                add("bsr_prefill_sm90a", n, k, m, 1, tag="plan sm90a")
            for m in (128, 129, 256, 512, 4096):  # R = 16: the tiled plan (skips pruned blocks) or wgmma
                add("bsr_prefill", n, k, m, 16, tag="plan sm90a r16")
                add("bsr_prefill_sm90a", n, k, m, 16, tag="plan sm90a r16")
        # (tag "wgmma keep scratch": the scratch stored with an L2 evict_last policy, WgmmaConfig.keep_scratch, builds at
        # commit 675958d, the only one with it; kernels_wgmma_keep_scratch_run{1,2}_h100.json: 0.986-1.026x)
        # SmolLM2-135M's matrices (the default model): sm_90a's plan beside the tiled plan alone
        for n, k in ((576, 576), (960, 576), (3072, 576), (576, 1536)):
            for m in (128, 129, 256, 512, 1024):
                add("bsr_prefill", n, k, m, 1, tag="plan sm90a small")
                add("bsr_prefill_sm90a", n, k, m, 1, tag="plan sm90a small")
        # where BEST's time goes: without its epilogue, without the dequantizing launch (wrong results, unchecked)
        for n, k in shapes:
            for m in (512, 4096):
                for ablate in ("", "store", "dequant"):
                    add("bsr_prefill_wgmma", n, k, m, 1, cfg=replace(bsr_prefill_wgmma.BEST, ablate=ablate),
                        tag="wgmma ablation")
        # the GEMM as a programmatic dependent launch of the dequantizing launch, or not
        for n, k in shapes + [(3072, 576), (576, 1536)]:
            for m in (129, 512, 1024, 4096):
                for base in (bsr_prefill_wgmma.SMALL, bsr_prefill_wgmma.BEST) if m <= 512 else (bsr_prefill_wgmma.BEST,):
                    for pdl in (False, True):
                        add("bsr_prefill_wgmma", n, k, m, 1, cfg=replace(base, pdl=pdl), tag="wgmma pdl")
    for base in [bsr_prefill_tiled.DEFAULT] + bsr_prefill_tiled.SWEEP_WGMMA[:1] * wgmma:
        for n, k in shapes[:2]:  # where the tiled GEMM's time goes: leave out one stage (wrong results, unchecked)
            for m in (512, 4096):
                for ablate in ("", "weights", "activations"):
                    add("bsr_prefill_tiled", n, k, m, 1, cfg=replace(base, ablate=ablate), tag="ablation")
    # Decode: is the row kernel bound by its loads or by the arithmetic between them, and do its three small
    # metadata loads per block cost more than their bytes? Every load and no math, or the codes alone with
    # the math, at more blocks per lane per trip (more bytes in flight per warp), beside the full kernel.
    for n, k in (shapes[0], shapes[-2], shapes[-1]) if not quick else shapes[:1]:
        for m in (1, 8):
            for unroll in (2, 4, 8):
                for ablate in ("", "math", "meta"):
                    add("bsr_decode", n, k, m, 1, tag="ablation",
                        cfg=replace(bsr_decode.tuned(m, 1, k), unroll=unroll, ablate=ablate))
    # Decode M >= 2: activations staged group-major with each lane's token order rotated (conflict-free
    # gathers), beside the same launch without it; at M = 8 also staged at all (K = 4096: 64 KB), at M = 2
    # also with two lanes per block.
    for n, k in shapes if not quick else shapes[:1]:
        for m in (2, 4, 8):
            base = replace(bsr_decode.tuned(m, 1, k), rotate=False)
            cfgs = {base} if base.stages(m, k) else set()
            if m == 8:
                cfgs |= {c for c in (bsr_decode.DecodeConfig(32, 4, 2, ctas=132, smem_kb=92),
                                     bsr_decode.DecodeConfig(16, 4, 2, ctas=264, smem_kb=92)) if c.stages(m, k)}
            if m == 2:  # two lanes per block, so a quarter-warp holds four blocks to rotate over
                cfgs |= {c for c in (bsr_decode.DecodeConfig(16, 2, 2, ctas=264, smem_kb=92),
                                     bsr_decode.DecodeConfig(16, 4, 2, ctas=264, smem_kb=92)) if c.stages(m, k)}
            for cfg in sorted(cfgs, key=lambda c: c.key):
                for rot in (False, True):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="rotate", cfg=replace(cfg, rotate=rot))
    # Decode: rows to warps by a per-matrix longest-first plan (tvm_schedules.warp_plan) beside the default
    # grid-stride order, on balanced and unequal rows
    for n, k in shapes if not quick else shapes[:1]:
        for m in (1, 2, 4, 8):
            for p in (False, True):
                for alloc in ("row", "layer"):
                    add("bsr_decode", n, k, m, 1, alloc=alloc, tag="warp plan",
                        cfg=replace(bsr_decode.tuned(m, 1, k), plan=p))
    # Decode with programmatic dependent launch (sm_90+): back-to-back calls overlap one's launch and ramp-up
    # with the previous one's drain, as consecutive GEMVs of a decode step would
    if launch.supported(archs):
        for n, k in shapes if not quick else shapes[:1]:
            for m in DECODE_M:
                for p in (False, True):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="pdl", cfg=replace(bsr_decode.tuned(m, 1, k), pdl=p))
        # M = 1 launches retuned with PDL on: with the next kernel overlapping this one's tail, fewer and
        # longer-lived thread blocks or more loads in flight may pay off differently
        for n, k in shapes if not quick else shapes[:1]:
            for warps, ctas, unroll in ((8, 528, 2), (8, 264, 2), (16, 264, 2), (16, 132, 2), (32, 132, 2),
                                        (8, 1056, 4), (16, 528, 2)):
                add("bsr_decode", n, k, 1, 1, tag="pdl sweep", cfg=replace(
                    bsr_decode.tuned(1, 1, k), warps=warps, ctas=ctas, unroll=unroll, pdl=True))
    # Block metadata packed into one uint32 per block as gqsa-compile stores it (BSRShape.packed: the kernels take
    # no scales and zeros), beside the separate tensors, for every kernel that reads the weights: decode, the
    # default prefill plan and sm_90a's (tag "packed meta", the decode kernel alone with two packings, builds at
    # commit 31d1bfb)
    for n, k in shapes if not quick else shapes[:1]:
        for packed in (False, True):
            for m in DECODE_M:
                for alloc in ("row",) if m > 1 else ("row", "layer"):
                    add("bsr_decode", n, k, m, 1, alloc=alloc, tag="packed plan", packed=packed)
            for m in PREFILL_M:
                add("bsr_prefill", n, k, m, 1, tag="packed plan", packed=packed)
            if wgmma:
                for m in (129, 512, 4096):
                    add("bsr_prefill_sm90a", n, k, m, 1, tag="packed plan", packed=packed)
    # Packed metadata with programmatic dependent launch (back to back, as a decode step's GEMVs run), and
    # whether a GEMV that loads one word less per block wants more blocks per lane in flight, or other warps
    if launch.supported(archs):
        for n, k in shapes if not quick else shapes[:1]:
            for packed in (False, True):
                for m in DECODE_M:
                    for alloc in ("row",) if m > 1 else ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="packed pdl", packed=packed,
                            cfg=replace(bsr_decode.tuned(m, 1, k), pdl=True))
        # where the next kernel may launch: each warp done (as built before), the whole thread block done, or its
        # exit (as built now)
        for n, k in shapes if not quick else shapes[:1]:
            for m in (1, 2):
                for trigger in ("warp", "block", "exit"):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="pdl trigger", packed=True,
                            cfg=replace(bsr_decode.tuned(m, 1, k), pdl=True, trigger=trigger))
    # (tags "ahead" and "ahead long", loads in flight across phases on the LLaMA shapes, build at commit 2ab48ff,
    # and "ahead regs" at cb1b9d3; report still prints their table from the JSON)
    # ... on SmolLM2-135M's matrices (fused QKV, O, fused gate/up, down), the compiled default model, where a
    # GEMV is a few microseconds and its chain of round trips (staging, indptr, loads) is most of it
    for n, k in ((960, 576), (576, 576), (3072, 576), (576, 1536)):
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                for a in (0, 1, 2):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="ahead small", packed=True,
                        cfg=replace(bsr_decode.tuned(1, 1, k), pdl=pdl, ahead=a))
    # one wave by wider thread blocks (16 or 32 warps, at most 132 of them, looping over rows), so that the grid
    # triggers the next launch early and loads ahead, on matrices of 3072-6144 rows
    for n, k in ((3072, 576), (4096, 4096), (6144, 4096), (4096, 11008), (4096, 14336)):
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                for v in (dict(), dict(warps=16, ctas=132), dict(warps=16, ctas=132, ahead=2),
                          dict(warps=32, ctas=132), dict(warps=32, ctas=132, ahead=2)):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="one wave", packed=True,
                        cfg=replace(bsr_decode.tuned(1, 1, k), pdl=pdl, **v))
    def equal_rounds(n, warps, per_sm):  # thread blocks that hold n rows in equal rounds, all resident at once
        rounds = -(-n // (warps * launch.SMALL_GRID * per_sm))
        return -(-n // (warps * rounds))

    def rule(tag, shapes_, m=1):  # the launch gqsa-compile picks (bsr_decode.for_shape) beside the tuning before it
        for n, k in shapes_:
            for pdl in (False, True) if launch.supported(archs) else (False,):
                for alloc in ("row", "layer"):
                    shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
                    for cfg in (replace(bsr_decode.tuned(m, 1, k), pdl=pdl), bsr_decode.for_shape(shape, m, pdl)):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag=tag, packed=True, cfg=cfg)

    # up to 4224 rows: a warp per row in one wave, loads ahead
    rule("one wave rule", ((1536, 576), (2048, 4096), (2048, 8192), (3072, 4096), (4096, 4096), (4096, 11008),
                           (4096, 14336), (5120, 13824)))
    # larger grids whose thread blocks all fit at once when sized to the registers (6 thread blocks of 8 warps per
    # SM at 40 registers, 8 at 32): loads ahead, the early trigger, equal rounds of rows (tag "resident", with a
    # warp's next row issued in its last trip, DecodeConfig.chain, is at commit 46c52b7; report prints both tags)
    for n, k in ((6144, 4096), (12288, 4096), (22016, 4096), (28672, 4096)):
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                base = bsr_decode.tuned(1, 1, k)
                # the early trigger alone, equal rounds at 32 registers, the first trip (or two) ahead
                more = [dict(ahead=1, ctas=equal_rounds(n, 8, 6)), dict(ahead=2, ctas=equal_rounds(n, 8, 6))] + [
                    dict(ctas=equal_rounds(n, 8, 8))] * (equal_rounds(n, 8, 8) < min(-(-n // base.warps), base.ctas))
                for v in [dict()] + more + [dict(v, trigger="early") for v in [dict()] + more] * pdl:
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="resident 2", packed=True,
                        cfg=replace(base, pdl=pdl, **v))
    # M = 1 on matrices of 2048-4096 rows: the one-wave grid's 132 thread blocks of 16 or 32 warps beside thread
    # blocks of 8 or 16 warps, all resident (at most 6 or 3 per SM at 40 registers), one row per warp
    # (tag "small blocks 2": more matrices of 1536 and 3072 rows, whose 132-block grids leave SMs idle)
    for tag, some in (("small blocks", ((2048, 4096), (3072, 4096), (4096, 4096), (4096, 11008), (4096, 14336))),
                      ("small blocks 2", ((1536, 576), (1536, 4096), (3072, 576), (3072, 3072), (3072, 4096),
                                          (3072, 8192)))):
        for n, k in some:
            warps = next(w for w in (8, 16, 32) if n <= launch.SMALL_GRID * w)  # the one-wave grid, as before
            wave = replace(bsr_decode.tuned(1, 1, k), warps=warps, ctas=launch.SMALL_GRID, ahead=2)
            for pdl in (False, True) if launch.supported(archs) else (False,):
                for alloc in ("row", "layer"):
                    for cfg in [wave] + [replace(wave, warps=w, ctas=-(-n // w), trigger="early" if pdl else "exit")
                                         for w in (8, 16) if w < warps]:
                        add("bsr_decode", n, k, 1, 1, alloc=alloc, tag=tag, packed=True, cfg=replace(cfg, pdl=pdl))
    # M = 1 on 4225-6336 rows: a warp per row, all resident, in thread blocks of 8, 16 or 24 warps (6, 3 or 2 per SM at
    # 40 registers): fewer thread blocks per SM stage the activations fewer times
    for n, k in ((5120, 5120), (5120, 13824), (6144, 4096), (6144, 8192)):
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                base = bsr_decode.tuned(1, 1, k)
                for v in [dict()] + [dict(warps=w, ctas=-(-n // w), ahead=2, trigger="early" if pdl else "exit")
                                     for w in (8, 16, 24)]:
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="resident blocks", packed=True,
                        cfg=replace(base, pdl=pdl, **v))
    # ... and on 8449-12672 rows, two rows per warp, the first trip ahead, with PDL (tag "resident blocks 2")
    if launch.supported(archs):
        for n, k in ((10240, 4096), (11008, 4096), (12288, 4096), (9216, 8192)):
            for alloc in ("row", "layer"):
                base = replace(bsr_decode.tuned(1, 1, k), pdl=True)
                for v in [dict()] + [dict(warps=w, ctas=-(-n // (2 * w)), ahead=1, trigger="early") for w in (8, 16)]:
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="resident blocks 2", packed=True,
                        cfg=replace(base, **v))
    # M = 1 one-wave grids with a whole row's blocks in fewer trips (4 blocks per lane: one trip per 128 kept blocks,
    # so with loads ahead a 4096-column row is all in flight before the wait) or more (1 block per lane)
    for n, k in ((3072, 576), (2048, 4096), (3072, 4096), (4096, 4096), (4096, 11008), (4096, 14336)):
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                for v in (dict(), dict(unroll=4), dict(unroll=4, ahead=1), dict(unroll=1)):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="unroll ahead", packed=True,
                        cfg=replace(bsr_decode.for_shape(shape, 1, pdl), **v))
    # M = 4 on matrices of at most 4224 rows, where the tuned 132 thread blocks of 32 warps give each row a warp
    rule("ahead m4", ((576, 576), (1536, 576), (3072, 576), (2048, 4096), (3072, 4096), (4096, 4096), (4096, 8192),
                      (4096, 11008)), m=4)
    # two trips in flight (ahead = 3: the register sets take turns, each trip's loads go out before the trip before
    # it has landed) on the grids for_shape makes resident, beside what it launches now
    for m, some in ((1, ((576, 1536), (3072, 576), (2048, 4096), (3072, 4096), (4096, 4096), (4096, 11008),
                         (4096, 14336), (5120, 13824), (6144, 4096))),
                    (2, ((2048, 4096), (4096, 4096), (4096, 14336))), (4, ((3072, 4096), (4096, 4096), (4096, 11008)))):
        for n, k in some:
            shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
            for pdl in (False, True) if launch.supported(archs) else (False,):
                before = bsr_decode.for_shape(shape, m, pdl)  # (M = 2 with PDL: ahead 2, as before this tag)
                before = replace(before, ahead=min(before.ahead, 2))
                for alloc in ("row", "layer"):
                    for v in (dict(), dict(ahead=3)):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="ahead 3", packed=True, cfg=replace(before, **v))
    # M = 2, 4, 8 loading ahead: at M = 2 grids sized to be resident (3 thread blocks of 16 warps per SM at the 40
    # registers of ahead = 1, 2 at ahead = 2's 56) with the early trigger; at M = 4 and 8 the tuned 132 thread
    # blocks (one wave already)
    for n, k in shapes:
        for m in (2, 4, 8):
            base = bsr_decode.tuned(m, 1, k)
            if not base.stages(m, k):
                continue
            for pdl in (False, True) if launch.supported(archs) else (False,):
                early = "early" if pdl else "exit"
                if m == 2:
                    variants = [dict(), dict(ahead=1, ctas=equal_rounds(n, base.warps, 3), trigger=early),
                                dict(ahead=2, ctas=equal_rounds(n, base.warps, 2), trigger=early)]
                else:
                    variants = [dict(), dict(ahead=1), dict(ahead=2)]
                for alloc in ("row", "layer"):
                    for v in variants:
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="ahead batch", packed=True,
                            cfg=replace(base, pdl=pdl, **v))
    # past 4224 rows: thread blocks of 8 warps, all resident, loading ahead, early trigger
    rule("resident rule", ((5120, 5120), (5120, 13824), (6144, 4096), (8192, 4096), (8192, 8192), (10240, 4096),
                           (11008, 4096), (12288, 4096)))
    # M = 2: up to 6336 rows a warp per row, all resident, loading ahead, early trigger
    rule("resident rule m2", shapes + [(2048, 4096), (5120, 5120)], m=2)

    def beside_rows(tag, shapes_, m, stream_cfgs):
        """Stream kernels (``stream_cfgs(pdl)``) beside the row kernel as gqsa-compile launches it, balanced and
        unequal rows, plain and PDL."""
        for n, k in shapes_:
            shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
            if not bsr_decode_stream.supports(shape, m):
                continue
            for pdl in (False, True) if launch.supported(archs) else (False,):
                for alloc in ("row", "layer"):
                    add("bsr_decode", n, k, m, 1, alloc=alloc, tag=tag, packed=True,
                        cfg=bsr_decode.for_shape(shape, m, pdl))
                    for cfg in stream_cfgs(pdl):
                        add("bsr_decode_stream", n, k, m, 1, alloc=alloc, tag=tag, packed=True, cfg=cfg)

    stream = bsr_decode_stream.StreamConfig  # (the result files of tags "stream", "stream u4", "stream small" and
    # "stream batch" predate its one_boundary default: commit 00ca279 builds what they measured)
    # M = 1: warps that split a thread block's kept blocks across row boundaries (tvm_schedules.bsr_decode_stream; the
    # rows dealt to thread blocks by a per-matrix plan), pieces equal or in whole trips (the default), and two lanes
    # a block (tag "stream ablate", in kernels_stream_ablate_h100.json: the first version, without the one-record fast
    # paths, at commit 2105cae, with parts left out)
    beside_rows("stream", shapes, 1, lambda pdl: [
        stream(w, c, ahead=a, pdl=pdl, trip_cut=cut) for w, c, a in (
            (32, 132, True), (24, 264, True), (16, 396, True), (8, 792, True), (32, 264, False), (16, 528, False))
        for cut in (False, True)] + [
        stream(w, c, unroll=u, pdl=pdl, lanes=2) for w, c, u in ((16, 396, 2), (16, 264, 4))])
    # M = 1 with 4 blocks a lane per trip: half the trips, each trip's fixed instructions over twice the blocks
    beside_rows("stream u4", shapes, 1, lambda pdl: [stream(w, c, unroll=u, ahead=a, pdl=pdl) for w, c, u, a in (
        (16, 396, 2, True), (8, 396, 4, True), (16, 264, 4, True), (8, 528, 4, True), (16, 396, 4, False),
        (8, 792, 4, False), (16, 264, 4, False))])
    # SmolLM2-135M's shapes, where a thread block gets one or two rows and most warps no trip (what
    # gqsa-compile --decode-kernel stream builds for it)
    beside_rows("stream small", ((576, 576), (192, 576), (1536, 576), (576, 1536)), 1,
                lambda pdl: [stream(pdl=pdl, trip_cut=cut) for cut in (False, True)])
    # M = 2, 4, 8: thread blocks small enough to stay resident with M x K activations staged and M accumulators (16
    # warps x 396 spill at M = 4; 8 warps x 396 need 3 x M x K x 2 bytes of shared memory); one lane a block, pieces
    # equal or in whole trips, or two lanes a block, each with one code word, 4 blocks a lane per trip (as the row
    # kernel from M = 2), or 2 where 4 would spill
    stream_batch = {2: ((16, 396), (8, 396), (16, 264), (16, 132)), 4: ((8, 396), (8, 264), (16, 132)),
                    8: ((8, 264), (16, 132))}
    stream_lanes = {2: ((16, 396, 2), (8, 396, 4), (16, 264, 4), (16, 132, 4)),
                    4: ((8, 396, 4), (8, 264, 4), (16, 132, 4)), 8: ((8, 264, 4), (16, 132, 4))}
    for m in stream_batch:
        beside_rows("stream batch", shapes, m, lambda pdl, m=m: [
            stream(w, c, pdl=pdl, trip_cut=cut) for w, c in stream_batch[m] for cut in (False, True)] + [
            stream(w, c, unroll=u, pdl=pdl, lanes=2) for w, c, u in stream_lanes[m]])
    # (tag "stream one end", kernels_stream_one_end_run{1,2}_h100.json: at commit 5abe821, a path of its own for a
    # trip in which one row ends, beside the default at M = 1 and two lanes a block at M = 2)
    # a trip in which one row ends: lanes' records from that row's end, and the two rows' sums without a loop
    beside_rows("stream one boundary", shapes, 1, lambda pdl: [stream(pdl=pdl, one_boundary=b) for b in (False, True)])
    beside_rows("stream one boundary", shapes, 2, lambda pdl: [
        stream(16, 264, unroll=4, pdl=pdl, lanes=2, one_boundary=b) for b in (False, True)])
    # one case per tag, for a profiler (ncu) to find by tag: the compiled stream kernel on 4096 x 4096 and 6144 x
    # 4096, plain, balanced or unequal rows
    for n, k in ((4096, 4096), (6144, 4096)):
        for alloc in ("row", "layer"):
            add("bsr_decode_stream", n, k, 1, 1, alloc=alloc, tag=f"stream profile {n} {alloc}", packed=True,
                cfg=stream())
    # M = 1 on the row kernel with 4 blocks a lane per trip: a 256-block row walks 2 trips, not 4 (unequal rows)
    for n, k in shapes:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            base = bsr_decode.for_shape(shape, 1, pdl)
            for alloc in ("row", "layer"):
                for v in (dict(), dict(unroll=4), dict(unroll=4, ahead=min(base.ahead, 1))):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="unequal u4", packed=True, cfg=replace(base, **v))
    # M = 1-8 on tensor cores (tvm_schedules.bsr_decode_mma: 16-row tiles stored by column group, one mma per
    # group), beside the row kernel as gqsa-compile launches it, balanced and unequal rows, plain and PDL launches
    # (kernels_mma_decode_v1_h100.json: the first version, each lane 4 values of two blocks per mma, keys
    # mm_w{warps}l{column groups per register set}; kernels_mma_decode_v2_h100.json: lanes owning whole blocks,
    # before the LOP3 and the metadata halves ready to use; kernels_mma_decode_run{1,2}_h100.json: v3, before
    # the shift-free upper nibbles, the byte permutes and the branch-free loads, with one set ahead only)
    # its configurations (warps, look, ahead, tiles, absent_loads): chosen from 10 plain and 12 PDL ones in an A/B
    # run (kernels_mma_decode_ab_h100.json, M = 1 and 8; within 0-10% of the fastest per shape), and two tiles a
    # thread block; one build of all of them took nvcc too long here
    Mma = bsr_decode_mma.MmaConfig
    mma_plain = [Mma(8, 2, 1, 1, True), Mma(16, 2, 1, 1, True), Mma(4, 2, 1, 1, False), Mma(8, 1, 1, 2, True)]
    mma_pdl = [Mma(8, 2, 1, 1, True), Mma(16, 1, 1, 1, False), Mma(16, 2, 1, 1, True), Mma(8, 1, 2, 1, False),
               Mma(8, 1, 1, 2, True), Mma(16, 1, 1, 2, True)]
    # and (tag "mma plan") the launch bsr_decode_mma.for_shape picks
    for tag, launches in (("mma decode", lambda shape, m, pdl: [replace(c, pdl=pdl)
                                                                for c in (mma_pdl if pdl else mma_plain)]),
                          ("mma plan", lambda shape, m, pdl: [bsr_decode_mma.for_shape(shape, m, pdl)])):
        for n, k in shapes:
            shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
            for m in DECODE_M:
                for alloc in ("row", "layer"):
                    for pdl in (False, True) if launch.supported(archs) else (False,):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag=tag, packed=True,
                            cfg=bsr_decode.for_shape(shape, m, pdl))
                        for c in launches(shape, m, pdl):
                            add("bsr_decode_mma", n, k, m, 1, alloc=alloc, tag=tag, cfg=c)
    def beside_row_kernel(tag, n, k, ms, cfgs, allocs=lambda m: ("row",)):
        """The row kernel as bsr_decode.for_shape launches it with PDL, then tensor-core configurations ``cfgs``, per
        M of ``ms`` and allocation of ``allocs(M)`` (the tags below, all PDL; sm_90+ builds only)."""
        if not launch.supported(archs):
            return
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for m in ms:
            for alloc in allocs(m):
                add("bsr_decode", n, k, m, 1, alloc=alloc, tag=tag, packed=True,
                    cfg=bsr_decode.for_shape(shape, m, True))
                for c in cfgs:
                    add("bsr_decode_mma", n, k, m, 1, alloc=alloc, tag=tag, cfg=c)

    def as_pdl(cfgs, early=(False,)):
        """``cfgs`` as PDL launches, each with the trigger of every ``early`` flag in turn."""
        return [replace(c, pdl=True, early=e) for c in cfgs for e in early]

    def both(m):
        return "row", "layer"  # balanced and unequal rows
    # the tensor-core GEMV on the two wide shapes, closest to 4x cuBLAS: deeper sets, more warps (PDL)
    for n, k in [(4096, 11008), (4096, 14336)]:
        beside_row_kernel("mma sweep", n, k, (2, 4, 8), [Mma(w, look, ahead, 1, True, pdl=True) for w, look, ahead in (
            (16, 2, 1), (16, 2, 2), (16, 4, 1), (16, 1, 3), (32, 1, 1), (32, 2, 1))])
    # registers capped so that more thread blocks fit an SM (MmaConfig.min_blocks: __launch_bounds__' second
    # argument; 48 registers hold 5 thread blocks of 8 warps, 40 six, 32 eight), beside the uncapped ones (PDL).
    # kernels_mma_occupancy_run1_h100.json: 1.05-1.08x where the cap makes the grid one wave (12288 x 4096, and
    # 6144 x 4096 at M = 1), slower where it does not (0.66-0.89x; spills)
    capped = [Mma(8, 2, 1, 1, True, min_blocks=6), Mma(8, 2, 1, 1, True, min_blocks=8),
              Mma(8, 1, 2, 1, True, min_blocks=6), Mma(8, 1, 2, 1, True, min_blocks=8),
              Mma(8, 1, 2, 1, False, min_blocks=6), Mma(16, 1, 1, 1, False, min_blocks=3),
              Mma(16, 1, 1, 1, False, min_blocks=4), Mma(16, 2, 1, 1, True, min_blocks=3),
              Mma(16, 2, 1, 1, True, min_blocks=4), Mma(16, 1, 2, 1, True, min_blocks=3),
              Mma(4, 2, 1, 1, True, min_blocks=12)]
    for n, k in shapes:
        beside_row_kernel("mma occupancy", n, k, DECODE_M, as_pdl(mma_pdl + capped), both)
    # the tall shapes in one wave: two or four tiles a thread block, 4-warp thread blocks, registers capped (PDL).
    # kernels_mma_one_wave_run{1,2}_h100.json: 22016 x 4096 at M = 8 1.08x with mm_w4l1a2t2bg, the rest 0.68-1.03x
    one_wave = [Mma(8, 2, 1, 1, True), Mma(8, 2, 1, 1, True, min_blocks=6), Mma(8, 1, 1, 2, True, min_blocks=6),
                Mma(4, 1, 1, 2, True), Mma(4, 2, 1, 2, True, min_blocks=7), Mma(4, 2, 1, 1, True, min_blocks=11),
                Mma(4, 1, 1, 4, True), Mma(4, 1, 2, 2, True)]
    for n, k in [(12288, 4096), (22016, 4096), (28672, 4096)]:
        beside_row_kernel("mma one wave", n, k, DECODE_M, as_pdl(one_wave))
    # the next launch triggered right after the wait (MmaConfig.early), beside the trigger after the loop, in each
    # shape's fastest one-wave configurations of the runs above (PDL). kernels_mma_early_run{1,2,3}_h100.json:
    # 1.06-1.11x where the grid leaves SM slots free (4096 and 6144 rows), 0.99-1.03x on 12288 and 22016, 0.95-0.97x
    # on 28672 x 4096 at M >= 2
    resident = {(4096, 4096): [Mma(16, 1, 1)], (4096, 11008): [Mma(16, 1, 1), Mma(16, 1, 3, 1, True)],
                (4096, 14336): [Mma(16, 2, 1, 1, True), Mma(16, 1, 3, 1, True)],
                (6144, 4096): [Mma(16, 1, 1, min_blocks=3), Mma(8, 1, 2)],
                (12288, 4096): [Mma(8, 2, 1, 1, True, min_blocks=6), Mma(8, 1, 2, 1, True, min_blocks=6)],
                (22016, 4096): [Mma(4, 1, 2, 2, True)], (28672, 4096): [Mma(4, 2, 1, 2, True, min_blocks=7)]}
    for (n, k), cfgs in resident.items():
        beside_row_kernel("mma early", n, k, DECODE_M, as_pdl(cfgs, early=(False, True)))
    # the early trigger's configurations swept on the shapes closest to 4x (PDL; M = 1 on 4096 x 4096 only).
    # kernels_mma_early_sweep_run{1,2}_h100.json: mm_w16l1a3bge fastest on the 4096-row shapes (4096 x 14336
    # 4.04-4.11x cuBLAS at M = 2-8, 4096 x 4096 4.15-4.16x at M = 1)
    wide = [Mma(16, 1, 1), Mma(16, 1, 1, 1, True), Mma(16, 1, 2, 1, True), Mma(16, 1, 3, 1, True), Mma(16, 2, 1),
            Mma(16, 2, 1, 1, True), Mma(16, 2, 2, 1, True), Mma(8, 1, 2), Mma(8, 2, 1, 1, True), Mma(8, 1, 3, 1, True),
            Mma(32, 1, 1, 1, True)]
    paired = [Mma(4, 1, 2, 2, True), Mma(4, 2, 1, 2, True), Mma(4, 1, 3, 2, True), Mma(4, 2, 2, 2, True),
              Mma(4, 1, 2, 2)]
    for n, k, cfgs in [(4096, 4096, wide), (4096, 11008, wide), (4096, 14336, wide), (6144, 4096, wide),
                       (22016, 4096, paired)]:
        beside_row_kernel("mma early sweep", n, k, DECODE_M if (n, k) == (4096, 4096) else DECODE_M[1:],
                          as_pdl(cfgs, early=(True,)))
    # unequal rows at M = 1 on the two shapes the row and stream kernels leave short of 10%: the early-trigger
    # tensor-core GEMV beside the row kernel, balanced and unequal rows (PDL).
    # kernels_mma_early_rows_run{1,2,3}_h100.json: 4096 x 4096 unequal rows on it 6.6-8.8% faster than balanced
    # ones on the row kernel; 6144 x 4096 +19.5-21.0%
    for n, k, cfgs in [(4096, 4096, [Mma(16, 1, 3, 1, True), Mma(16, 2, 1)]),
                       (6144, 4096, [Mma(16, 1, 1, min_blocks=3), Mma(8, 1, 2), Mma(16, 1, 3, 1, True, min_blocks=3)])]:
        beside_row_kernel("mma early rows", n, k, (1,), as_pdl(cfgs, early=(True,)), both)
    # the tall shapes with the early trigger in grids that leave more SM slots free: two tiles a thread block,
    # registers capped (PDL, M = 2-8). kernels_mma_early_tall{,2,3}_run*_h100.json: 12288 x 4096 9.3-9.6 us with
    # mm_w8l2at2o3bge (4.00-4.06x cuBLAS), 28672 x 4096 20.7-21.4 with mm_w4l1at2bge (3.89-4.00x); capped 22016 slower
    tall = {(12288, 4096): [Mma(8, 1, 1, 2, True), Mma(8, 2, 1, 2, True), Mma(8, 1, 2, 2, True, min_blocks=4)],
            (22016, 4096): [Mma(4, 1, 2, 2, True, min_blocks=7), Mma(4, 1, 2, 2, True, min_blocks=8),
                            Mma(4, 1, 1, 2, True, min_blocks=8), Mma(4, 2, 1, 2, True, min_blocks=7)],
            (28672, 4096): [Mma(4, 2, 1, 2, True, min_blocks=8), Mma(4, 1, 1, 2, True),
                            Mma(4, 1, 2, 2, True, min_blocks=8)]}
    # and again, two register sets of 2 steps for two tiles in 3 thread blocks an SM (88 registers at M = 8 hold 2)
    tall2 = {(12288, 4096): [Mma(8, 2, 1, 2, True), Mma(8, 2, 1, 2, True, min_blocks=3)],
             (6144, 4096): [Mma(8, 2, 1, 2, True), Mma(16, 2, 1, 2, True, min_blocks=2),
                            Mma(16, 1, 1, 2, True, min_blocks=2)]}
    # and on the shapes still short of 4x: two tiles a thread block on 22016 x 4096 and 4096 x 4096 (M = 8 there)
    tall3 = {(22016, 4096): [Mma(4, 1, 1, 2, True), Mma(4, 1, 2, 2, True)],
             (28672, 4096): [Mma(4, 1, 1, 2, True), Mma(4, 1, 2, 2, True, min_blocks=7)],
             (4096, 4096): [Mma(16, 1, 3, 1, True), Mma(16, 1, 3, 2, True), Mma(8, 2, 1, 2, True),
                            Mma(16, 2, 1, 2, True)]}
    for tag, runs in (("mma early tall", tall), ("mma early tall 2", tall2), ("mma early tall 3", tall3)):
        for (n, k), cfgs in runs.items():
            beside_row_kernel(tag, n, k, DECODE_M[1:], as_pdl(cfgs, early=(True,)))
    # 10 and 12 warps a thread block: 3 of them an SM at 64 registers, so 6144 x 4096's 384 tiles fit one wave
    # uncapped (PDL, early trigger; balanced rows, and unequal ones at M = 1). kernels_mma_ten_warps_run{1,2}_h100.json:
    # 6144 x 4096 1.03x at M = 1 (10 warps), 1.14x at M = 8 (12 warps), still under 4x cuBLAS; 4096 x 4096 slower
    odd = [Mma(10, 1, 1), Mma(10, 2, 1, 1, True), Mma(10, 1, 3, 1, True, min_blocks=3),
           Mma(12, 1, 3, 1, True, min_blocks=3), Mma(16, 1, 1, min_blocks=3), Mma(16, 1, 3, 1, True)]
    for n, k in [(6144, 4096), (4096, 4096)]:
        beside_row_kernel("mma ten warps", n, k, DECODE_M, as_pdl(odd, early=(True,)),
                          lambda m: ("row", "layer") if m == 1 else ("row",))
    # tag "mma plan" (with "mma decode" above): at M = 1 also the capped one-tile launches of 12288 and 28672 rows,
    # measured at M = 1 in tag "mma early", where for_shape's two-tile launches were not.
    # kernels_mma_plan_run{1,2}_h100.json: with PDL 4x cuBLAS on 9 of the 21 (shape, M >= 2), 3.93-4.01x on 7
    for n, k, alt in [(12288, 4096, Mma(8, 2, 1, 1, True, min_blocks=6)),
                      (28672, 4096, Mma(4, 2, 1, 2, True, min_blocks=7))] if launch.supported(archs) else []:
        add("bsr_decode_mma", n, k, 1, 1, tag="mma plan", cfg=replace(alt, pdl=True, early=True))
    # cache hints on the weight loads (common.weight_load: L1::no_allocate, the L2::256B prefetch size, both): the
    # row kernel at M = 1 as gqsa-compile launches it (plain and PDL, balanced and unequal rows), and the tensor-core
    # GEMV at M = 2 and 8 as for_shape launches it (PDL)
    for n, k in shapes:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for hint in ("", "p", "n", "np"):
            for pdl in (False, True) if launch.supported(archs) else (False,):
                for alloc in ("row", "layer"):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="cache hints", packed=True,
                        cfg=replace(bsr_decode.for_shape(shape, 1, pdl), hint=hint))
            for m in (2, 8) if launch.supported(archs) else ():
                add("bsr_decode_mma", n, k, m, 1, tag="cache hints",
                    cfg=replace(bsr_decode_mma.for_shape(shape, m, True), hint=hint))
    # L1::no_allocate on the weight loads as gqsa-compile would launch each kernel, beside no hint: the row kernel
    # at M = 1 and 2 (plain and PDL, balanced and unequal rows; LLaMA's and SmolLM2's shapes), the stream kernel at
    # M = 1 on unequal rows where bsr_decode_stream.pays picks it, the tensor-core GEMV on the tall shapes (PDL)
    for n, k in shapes + [(960, 576), (576, 576), (3072, 576), (576, 1536)]:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for hint in ("", "n"):
            for pdl in (False, True) if launch.supported(archs) else (False,):
                for m in (1, 2):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="cache hints 2", packed=True,
                            cfg=replace(bsr_decode.for_shape(shape, m, pdl), hint=hint))
                if bsr_decode_stream.pays_on_shape(shape, pdl):
                    add("bsr_decode_stream", n, k, 1, 1, alloc="layer", tag="cache hints 2", packed=True,
                        cfg=bsr_decode_stream.StreamConfig(pdl=pdl, hint=hint))
            for m in (2, 4, 8) if launch.supported(archs) and n >= 12288 else ():
                add("bsr_decode_mma", n, k, m, 1, tag="cache hints 2",
                    cfg=replace(bsr_decode_mma.for_shape(shape, m, True), hint=hint))
    # the M = 1 launch of the tall and wide shapes retuned with the weight loads past L1 (the hint changes how long a
    # load waits): more blocks a lane per trip, more warps, fewer thread blocks, the first trip ahead (plain and PDL)
    for n, k in [(12288, 4096), (22016, 4096), (28672, 4096), (4096, 14336)]:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            base = bsr_decode.for_shape(shape, 1, pdl)
            for v in (dict(), dict(unroll=4), dict(warps=16, ctas=528), dict(ctas=528), dict(unroll=4, ctas=528),
                      dict(ahead=1), dict(unroll=1)):
                for alloc in ("row", "layer"):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="hint sweep", packed=True, cfg=replace(base, **v))
    # the M = 1 launch of the 4096-row shapes and 6144 x 4096 (the two short of the targets at M = 1) beside variants
    # of it with the weight loads past L1: both trips of a row in flight at once (ahead = 3, measured before at
    # M = 2 only), one or four blocks a lane per trip, 16-warp thread blocks, no fence (plain and PDL, balanced and
    # unequal rows); the stream kernel with other thread block counts and trips on 6144 x 4096's unequal rows, and
    # the tensor-core GEMV at M = 1 for reference
    for n, k in [(4096, 4096), (4096, 11008), (4096, 14336), (6144, 4096)]:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            base = bsr_decode.resident_launch(shape, 1, pdl)  # for_shape's launch before it left the fence out
            for v in (dict(), dict(ahead=3), dict(ahead=3, unroll=1), dict(unroll=1), dict(unroll=4),
                      dict(warps=base.warps // 2, ctas=base.ctas * 2), dict(fence=False)):
                for alloc in ("row", "layer"):
                    add("bsr_decode", n, k, 1, 1, alloc=alloc, tag="m1 retune", packed=True, cfg=replace(base, **v))
            if launch.supported(archs):
                for alloc in ("row", "layer"):
                    add("bsr_decode_mma", n, k, 1, 1, alloc=alloc, tag="m1 retune",
                        cfg=bsr_decode_mma.for_shape(shape, 1, pdl))
            if n == 6144:
                for ctas, unroll in ((396, 2), (264, 2), (528, 2), (396, 4), (264, 4)):
                    add("bsr_decode_stream", n, k, 1, 1, alloc="layer", tag="m1 retune", packed=True,
                        cfg=bsr_decode_stream.StreamConfig(ctas=ctas, unroll=unroll, pdl=pdl, hint="n"))
    # tag "m1 retune" found the fence (DecodeConfig.fence: a shared-memory store of every loaded word, so that
    # ptxas keeps a trip's loads together) 1-2% slower than none on those shapes with the weight loads past L1:
    # the row kernel as for_shape launched it beside the same launch without the fence, at every M, on LLaMA's and
    # SmolLM2's shapes (plain and PDL, balanced and unequal rows). kernels_fence_run{1,2}_h100.json: at M = 1 on
    # the LLaMA shapes 0.999-1.077x the speed without it, but 12288 x 4096 with PDL (ahead = 1) 0.86x; so for_shape
    # leaves it out there (bsr_decode.NO_FENCE_K)
    for n, k in shapes + [(960, 576), (576, 576), (3072, 576), (576, 1536)]:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for m in DECODE_M:
                base = bsr_decode.resident_launch(shape, m, pdl)  # for_shape's launch before this tag
                for cfg in (base, replace(base, fence=False)):
                    for alloc in ("row", "layer"):
                        add("bsr_decode", n, k, m, 1, alloc=alloc, tag="fence", packed=True, cfg=cfg)
    # the tall shapes' M = 1 launch retuned without the fence (28672 x 4096 is at 83% of the copy bandwidth with PDL):
    # more or fewer blocks a lane, thread blocks and warps, loads ahead (balanced rows: unequal ones take the stream
    # kernel there; plain and PDL)
    for n, k in [(28672, 4096), (22016, 4096), (12288, 4096)]:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in (False, True) if launch.supported(archs) else (False,):
            base = replace(bsr_decode.for_shape(shape, 1, pdl), fence=False)
            for v in (dict(), dict(unroll=4), dict(unroll=1), dict(ctas=base.ctas // 2), dict(ctas=base.ctas * 2),
                      dict(warps=base.warps * 2, ctas=base.ctas // 2), dict(warps=base.warps // 2, ctas=base.ctas * 2),
                      dict(ahead=1), dict(ahead=2)):
                add("bsr_decode", n, k, 1, 1, tag="tall sweep", packed=True, cfg=replace(base, **v))
    # 4096 x 4096's unequal rows at M = 1, +10.2% on the row kernel once its balanced rows lost the fence: the stream
    # kernel there (which pays_on_shape leaves out: it lost before the weight loads went past L1) at several thread
    # block counts, beside the row kernel as for_shape launches it (plain and PDL)
    shape = BSRShape(4096, 4096, BITS, GROUP, 1, interleaved=True, packed=True)
    for pdl in (False, True) if launch.supported(archs) else (False,):
        for alloc in ("row", "layer"):
            add("bsr_decode", 4096, 4096, 1, 1, alloc=alloc, tag="stream 4096", packed=True,
                cfg=bsr_decode.for_shape(shape, 1, pdl))
        for ctas, unroll in ((396, 2), (264, 2), (132, 2), (264, 1), (396, 1)):
            add("bsr_decode_stream", 4096, 4096, 1, 1, alloc="layer", tag="stream 4096", packed=True,
                cfg=bsr_decode_stream.StreamConfig(ctas=ctas, unroll=unroll, pdl=pdl, hint=WEIGHT_HINT))
    # (tag "mma staged", the thread block's tiles bulk-copied whole into shared memory before the grid wait,
    # MmaConfig.staged: builds at commit d48a138, the only one with it; kernels_mma_staged_h100.json: 0.79-0.98x
    # for_shape's launch on 4096-12288 rows, 1.00-1.04x on 22016 and 28672 rows at M = 1 and 2)
    # (tag "mma walk", thread blocks walking several tiles a grid apart, MmaConfig.per_block: builds at commit
    # aea77c1, the last with it; kernels_mma_walk_run{1,2}_h100.json: 0.79-0.99x the speed of a thread block per tile)
    for n, k in shapes if not quick else shapes[:1]:
        for m, cfgs in ((1, [dict(), dict(unroll=1), dict(unroll=4), dict(warps=4), dict(warps=16)]),
                        (2, [dict(), dict(unroll=2), dict(unroll=8)])):
            for c in cfgs:
                add("bsr_decode", n, k, m, 1, tag="packed sweep", packed=True,
                    cfg=replace(bsr_decode.tuned(m, 1, k), **c))
    return kernels, cases


CURRENT_PREFILL_M = (16, 128, 512, 1024, 2048, 4096)


def add_compiled_decode(add, n: int, k: int, m: int, alloc: str, pdl: bool, tag: str, listed: bool = True) -> dict:
    """The decode GEMV gqsa-compile builds for an n x k matrix (tvm_schedules.bsr_matmul; 4-bit G16 R1, packed
    metadata): at M = 1 on unequal rows the stream kernel where ``bsr_decode_stream.pays_on_shape``, else the row
    kernel as ``bsr_decode.for_shape`` launches it. ``add``: plan()'s; returns the case."""
    from tvm_schedules import bsr_decode, bsr_decode_stream
    from tvm_schedules.common import WEIGHT_HINT, BSRShape

    shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
    if m == 1 and alloc == "layer" and bsr_decode_stream.pays_on_shape(shape, pdl):
        return add("bsr_decode_stream", n, k, 1, 1, alloc=alloc, tag=tag, packed=True, listed=listed,
                   cfg=bsr_decode_stream.StreamConfig(pdl=pdl, hint=WEIGHT_HINT))
    return add("bsr_decode", n, k, m, 1, alloc=alloc, tag=tag, packed=True, listed=listed,
               cfg=bsr_decode.for_shape(shape, m, pdl))


def current(add, shapes, archs) -> None:
    """Tag "current", docs/perf.md's headline tables: every kernel as its module picks it today, the way
    gqsa-compile stores the weights (interleaved codes; packed metadata where R = 1; the stream kernel's plan on
    unequal rows where ``bsr_decode_stream.pays``). Decode: the row kernel at M = 1-8 (``bsr_decode.for_shape``),
    plain (the default sm_87 + sm_90 build) and with PDL (every arch sm_90+), balanced and unequal rows; the
    tensor-core GEMV at M = 2-8 (``bsr_decode_mma.for_shape``, benchmark only); 30% and 70% pruned; R = 4, 8, 16.
    Prefill: the default build's tiled plan and the sm_90a build's plan (wgmma from 129 tokens), R = 1 and 16."""
    from tvm_schedules import bsr_decode, bsr_decode_mma, launch
    from tvm_schedules.common import BSRShape

    pdls = (False, True) if launch.supported(archs) else (False,)
    for n, k in shapes:
        shape = BSRShape(n, k, BITS, GROUP, 1, interleaved=True, packed=True)
        for pdl in pdls:
            for m in DECODE_M:
                for alloc in ("row", "layer"):
                    add_compiled_decode(add, n, k, m, alloc, pdl, "current")
                    if m > 1:
                        add("bsr_decode_mma", n, k, m, 1, alloc=alloc, tag="current",
                            cfg=bsr_decode_mma.for_shape(shape, m, pdl))
            for sp in (0.3, 0.7):
                add("bsr_decode", n, k, 1, 1, sparsity=sp, tag="current", packed=True,
                    cfg=bsr_decode.for_shape(shape, 1, pdl))
                add("bsr_decode_mma", n, k, 8, 1, sparsity=sp, tag="current",
                    cfg=bsr_decode_mma.for_shape(shape, 8, pdl))
        for rows in (4, 8, 16):
            tall = BSRShape(n, k, BITS, GROUP, rows, interleaved=True)
            for m in (1, 8):
                add("bsr_decode", n, k, m, rows, tag="current", cfg=bsr_decode.for_shape(tall, m, pdls[-1]))
        for rows in (1, 16):  # the default build's plan (tiled mma.sync GEMM), then sm_90a's
            for m in CURRENT_PREFILL_M:
                add("bsr_prefill", n, k, m, rows, tag="current", packed=rows == 1)
        add("bsr_prefill", n, k, 512, 16, sparsity=0.3, tag="current")
        add("bsr_prefill", n, k, 512, 16, sparsity=0.7, tag="current")
        if "sm_90a" in archs:
            for rows in (1, 4, 8, 16):
                for m in CURRENT_PREFILL_M if rows in (1, 16) else (512,):
                    add("bsr_prefill_sm90a", n, k, m, rows, tag="current", packed=rows == 1)
            for sp in (0.3, 0.7):
                add("bsr_prefill_sm90a", n, k, 512, 1, sparsity=sp, tag="current", packed=True)


LAYERS = {"LLaMA-2-7B": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],  # qkv, o, gate/up, down
          "LLaMA-3-8B": [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)],
          "SmolLM2-135M": [(960, 576), (576, 576), (3072, 576), (576, 1536)]}


def layers(add, cases, archs) -> None:
    """Tag "layer": a decoder layer's four GEMVs at M = 1 (q/k/v and gate/up stacked, as gqsa-compile fuses them),
    launched back to back as a decode step runs them, each the kernel tag "current" times alone (the row kernel, or
    the stream kernel on unequal rows where it pays), plain and PDL, against torch fp16 doing the same four. A chain
    case carries its members' cases; the run checks each member's output before it times the chain."""
    from tvm_schedules import launch

    for model, mats in LAYERS.items():
        for pdl in (False, True) if launch.supported(archs) else (False,):
            for alloc in ("row", "layer"):
                members = [add_compiled_decode(add, n, k, 1, alloc, pdl, "layer", listed=False) for n, k in mats]
                cases.append({"kind": "chain", "tag": "layer", "kernel": f"layer_{model}_{'pdl' if pdl else 'plain'}",
                              "n": sum(n for n, _ in mats), "k": mats[0][1], "m": 1, "rows": 1, "sparsity": 0.5,
                              "alloc": alloc, "cfg": model, "family": "chain", "bits": BITS, "group": GROUP,
                              "members": members})


# ----------------------------------------------------------------------------------------------- build
def dense_int4(n: int, k: int, m: int):
    """The MLC-LLM q4f16_1 layout: 8 codes per uint32, one fp16 scale per 32 weights, w = (q - 7) * s.

    M = 1 is specialised to a static shape (dlight's GEMV rule, what MLC runs for single-sequence decode);
    M > 1 keeps a symbolic batch (its LowBatchGEMV rule, what MLC runs for batched decode)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def f(x_h: T.handle, w: T.Buffer((n, k // 8), "uint32"), s: T.Buffer((n, k // 32), "float16"),
          y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        b = T.int64()
        x = T.match_buffer(x_h, (b, k), "float16")
        y = T.match_buffer(y_h, (b, n), "float16")
        dq = T.sblock_alloc_buffer((n, k), "float16")
        for i, j in T.grid(n, k):
            with T.sblock("dequantize"):
                vi, vj = T.axis.remap("SS", [i, j])
                dq[vi, vj] = (T.Cast("float16", (w[vi, vj // 8] >> T.Cast("uint32", vj % 8 * 4)) & T.uint32(15))
                              - T.float16(7)) * s[vi, vj // 32]
        for t, i, j in T.grid(b, n, k):
            with T.sblock("matmul"):
                vt, vi, vj = T.axis.remap("SSR", [t, i, j])
                with T.init():
                    y[vt, vi] = T.float16(0)
                y[vt, vi] = y[vt, vi] + x[vt, vj] * dq[vi, vj]

    if m == 1:
        one = tvm.tirx.IntImm("int64", 1)
        f = f.specialize({f.params[0]: tvm.tirx.decl_buffer((one, k), "float16"),
                          f.params[3]: tvm.tirx.decl_buffer((one, n), "float16")})
    return f


def _schedule_dense_int4(n, k, m, target):
    from tvm.s_tir import dlight as dl

    rule = dl.gpu.GEMV() if m == 1 else dl.gpu.LowBatchGEMV(m)
    sch = rule.apply(dense_int4(n, k, m), target, False)
    if sch is None:
        raise RuntimeError(f"dlight did not schedule the dense int4 kernel {n}x{k} m={m}")
    return sch.mod["main"]


def selected(case: dict, only: str) -> bool:
    """``only``: comma-separated tags, kernel-name substrings, or ``=name`` for one kernel exactly; a
    leading ``!`` selects every case the rest does not (the full run is two calls: X and !X)."""
    if only.startswith("!"):
        return not selected(case, only[1:])
    return any(o == case["tag"] or (o[1:] == case["kernel"] if o.startswith("=") else o in case["kernel"])
               for o in only.split(","))


def build(out: str, archs: list[str], quick: bool, only: str | None = None, ms: list[int] | None = None) -> None:
    import tvm

    import tvm_schedules
    from gqsa_compile import cuda_toolchain
    from runtime.bundle import add_runtime
    from runtime.files import writing_dir
    from tvm_schedules import (bsr_decode, bsr_decode_mma, bsr_decode_stream, bsr_prefill, bsr_prefill_tiled,
                               bsr_prefill_wgmma, launch)
    from tvm_schedules.common import BSRShape

    kernels, cases = plan(quick, archs)
    if only or ms:
        cases = [c for c in cases if (not only or selected(c, only)) and (not ms or c["m"] in ms)]
        wanted = ({c["kernel"] for c in cases} | {q["kernel"] for c in cases for q in c.get("members", ())}
                  | {kernel_name("dense_int4", c["n"], c["k"], c["m"], 1) for c in cases})
        kernels = {name: spec for name, spec in kernels.items() if name in wanted}
        if not cases:
            raise UsageError(" and ".join(([f"--only {only!r}"] if only else []) + (
                [f"--m {', '.join(map(str, ms))}"] if ms else [])) + " selects no case")
    cuda_toolchain.setup(archs)
    target = tvm.target.Target({"kind": "cuda", "arch": archs[0], "max_shared_memory_per_block": 49152,
                                "max_threads_per_block": 1024, "thread_warp_size": 32}, host="llvm")
    funcs = {}
    with target:
        for name, spec in kernels.items():
            s = BSRShape(spec["n"], spec["k"], spec.get("bits", BITS), spec.get("group", GROUP), spec.get("rows", 1),
                         interleaved=spec.get("interleaved", False), packed=spec.get("packed", False))
            fam = spec["family"]
            if fam == "dense_int4":
                f = _schedule_dense_int4(spec["n"], spec["k"], spec["m"], target)
            elif fam == "bsr_decode":
                cfg = bsr_decode.DecodeConfig(**spec["cfg"]) if spec["cfg"] else bsr_decode.for_shape(
                    s, spec["m"])
                f = bsr_decode.bsr_decode_cuda(s, spec["m"], cfg)
                if cfg.plan:  # what the GPU side needs to plan the rows of each case's weights
                    spec["warp_plan"] = bsr_decode.launch(s, spec["m"], cfg)
            elif fam == "bsr_decode_stream":  # the GPU side appends the plan of each case's rows to indptr
                cfg = bsr_decode_stream.StreamConfig(**spec["cfg"])
                f = bsr_decode_stream.bsr_decode_stream(s, spec["m"], cfg)
                spec["stream_plan"] = cfg.ctas
            elif fam == "bsr_decode_mma":  # the GPU side re-lays each case's weights in 16-row column tiles
                f = bsr_decode_mma.bsr_decode_mma(s, spec["m"], bsr_decode_mma.MmaConfig(**spec["cfg"]))
                spec["column_tiles"] = True
            elif fam == "bsr_prefill_tiled":  # one configuration, or the plan by M that gqsa-compile would use
                f = bsr_prefill_tiled.bsr_prefill_tiled(s, bsr_prefill_tiled.TiledConfig(**spec["cfg"]) if spec["cfg"]
                                                        else bsr_prefill_tiled.tuned(s))
            elif fam == "bsr_prefill_sm90a":  # gqsa-compile's choice when every arch is sm_90a
                f = tvm_schedules.bsr_matmul(s, None, target, wgmma=True)
            elif fam == "bsr_prefill_wgmma":
                f = bsr_prefill_wgmma.bsr_prefill_wgmma(s, bsr_prefill_wgmma.WgmmaConfig(**spec["cfg"]))
            elif fam == "bsr_prefill_warp":  # the per-warp kernel at its tuned configuration, for comparison
                f = bsr_prefill.bsr_prefill_mma(s, bsr_prefill.tuned(s.rows))
            else:
                cfg = bsr_prefill.PrefillConfig(**spec["cfg"]) if spec["cfg"] else None
                f = tvm_schedules.bsr_matmul(s, None, target, prefill_cfg=cfg)
            funcs[name] = f.with_attr("global_symbol", name)
        print(f"building {len(funcs)} kernels for {', '.join(archs)}", flush=True)
        lib = tvm.compile(tvm.IRModule(funcs), target=target, tir_pipeline=launch.PIPELINE)
    with writing_dir(Path(out)) as tmp:
        (tmp / "kernels").mkdir()
        lib.export_library(str(tmp / "kernels" / "kernels.so"))
        fatbin, source = cuda_toolchain.has_device_code(tmp / "kernels" / "kernels.so")
        assert fatbin and not source, "no device code in the kernel library"
        (tmp / "kernels" / "plan.json").write_text(json.dumps(
            {"archs": archs, "bits": BITS, "group": GROUP, "kernels": kernels, "cases": cases}, indent=1))
        add_runtime(tmp, "3.12", cuda=True)
        for helper in ("layout.py", "warp_plan.py"):  # the pure-numpy weight preparation the GPU side needs
            shutil.copy2(ROOT / "tvm_schedules" / helper, tmp / "kernels" / helper)
        (tmp / "benchmarks").mkdir()
        (tmp / "benchmarks" / "kernels.py").write_text(Path(__file__).read_text())
        (tmp / "run.py").write_text(
            "import os, sys\nhere = os.path.dirname(os.path.abspath(__file__))\n"
            "sys.path[:0] = [os.path.join(here, 'site'), here]\nos.environ.setdefault('TVM_USE_RUNTIME_LIB', '1')\n"
            "from benchmarks.kernels import main\nsys.exit(main(['run', here] + sys.argv[1:]))\n")
    print(f"wrote {out} ({len(kernels)} kernels, {len(cases)} cases)")


# ----------------------------------------------------------------------------------------------- run (GPU)
class Bench:
    """Event timing with the launch queue pre-filled behind a spin kernel, over rotated weight copies."""

    def __init__(self, torch):
        self.torch = torch

    def time_us(self, calls: list, target_ms: float = 8.0, samples: int = 7, launches: int = 1) -> float:
        """Median time per call; ``launches``: kernels each call issues (the spin lasts 20 us per kernel queued,
        so that the host has queued every call before the first runs, and the GPU's time is what is measured)."""
        torch = self.torch
        for c in calls:
            c()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for c in calls:
            c()
        e.record()
        e.synchronize()
        est = s.elapsed_time(e) / len(calls)
        reps = int(min(400, max(len(calls), target_ms / max(est, 1e-4))))
        out = []
        for _ in range(samples):
            torch.cuda._sleep(int(2e6 * (1 + reps * launches * 0.02)))  # ~1 ms + 20 us per queued kernel
            s.record()
            for i in range(reps):
                calls[i % len(calls)]()
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e) / reps)
        out.sort()
        return 1e3 * out[len(out) // 2]


def make_bsr(rng, n, k, rows, sparsity, alloc, bits=BITS, group=GROUP):
    """Random BSR int-k weights; ``layer`` allocation gives block rows very unequal block counts."""
    import numpy as np

    nbr, kb = n // rows, k // group
    kept = int(round(nbr * kb * (1 - sparsity)))
    if alloc == "row":
        per = kept // nbr
        order = np.argsort(rng.random((nbr, kb)), axis=1)[:, :per]
        keep = np.zeros((nbr, kb), bool)
        np.put_along_axis(keep, order, True, axis=1)
    else:  # a row bias of +-0.5 on uniform scores: some rows keep almost nothing, some almost all
        score = (rng.random((nbr, kb)) + rng.uniform(-0.5, 0.5, (nbr, 1))).ravel()
        keep = np.zeros(nbr * kb, bool)
        keep[np.argpartition(-score, kept)[:kept]] = True
        keep = keep.reshape(nbr, kb)
    counts = keep.sum(1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    indices = np.nonzero(keep)[1].astype(np.uint16)
    nnz = len(indices)
    words = group * bits // 32
    return {"indptr": indptr, "indices": indices,
            "qweight": rng.integers(0, 2**32, (nnz, rows, words), dtype=np.uint32),
            "scales": (rng.uniform(0.5, 1.5, (nnz, rows)) / 2**bits).astype(np.float16),
            "zeros": rng.integers(0, 2**bits, (nnz, rows), dtype=np.uint8), "counts": counts}


def dense_reference(torch, w, n, k, rows, bits=BITS, group=GROUP):
    """fp32 dense [n, k] from the BSR arrays (checkpoint code order), on the GPU."""
    import numpy as np

    q = torch.from_numpy(w["qweight"].view(np.int32)).cuda()
    shifts = torch.arange(0, 32, bits, device="cuda", dtype=torch.int32)
    codes = ((q[..., None] >> shifts) & (2**bits - 1)).reshape(q.shape[0], rows, group).float()
    zeros = torch.from_numpy(w["zeros"]).cuda().float()[..., None]
    scales = torch.from_numpy(w["scales"]).cuda().float()[..., None]
    vals = (codes - zeros) * scales  # [nnz, R, G]
    nbr, kb = n // rows, k // group
    brow = torch.repeat_interleave(torch.arange(nbr, device="cuda"), torch.from_numpy(w["counts"]).cuda())
    col = torch.from_numpy(w["indices"].astype(np.int64)).cuda()
    dense = torch.zeros(nbr, kb, rows, group, device="cuda")
    dense[brow, col] = vals
    return dense.permute(0, 2, 1, 3).reshape(n, k)


def rel_err(torch, y, ref) -> float:
    """max |y - ref| / max |ref| on the GPU; inf if y holds a NaN (outputs start poisoned)."""
    got = torch.from_dlpack(y).float()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def _load(path: Path):
    """A pure-numpy module of tvm_schedules that travels in the bundle (no TVM compiler on the GPU host)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(bundle: str, out_json: str | None, only: str | None, ms: list[int] | None = None) -> int:
    here = Path(bundle)
    p = json.loads((here / "kernels" / "plan.json").read_text())
    cases = [c for c in p["cases"] if (not only or selected(c, only)) and (not ms or c["m"] in ms)]
    if not cases:
        raise UsageError(f"no case of {bundle} has " + " and ".join(
            ([f"--only {only!r}"] if only else []) + ([f"--m {', '.join(map(str, ms))}"] if ms else [])))
    import numpy as np
    import torch

    from runtime.model import import_tvm

    tvm = import_tvm(cuda=True)
    lib = tvm.runtime.load_module(str(here / "kernels" / "kernels.so"))
    dev = tvm.cuda(0)
    bench = Bench(torch)
    T = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    gpu = torch.cuda.get_device_name()
    print(f"device: {gpu}", flush=True)

    a = torch.empty(2**29, dtype=torch.float16, device="cuda")
    b = torch.empty_like(a)
    big_copy_us = bench.time_us([lambda: b.copy_(a)], target_ms=20, samples=5)
    copy_gbs = 2 * a.numel() * 2 / big_copy_us / 1e3
    a = b = None  # free the 2 GiB
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s", flush=True)
    one = torch.zeros(1, device="cuda")
    floor_us = bench.time_us([lambda: one.add_(1)], samples=5)  # a kernel that does nothing, back to back
    print(f"back-to-back floor of an empty kernel: {floor_us:.1f} us", flush=True)

    cache: dict = {}
    results, failures = [], []
    layout = _load(here / "kernels" / "layout.py")
    warp_plan = _load(here / "kernels" / "warp_plan.py")
    doc = {"device": gpu, "copy_gbs": copy_gbs, "floor_us": floor_us, "archs": p["archs"], "results": results,
           "failures": failures}
    for i, c in enumerate(cases):
        if out_json and i % 50 == 49:  # a run cut short (time limit, crash) keeps what it measured
            _write_json(out_json, doc)
        if c["kind"] == "chain":
            row = _run_chain(c, p, lib, T, torch, bench, layout, warp_plan, copy_gbs)
            row["gpu"] = gpu
            results.append(row)
            if "time_us" not in row:
                failures.append(c["kernel"])
                print(f"FAIL {c['kernel']} ({c['tag']}): rel err {row['rel_err']:.2e}", flush=True)
            else:
                print(f"[{i + 1}/{len(cases)}] chain {c['cfg']} {c['alloc']}: {row['time_us']:.1f} us, "
                      f"{row['vs_fp16']:.2f}x fp16", flush=True)
            continue
        n, k, m, rows = c["n"], c["k"], c["m"], c["rows"]
        w, x, arrays = _case_data(c, p["kernels"][c["kernel"]], layout, warp_plan)
        wbytes = sum(a.nbytes for a in arrays)
        copies = max(2, -(-3 * L2_BYTES // wbytes))
        fn = lib[c["kernel"]]
        xs = T(x)
        dev_w = [[T(a) for a in arrays] for _ in range(copies)]
        y = T(np.full((m, n), np.nan, np.float16))
        fn(xs, *dev_w[0], y)
        err = rel_err(torch, y, _reference(torch, c, w, x))
        row = dict(c, rel_err=err, gpu=gpu)
        if "_no_" in c["cfg"]:
            row["unchecked"] = True  # a stage left out on purpose: only its time means anything
        elif not err < 2e-3:
            failures.append(c["kernel"])
            print(f"FAIL {c['kernel']} ({c['tag']}): rel err {err:.2e}", flush=True)
            results.append(row)
            continue
        t = bench.time_us([lambda ws=ws: fn(xs, *ws, y) for ws in dev_w])
        del dev_w
        moved = wbytes + x.nbytes + m * n * 2
        row.update(time_us=t, bytes=moved, gbs=moved / t / 1e3, pct_copy=100 * moved / t / 1e3 / copy_gbs,
                   tflops=2 * m * n * k / t / 1e6)
        key = (n, k, m)
        if key not in cache:
            cache[key] = baselines(torch, tvm, lib, T, p, n, k, m, bench, x)
        row.update(cache[key])
        row["vs_fp16"] = row["fp16_us"] / t
        if c["kind"] == "decode":  # a device-to-device copy of the same bytes: the ceiling at this size
            size = ("copy", -(-moved // 2**16))
            if size not in cache:
                cache[size] = copy_us(torch, bench, moved)
            row["copy_same_us"] = cache[size]
        if row.get("int4_us"):
            row["vs_int4"] = row["int4_us"] / t
        results.append(row)
        print(f"[{i + 1}/{len(cases)}] {c['family']:<16} {c['tag']:<13} {n}x{k} m={m} R={rows} s={c['sparsity']} {c['alloc']} "
              f"{c['cfg']}: {t:.1f} us, {row['gbs']:.0f} GB/s ({row['pct_copy']:.0f}% copy), "
              f"{row['vs_fp16']:.2f}x fp16" + (f", {row['vs_int4']:.2f}x int4" if "vs_int4" in row else ""),
              flush=True)
    if out_json:
        _write_json(out_json, doc)
    print_table(doc)
    return 1 if failures else 0


def _case_data(c: dict, spec: dict, layout, warp_plan):
    """A case's random weights (``make_bsr``, seeded by the case), activations, and the arrays its kernel takes,
    laid out as gqsa-compile stores them for that kernel."""
    import numpy as np

    rng = np.random.default_rng(zlib.crc32(c["kernel"].encode() + repr(c).encode()))
    bits, group, k = c.get("bits", BITS), c.get("group", GROUP), c["k"]
    w = make_bsr(rng, c["n"], k, c["rows"], c["sparsity"], c["alloc"], bits, group)
    x = rng.standard_normal((c["m"], k)).astype(np.float16)
    arrays = [w[f] for f in ("indptr", "indices", "qweight", "scales", "zeros")]
    if spec.get("column_tiles"):  # 16-row tiles by column group (layout.column_tiles), checkpoint code order
        return w, x, layout.column_tiles(*arrays, k)
    if spec.get("interleaved") and bits == 4:
        arrays[2] = layout.interleave_codes(arrays[2])
    if spec.get("warp_plan"):  # rows to warps, longest first, appended to indptr
        arrays[0] = warp_plan.lpt(arrays[0], **spec["warp_plan"])
    if spec.get("stream_plan"):  # rows to thread blocks by kept blocks, appended to indptr
        arrays[0] = warp_plan.stream(arrays[0], spec["stream_plan"])
    if spec.get("packed"):  # as gqsa-compile stores them: one word per block, no scales, no zeros
        arrays = [arrays[0], layout.pack_metadata(arrays[1], arrays[3], arrays[4]), arrays[2]]
    return w, x, arrays


def _reference(torch, c: dict, w: dict, x):
    """The fp32 product the kernel's output is checked against."""
    return torch.from_numpy(x).cuda().float() @ dense_reference(
        torch, w, c["n"], c["k"], c["rows"], c.get("bits", BITS), c.get("group", GROUP)).T


def _run_chain(c: dict, p: dict, lib, T, torch, bench, layout, warp_plan, copy_gbs: float) -> dict:
    """A chain case (tag "layer"): each member's output checked, then the members launched back to back, one
    chain per call over rotated weight copies, beside torch fp16 ``F.linear`` doing the same chain."""
    import numpy as np
    import torch.nn.functional as F

    members, errs, moved = [], [], 0
    for q in c["members"]:
        w, x, arrays = _case_data(q, p["kernels"][q["kernel"]], layout, warp_plan)
        fn, xs, y = lib[q["kernel"]], T(x), T(np.full((q["m"], q["n"]), np.nan, np.float16))
        fn(xs, *[T(a) for a in arrays], y)
        errs.append(rel_err(torch, y, _reference(torch, q, w, x)))
        members.append((fn, xs, y, arrays, x))
        moved += sum(a.nbytes for a in arrays) + x.nbytes + q["m"] * q["n"] * 2
    row = {key: v for key, v in c.items() if key != "members"}
    row.update(members=[q["cfg"] for q in c["members"]], rel_err=max(errs))
    if not max(errs) < 2e-3:
        return row
    copies = max(2, -(-3 * L2_BYTES // moved))
    sets = [[[T(a) for a in arrays] for _, _, _, arrays, _ in members] for _ in range(copies)]
    t = bench.time_us([lambda ws=ws: [fn(xs, *a, y) for (fn, xs, y, _, _), a in zip(members, ws)] for ws in sets],
                      launches=len(members))
    del sets
    xt = [torch.from_numpy(x).cuda() for *_, x in members]
    dense = [[torch.randn(q["n"], q["k"], device="cuda", dtype=torch.float16) for q in c["members"]]
             for _ in range(max(2, -(-3 * L2_BYTES // sum(q["n"] * q["k"] * 2 for q in c["members"]))))]
    fp16 = bench.time_us([lambda ws=ws: [F.linear(x, w) for x, w in zip(xt, ws)] for ws in dense],
                         launches=len(members))
    del dense
    flops = sum(2 * q["m"] * q["n"] * q["k"] for q in c["members"])
    row.update(time_us=t, bytes=moved, gbs=moved / t / 1e3, pct_copy=100 * moved / t / 1e3 / copy_gbs,
               tflops=flops / t / 1e6, fp16_us=fp16, vs_fp16=fp16 / t)
    return row


def _write_json(path: str, doc: dict) -> None:
    """Write through a temp file, so the JSON on disk is always whole."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def copy_us(torch, bench, nbytes: int) -> float:
    """A device-to-device copy that reads and writes ``nbytes`` in all, rotated over >= 3x the L2."""
    numel = max(1, nbytes // 4)  # fp16 elements read (and as many written)
    copies = max(2, -(-3 * L2_BYTES // nbytes))
    pairs = [(torch.empty(numel, dtype=torch.float16, device="cuda"),
              torch.empty(numel, dtype=torch.float16, device="cuda")) for _ in range(copies)]
    return bench.time_us([lambda a=a, b=b: b.copy_(a) for a, b in pairs])


def baselines(torch, tvm, lib, T, p, n, k, m, bench, x) -> dict:
    """torch fp16 F.linear and (decode only) the dlight dense int4 GEMV on the same shape, rotated too."""
    import numpy as np

    import torch.nn.functional as F

    out = {}
    xt = torch.from_numpy(x).cuda()
    copies = max(2, -(-3 * L2_BYTES // (n * k * 2)))
    ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    out["fp16_us"] = bench.time_us([lambda w=w: F.linear(xt, w) for w in ws])
    del ws
    name = kernel_name("dense_int4", n, k, m, 1)
    if name in p["kernels"]:
        rng = np.random.default_rng(7)
        q = rng.integers(0, 2**32, (n, k // 8), dtype=np.uint32)
        s = (rng.uniform(0.5, 1.5, (n, k // 32)) / 8).astype(np.float16)
        fn = lib[name]
        y = T(np.full((m, n), np.nan, np.float16))
        xs = T(x)
        copies = max(2, -(-3 * L2_BYTES // (q.nbytes + s.nbytes)))
        dev_w = [(T(q), T(s)) for _ in range(copies)]
        fn(xs, *dev_w[0], y)
        codes = (torch.from_numpy(q.view(np.int32)).cuda()[..., None] >> torch.arange(0, 32, 4, device="cuda",
                 dtype=torch.int32)) & 15
        wd = (codes.reshape(n, k).float() - 7) * torch.from_numpy(s).cuda().float().repeat_interleave(32, 1)
        # fp16 accumulation, as MLC's q4f16_1 GEMV does: a looser bound than our fp32-accumulating kernels
        err = rel_err(torch, y, xt.float() @ wd.T)
        out["int4_rel_err"] = err
        if err < 2e-2:
            out["int4_us"] = bench.time_us([lambda w=w: fn(xs, *w, y) for w in dev_w])
            out["int4_gbs"] = (q.nbytes + s.nbytes + x.nbytes + m * n * 2) / out["int4_us"] / 1e3
    return out


# ----------------------------------------------------------------------------------------------- report
def _variant_table(pick, tag: str, suffix: str, title: str) -> list[str]:
    """Launches of ``tag`` whose key ends in ``suffix`` beside the same launch without it, balanced and unequal."""
    variants = [r for r in pick(tag=tag) if r["cfg"].endswith(suffix) and r["alloc"] == "row"]
    if not variants:
        return []
    out = ["", title, "", "| shape N x K | M | launch | balanced rows | " + tag + " | unequal rows | " + tag + " |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in variants:
        t = {(q["cfg"], q["alloc"]): q["time_us"] for q in pick(tag=tag, n=r["n"], k=r["k"], m=r["m"])}
        plain = r["cfg"][:-len(suffix)]
        out.append(f"| {r['n']} x {r['k']} | {r['m']} | {plain} | " + " | ".join(
            f"{t[(c, a)]:.1f}" if (c, a) in t else "-" for a in ("row", "layer") for c in (plain, r["cfg"])) + " |")
    return out


def _pdl_table(pick) -> list[str]:
    """Decode with programmatic dependent launch beside the same launch without it (tag "pdl"), balanced and
    unequal rows; kernels_pdl_prefetch_h100.json also holds a removed variant with an L2 prefetch (``...gq``)."""
    rows = pick(tag="pdl")
    plain = sorted({r["cfg"] for r in rows if not r["cfg"].endswith(("g", "gq"))})
    if not plain:
        return []
    out = ["", "Decode with programmatic dependent launch (`DecodeConfig.pdl`, sm_90+: waits for the previous kernel "
           "before reading activations, lets the next launch once its loop is done) and with each warp's first row "
           "prefetched into L2 before that wait (`prefetch`), timed back to back as in a chain of GEMVs; time (us), "
           "then for the fastest of the three its % of the copy bandwidth and speed-up over cuBLAS fp16:", "",
           "| shape N x K | M | launch | time | PDL | PDL + prefetch | unequal rows | PDL | PDL + prefetch "
           "| best: % of copy | x cuBLAS fp16 |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["cfg"] not in plain or r["alloc"] != "row":
            continue
        t = {(q["cfg"], q["alloc"]): q for q in pick(tag="pdl", n=r["n"], k=r["k"], m=r["m"])}
        keys = [r["cfg"], r["cfg"] + "g", r["cfg"] + "gq"]
        best = min((t[(c, "row")] for c in keys if (c, "row") in t), key=lambda q: q["time_us"])
        out.append(f"| {r['n']} x {r['k']} | {r['m']} | {r['cfg']} | " + " | ".join(
            f"{t[(c, a)]['time_us']:.1f}" if (c, a) in t else "-" for a in ("row", "layer") for c in keys)
            + f" | {best['pct_copy']:.0f}% | {best['vs_fp16']:.2f} |")
    return out


def _packed_table(pick) -> list[str]:
    """Kernels on packed block metadata (one uint32 per block, as gqsa-compile stores it) beside the same kernels
    on separate indices, scales and zero points (tags "packed plan", "packed pdl"): by family and M, geometric
    mean and range of the speed-up over the seven shapes."""
    import math

    out = []
    for tag in ("packed plan", "packed pdl"):
        rows = [r for r in pick(tag=tag) if r["kernel"].endswith("_pm")]
        if not rows:
            continue
        out += ["", f"Packed block metadata, speed over separate tensors (tag `{tag}`; geometric mean, range), and "
                "the packed kernel's time / cuBLAS fp16 time (range):", "",
                "| kernel | M | rows | speed-up | range | time / cuBLAS |", "| --- | ---: | --- | ---: | --- | --- |"]
        for fam, m, alloc in sorted({(r["family"], r["m"], r["alloc"]) for r in rows}):
            pairs = [(q, r) for r in rows if (r["family"], r["m"], r["alloc"]) == (fam, m, alloc)
                     for q in pick(tag=tag, family=fam, m=m, alloc=alloc, n=r["n"], k=r["k"])
                     if q["kernel"] == r["kernel"][:-3]]
            x = [q["time_us"] / r["time_us"] for q, r in pairs]
            inv = [1 / r["vs_fp16"] for _, r in pairs]
            if x:
                out.append(f"| {fam} | {m} | {alloc} | {math.exp(sum(map(math.log, x)) / len(x)):.3f} | "
                           f"{min(x):.3f}-{max(x):.3f} | {min(inv):.2f}-{max(inv):.2f} |")
    return out


def _split_table(pick) -> list[str]:
    """Tag "split plan" (kernels_split_h100.json; the variant was removed after it, commit b2a9f90): the
    grid-stride order, the plan of whole rows, and the plan that also cut long rows, each on balanced and unequal
    rows, and the unequal-row loss of each against its own balanced time."""
    rows = [r for r in pick(tag="split plan") if r["alloc"] == "row" and not r["cfg"].endswith(("p", "pk"))]
    if not rows:
        return []
    out = ["", "Decode with rows given to warps by a per-matrix plan (`DecodeConfig.plan`) that also cuts rows longer "
           "than a warp's share into pieces for warps of one thread block (`DecodeConfig.split`, their sums meet in "
           "shared memory), beside the plan of whole rows and the grid-stride order; time (us), and the unequal "
           "rows' loss against balanced rows with the same kernel:", "",
           "| shape N x K | M | launch | balanced | plan | split plan | unequal | plan | split plan "
           "| loss | plan loss | split plan loss |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        t = {(q["cfg"], q["alloc"]): q["time_us"] for q in pick(tag="split plan", n=r["n"], k=r["k"], m=r["m"])}
        keys = [r["cfg"], r["cfg"] + "p", r["cfg"] + "pk"]
        cells = [f"{t[(c, a)]:.1f}" if (c, a) in t else "-" for a in ("row", "layer") for c in keys]
        loss = [f"{t[(c, 'layer')] / t[(c, 'row')] - 1:+.0%}" if (c, "row") in t and (c, "layer") in t else "-"
                for c in keys]
        out.append(f"| {r['n']} x {r['k']} | {r['m']} | {r['cfg']} | " + " | ".join(cells + loss) + " |")
    return out


def _ahead_table(pick) -> list[str]:
    """Tags "ahead", "ahead long", "ahead regs" and "ahead small" (kernels_ahead*_h100.json; "ahead regs"'s register
    cap was removed after it):
    speed of each variant over the same launch without it (config key suffix ``a1``/``a2`` for DecodeConfig.ahead,
    ``n8`` for registers capped at 8 thread blocks per SM, ``u1``/``u4`` for blocks per lane per trip at M = 1),
    geometric mean and range over the shapes, per M, launch and rows."""
    import math

    rows = pick(tag="ahead") + pick(tag="ahead long") + pick(tag="ahead regs") + pick(tag="ahead small")
    if not rows:
        return []
    base = {(r["tag"], r["n"], r["k"], r["m"], r["alloc"], r["cfg"]): r["time_us"] for r in rows}
    groups: dict = {}
    for r in rows:
        cfg, m = r["cfg"], r["m"]
        plain = re.sub(r"a\d$|n\d+$", "", re.sub(r"a\dn\d+$", "", cfg))
        unroll = re.match(r"w\d+u(\d+)", cfg)[1]
        if m == 1:
            plain = re.sub(r"^(w\d+)u\d+", r"\1u2", plain)
        ref = base.get((r["tag"], r["n"], r["k"], m, r["alloc"], plain))
        if ref is None or plain == cfg:
            continue
        ahead = re.search(r"a(\d)(n\d+)?$", cfg)
        parts = ([f"{unroll} block{'s' * (unroll != '1')} per lane"] if m == 1 and unroll != "2" else []) + (
            [f"ahead {ahead[1]}"] if ahead else []) + (
            ["registers for 8 blocks per SM"] if re.search(r"n8$", cfg) else [])
        launch = "PDL" if re.search(r"g(a\d)?(n\d+)?$", cfg) else "plain"
        key = (r["tag"], m, launch, "balanced" if r["alloc"] == "row" else "unequal", ", ".join(parts))
        groups.setdefault(key, []).append((ref / r["time_us"], f"{r['n']} x {r['k']}"))
    out = ["", "Loads in flight across phases (`DecodeConfig.ahead`: 1, the first trip's loads before staging and the "
           "PDL wait; 2, also each next trip's before this trip's math), speed over the same launch without it:", "",
           "| tag | M | launch | rows | variant | geometric mean | range | best shape |",
           "| --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    for key in sorted(groups):
        x = groups[key]
        g = math.exp(sum(math.log(v) for v, _ in x) / len(x))
        best = max(x)
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {g:.3f} | "
                   f"{min(v for v, _ in x):.3f}-{best[0]:.3f} | {best[1]} ({best[0]:.3f}) |")
    return out


def _resident_table(pick) -> list[str]:
    """Tags "resident" and "resident 2": each launch over the tuned one (1056 thread blocks of 8 warps) of the same tag,
    shape and rows, M = 1. A variant: thread blocks sized so that each SM holds at most P of them and all rows take
    equal rounds (``s``), ``a1``/``a2`` (DecodeConfig.ahead), ``c`` (chain, commit 46c52b7), ``te`` (the next launch
    triggered right after the wait)."""
    rows = pick(tag="resident") + pick(tag="resident 2")
    if not rows:
        return []

    def label(n, cfg):
        warps, ctas = map(int, re.match(r"w(\d+)u2l1hs(\d+)", cfg).groups())
        for per_sm in (6, 5) if re.search(r"a\d", cfg) else (8,):  # 40 or 48 registers with ahead, else 32
            rounds = -(-n // (warps * 132 * per_sm))
            if ctas == -(-n // (warps * rounds)) and ctas != 1056:
                ctas = f"{warps} warps, P = {per_sm}"
                break
        else:
            ctas = f"{warps} warps x {ctas}" if ctas != 1056 else "tuned"
        return ctas + (", " + cfg.split("f", 1)[1].lstrip("g") if cfg.split("f", 1)[1].lstrip("g") else "")

    t = {(r["tag"], r["n"], r["alloc"], r["cfg"]): r["time_us"] for r in rows}
    shapes = sorted({r["n"] for r in rows})
    groups: dict = {}
    for (tag, n, alloc, cfg), time in t.items():
        pdl = "g" in cfg.split("f", 1)[1]
        base = t.get((tag, n, alloc, "w8u2l1hs1056f" + "g" * pdl))
        if base and cfg != "w8u2l1hs1056f" + "g" * pdl:
            groups.setdefault((tag, pdl, label(n, cfg)), {})[(n, alloc)] = base / time
    out = ["", "Decode grids whose thread blocks are all resident (M = 1, K = 4096), speed over the tuned launch "
           "(1056 thread blocks of 8 warps) of the same run, balanced / unequal rows:", "",
           "| tag | launch | variant | " + " | ".join(f"{n} rows" for n in shapes) + " |",
           "| --- | --- | --- |" + " ---: |" * len(shapes)]
    for (tag, pdl, var), x in sorted(groups.items()):
        out.append(f"| {tag} | {'PDL' if pdl else 'plain'} | {var} | " + " | ".join(
            f"{x[(n, 'row')]:.2f} / {x[(n, 'layer')]:.2f}" if (n, "row") in x else "" for n in shapes) + " |")
    return out


def _ahead_batch_table(pick) -> list[str]:
    """Tag "ahead batch": M = 2, 4 and 8 loading ahead (``a1``/``a2``; at M = 2 in grids sized to be resident, with
    PDL triggering early) over the tuned launch of the same run, per shape, balanced / unequal rows."""
    rows = pick(tag="ahead batch")
    if not rows:
        return []
    t = {(r["n"], r["k"], r["m"], r["alloc"], r["cfg"]): r["time_us"] for r in rows}
    shapes = sorted({(r["n"], r["k"]) for r in rows}, key=lambda s: (s[1], s[0]))
    out = ["", "Decode at M = 2-8 loading ahead, speed over the tuned launch of the same run, balanced / unequal rows "
           "(M = 2: thread blocks sized to be resident, with PDL the next launch triggered early):", "",
           "| M | launch | ahead | " + " | ".join(f"{n} x {k}" for n, k in shapes) + " |",
           "| ---: | --- | ---: |" + " ---: |" * len(shapes)]
    for m in sorted({r["m"] for r in rows}):
        for pdl in (False, True):
            for ahead in (1, 2):
                cells = []
                for n, k in shapes:
                    here = {c: a for (n2, k2, m2, a, c) in t if (n2, k2, m2) == (n, k, m)
                            and ("g" in c.split("f", 1)[1]) == pdl}
                    base = next((c for c in here if not re.search(r"a\d$", c)), None)
                    new = next((c for c in here if c.endswith(f"a{ahead}")), None)
                    cells.append(" / ".join(f"{t[(n, k, m, a, base)] / t[(n, k, m, a, new)]:.2f}"
                                            for a in ("row", "layer")) if base and new else "")
                out.append(f"| {m} | {'PDL' if pdl else 'plain'} | {ahead} | " + " | ".join(cells) + " |")
    return out


def _ahead3_table(pick) -> list[str]:
    """Tag "ahead 3": two trips in flight (``a3``) over the launch bsr_decode.for_shape made before (``a1``/``a2``) of
    the same shape, M and launch: geometric mean and each shape's speed-up, balanced and unequal rows."""
    import math

    rows = pick(tag="ahead 3")
    if not rows:
        return []
    t = {(r["n"], r["k"], r["m"], r["alloc"], r["cfg"]): r["time_us"] for r in rows}
    groups: dict = {}
    for (n, k, m, alloc, cfg), time in t.items():
        pdl = "g" in cfg.split("f", 1)[1]
        base = next((c for (n2, k2, m2, a2, c) in t if (n2, k2, m2, a2) == (n, k, m, alloc) and not c.endswith("a3")
                     and ("g" in c.split("f", 1)[1]) == pdl), None)
        if cfg.endswith("a3") and base:
            groups.setdefault((m, pdl, alloc), []).append((t[(n, k, m, alloc, base)] / time, f"{n} x {k}"))
    out = ["", "Two trips in flight (`ahead = 3`) over the launch `bsr_decode.for_shape` made before it:", "",
           "| M | launch | rows | geometric mean | per shape |", "| ---: | --- | --- | ---: | --- |"]
    for (m, pdl, alloc), x in sorted(groups.items()):
        g = math.exp(sum(math.log(v) for v, _ in x) / len(x))
        out.append(f"| {m} | {'PDL' if pdl else 'plain'} | {'balanced' if alloc == 'row' else 'unequal'} | {g:.3f} | "
                   + ", ".join(f"{shape} {v:.2f}" for v, shape in x) + " |")
    return out


def _resident_blocks_table(pick) -> list[str]:
    """Tag "resident blocks": M = 1 on 4225-6336 rows, a warp per row in thread blocks of 8, 16 or 24 warps, all
    resident, loading ahead (with PDL the next launch triggered early), over the tuned launch, balanced / unequal."""
    rows = pick(tag="resident blocks") + pick(tag="resident blocks 2")  # 2: two rows per warp, ahead = 1, PDL
    if not rows:
        return []
    t = {(r["n"], r["k"], r["alloc"], r["cfg"]): r["time_us"] for r in rows}
    out = ["", "Decode at M = 1, a warp per row (two from 8449 rows, loading the first trip ahead) in thread blocks of "
           "8, 16 or 24 warps, all resident, speed over the tuned launch (1056 thread blocks of 8 warps at most), "
           "balanced / unequal rows:", "",
           "| shape N x K | launch | 8 warps | 16 warps | 24 warps |", "| --- | --- | ---: | ---: | ---: |"]
    for n, k in sorted({(n, k) for n, k, _, _ in t}):
        for pdl in (False, True):
            here = [c for (n2, k2, a, c) in t if (n2, k2, a) == (n, k, "row") and ("g" in c.split("f", 1)[1]) == pdl]
            base = next((c for c in here if "s1056" in c), None)
            if base is None:
                continue
            cells = {int(re.match(r"w(\d+)", c)[1]): " / ".join(f"{t[(n, k, a, base)] / t[(n, k, a, c)]:.2f}"
                                                               for a in ("row", "layer")) for c in here if c != base}
            out.append(f"| {n} x {k} | {'PDL' if pdl else 'plain'} | "
                       + " | ".join(cells.get(w, "") for w in (8, 16, 24)) + " |")
    return out


def _small_blocks_table(pick) -> list[str]:
    """Tags "small blocks" and "small blocks 2": M = 1, a warp per row in thread blocks of 8 or 16 warps (as many as
    the rows need, all resident) over the one-wave grid (132 thread blocks at most) as the rule before them chose
    it, plain and PDL, balanced and unequal rows."""
    rows = pick(tag="small blocks") + pick(tag="small blocks 2")
    if not rows:
        return []
    t = {(r["n"], r["k"], r["alloc"], r["cfg"]): r for r in rows}
    out = ["", "Decode at M = 1, a warp per row: thread blocks of 8 or 16 warps, all resident, against the one-wave "
           "grid (at most 132 thread blocks), speed (one-wave time over this one's):", "",
           "| shape N x K | one-wave grid | variant | plain, balanced | plain, unequal | PDL, balanced "
           "| PDL, unequal |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for n, k in sorted({(n, k) for n, k, _, _ in t}):
        here = {c: r for (n2, k2, a, c), r in t.items() if (n2, k2, a) == (n, k, "row")}
        base = next((c for c in here if re.search(r"s132f", c) and "g" not in c.split("f", 1)[1]), None)
        if base is None:  # a run of this tag before the one-wave grid was its base explicitly
            continue
        for c in sorted(here):
            if c == base or "g" in c.split("f", 1)[1]:
                continue
            warps = re.match(r"w(\d+)", c)[1]
            cells = []
            for b, v in ((base, c), (base.replace("fa2", "fga2"), c.replace("fa2", "fgtea2"))):  # plain, PDL
                cells += [f"{t[(n, k, a, b)]['time_us'] / t[(n, k, a, v)]['time_us']:.2f}" if (n, k, a, v) in t
                          and (n, k, a, b) in t else "" for a in ("row", "layer")]
            out.append(f"| {n} x {k} | {base} | {warps} warps x {-(-n // int(warps))} | " + " | ".join(cells) + " |")
    return out


def _unhinted(cfg: str) -> str:
    """A decode key without its cache-hint suffix (``c`` and the hint's letters, common.weight_load)."""
    return re.sub(r"c[nfp]+$", "", cfg)


def _row_kernel_pdl(cfg: str) -> bool:
    """Whether a row-kernel key (DecodeConfig.key) is a PDL launch: ``g``, then at most the trigger and ``ahead``."""
    return bool(re.search(r"g(te)?(a\d)?$", _unhinted(cfg)))


def _pdl_launch(r: dict) -> bool:
    """Whether a decode case of tag "current" is a PDL launch, from its key (the ``g`` of each family's key)."""
    if r["family"] == "bsr_decode":
        return _row_kernel_pdl(r["cfg"])
    return bool(re.search(r"g(e)?(c[nfp]+)?$", r["cfg"]))


def _current_tables(pick, gmean) -> list[str]:
    """docs/perf.md's headline (tag "current"): decode and prefill as the kernels are picked today. Where runs
    merged in order measured different launches of one line (a launch changed between them), the last run's."""
    def one(family, n, k, m, pdl, alloc="row", sparsity=0.5, rows=1):
        fams = ("bsr_decode", "bsr_decode_stream") if family == "bsr_decode" else (family,)
        q = [r for r in pick(tag="current", n=n, k=k, m=m, alloc=alloc, sparsity=sparsity, rows=rows)
             if r["family"] in fams and (r["kind"] == "prefill" or _pdl_launch(r) == pdl)]
        return q[-1] if q else None

    def us(r, digits=1):
        return f"{r['time_us']:.{digits}f}" if r else "-"

    def loss(u, r):
        return f"{u['time_us']:.1f} ({u['time_us'] / r['time_us'] - 1:+.0%})" if u and r else "-"

    shapes = sorted({(r["n"], r["k"]) for r in pick(tag="current")}, key=lambda s: SHAPES.index(s))
    out = ["", "Decode GEMV, R = 1, 50% of blocks kept. `row`: the kernel `gqsa-compile` builds (`bsr_decode.for_shape`; "
           "unequal rows at M = 1 on the stream kernel where `bsr_decode_stream.pays`), `tensor`: the tensor-core GEMV "
           "(`bsr_decode_mma.for_shape`, benchmark only). plain: the default sm_87 + sm_90 build; PDL: sm_90 builds "
           "(programmatic dependent launch, timed back to back as a decode step's GEMVs run). Times in us; unequal "
           "rows keep 0-100% of their blocks (loss against the balanced rows of the same line); same-byte copy: a "
           "device-to-device copy of as many bytes, the ceiling at this size:", "",
           "| shape N x K | M | kernel | plain | PDL | PDL GB/s (% of copy) | x cuBLAS fp16 plain / PDL "
           "| x dlight int4 g32 (PDL) | unequal rows plain | unequal rows PDL | same-byte copy |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, k in shapes:
        for m in DECODE_M:
            for fam, label in (("bsr_decode", "row"), ("bsr_decode_mma", "tensor")):
                p, g = one(fam, n, k, m, False), one(fam, n, k, m, True)
                if not (p or g):
                    continue
                b = g or p
                cells = [f"{n} x {k}", str(m), label, us(p), us(g),
                         f"{g['gbs']:.0f} ({g['pct_copy']:.0f}%)" if g else "-",
                         " / ".join(f"{r['vs_fp16']:.2f}" if r else "-" for r in (p, g)),
                         f"{b['vs_int4']:.2f}" if "vs_int4" in b else "-",
                         loss(one(fam, n, k, m, False, "layer"), p), loss(one(fam, n, k, m, True, "layer"), g),
                         f"{b['copy_same_us']:.1f}" if "copy_same_us" in b else "-"]
                out.append("| " + " | ".join(cells) + " |")
    out += ["", "Time follows kept blocks (decode, PDL; us): the row kernel at M = 1, the tensor-core GEMV at M = 8:", "",
            "| shape N x K | M = 1: 30% pruned | 50% | 70% | M = 8: 30% pruned | 50% | 70% |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, k in shapes:
        cells = [us(one(fam, n, k, m, True, sparsity=sp)) for fam, m in (("bsr_decode", 1), ("bsr_decode_mma", 8))
                 for sp in (0.3, 0.5, 0.7)]
        out.append(f"| {n} x {k} | " + " | ".join(cells) + " |")
    out += ["", "Prefill, 50% of blocks kept: time (us) and time / cuBLAS fp16's on the dense shape (the issue's bound at "
            "M >= 512: 1.1 at R = 1, 0.7 at R = 16). default: the tiled mma.sync plan of the default build (R = 16: its "
            "tiles skip pruned 16 x 16 blocks); sm_90a: `--arch sm_90a`'s plan (wgmma from 129 tokens, dense tiles):", "",
            "| shape N x K | M | cuBLAS fp16 | default R = 1 | sm_90a R = 1 | default R = 16 | sm_90a R = 16 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def vs(r):
        return f"{r['time_us']:.0f} ({1 / r['vs_fp16']:.2f})" if r else "-"
    for n, k in shapes:
        for m in CURRENT_PREFILL_M:
            cells = [one(fam, n, k, m, None, rows=rows) for rows in (1, 16)
                     for fam in ("bsr_prefill", "bsr_prefill_sm90a")]
            if any(cells):
                ref = next(c for c in cells if c)
                out.append(f"| {n} x {k} | {m} | {ref['fp16_us']:.0f} | " + " | ".join(map(vs, cells)) + " |")
    out += ["", "Prefill time follows kept blocks (M = 512, us): sm_90a's R = 1 plan, the default build's R = 16 plan:", "",
            "| shape N x K | sm_90a R = 1: 30% pruned | 50% | 70% | default R = 16: 30% pruned | 50% | 70% |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, k in shapes:
        cells = [us(one(fam, n, k, 512, None, sparsity=sp, rows=rows), 0)
                 for fam, rows in (("bsr_prefill_sm90a", 1), ("bsr_prefill", 16)) for sp in (0.3, 0.5, 0.7)]
        out.append(f"| {n} x {k} | " + " | ".join(cells) + " |")
    out += ["", "Speed versus block height R (50% pruned; geometric mean over the shapes): decode with PDL on the row "
            "kernel, prefill at M = 512 on sm_90a's plan:", "",
            "| R | decode M = 1 (us) | decode M = 8 (us) | prefill M = 512 (us) | prefill M = 512 / cuBLAS |",
            "| ---: | ---: | ---: | ---: | ---: |"]
    for rows in (1, 4, 8, 16):
        d1, d8 = ([one("bsr_decode", n, k, m, True, rows=rows) for n, k in shapes] for m in (1, 8))
        pf = [one("bsr_prefill_sm90a", n, k, 512, None, rows=rows) for n, k in shapes]
        d1, d8, pf = ([r for r in x if r] for x in (d1, d8, pf))
        out.append(f"| {rows} | {gmean(d1):.1f} | {gmean(d8):.1f} | {gmean(pf):.0f} | {gmean(pf, 'inv'):.2f} |")
    return out


def _layer_table(pick) -> list[str]:
    """Tag "layer": a decoder layer's four GEMVs at M = 1 back to back, plain and PDL, against cuBLAS fp16's four."""
    rows = pick(tag="layer")
    if not rows:
        return []
    out = ["", "A decoder layer's four GEMVs at M = 1 (q/k/v and gate/up stacked), launched back to back as a decode "
           "step runs them, each the kernel of the headline (unequal rows on the stream kernel where it pays), against "
           "torch fp16 `F.linear` doing the same four; time (us) per layer:", "",
           "| layer | rows | plain | PDL | cuBLAS fp16 | x cuBLAS plain / PDL | PDL GB/s (% of copy) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in LAYERS:
        for alloc, label in (("row", "balanced"), ("layer", "unequal")):
            p, g = ([r for r in rows if r["cfg"] == model and r["alloc"] == alloc and r["kernel"].endswith(end)]
                    for end in ("_plain", "_pdl"))
            p, g = p[-1] if p else None, g[-1] if g else None
            if not (p or g):
                continue
            out.append(f"| {model} | {label} | " + " | ".join(f"{r['time_us']:.1f}" if r else "-" for r in (p, g))
                       + f" | {(g or p)['fp16_us']:.1f} | "
                       + " / ".join(f"{r['vs_fp16']:.2f}" if r else "-" for r in (p, g))
                       + (f" | {g['gbs']:.0f} ({g['pct_copy']:.0f}%) |" if g else " | - |"))
    return out


def _rule_table(pick, tag: str, title: str) -> list[str]:
    """Tags "one wave rule" and "resident rule": per shape, the decode launch bsr_decode.for_shape picks (config
    ending ``a1``/``a2``, loading ahead) against the tuning before it, plain and PDL, balanced and unequal rows
    (time in us, old -> new), and the geometric mean of the speed-up per column."""
    import math

    rows = pick(tag=tag)
    if not rows:
        return []
    t = {(r["n"], r["k"], bool(re.search(r"a\d$", r["cfg"])), _row_kernel_pdl(r["cfg"]),
          r["alloc"]): (r["time_us"], r["cfg"]) for r in rows}
    cols = [(p, a) for p in (False, True) for a in ("row", "layer")]
    out = ["", title + ", time (us), old -> new:", "",
           "| shape N x K | new launch | plain, balanced | plain, unequal | PDL, balanced | PDL, unequal |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    gains: dict = {c: [] for c in cols}
    for n, k in sorted({(n, k) for n, k, *_ in t}):
        if (n, k, True, False, "row") not in t:
            out.append(f"| {n} x {k} | unchanged | | | | |")
            continue
        for c in cols:
            if (n, k, True, *c) in t:
                gains[c].append(t[(n, k, False, *c)][0] / t[(n, k, True, *c)][0])
        cells = [f"{t[(n, k, False, *c)][0]:.2f} -> {t[(n, k, True, *c)][0]:.2f}" if (n, k, True, *c) in t else ""
                 for c in cols]
        out.append(f"| {n} x {k} | {t[(n, k, True, False, 'row')][1]} | " + " | ".join(cells) + " |")
    out.append("| speed-up, geometric mean (range) | | " + " | ".join(
        f"{math.exp(sum(map(math.log, g)) / len(g)):.3f}x ({min(g):.2f}-{max(g):.2f})" if g else ""
        for g in gains.values()) + " |")
    return out


def _beside_row_kernel(rows: list[dict], family: str, value) -> dict:
    """Decode rows of the row kernel and of ``family`` (whose PDL keys end in g, or ge) by (n, k, M, PDL):
    {(its configuration, or "rows" for the row kernel; allocation): value(row)}."""
    t: dict = {}
    for r in rows:
        other = r["family"] == family
        pdl = (_unhinted(r["cfg"]).removesuffix("e").endswith("g") if other  # "ge": PDL, early
               else _row_kernel_pdl(r["cfg"]))
        t.setdefault((r["n"], r["k"], r["m"], pdl), {})[r["cfg"] if other else "rows", r["alloc"]] = value(r)
    return t


def _decode_order(key: tuple):
    """(n, k, M, PDL) keys by M, launch, then the order of SHAPES (others after, by shape)."""
    return key[2], key[3], SHAPES.index(key[:2]) if key[:2] in SHAPES else 99, key[:2]


def _stream_table(pick) -> list[str]:
    """Tags "stream" (M = 1), "stream small" (SmolLM2-135M, M = 1) and "stream batch" (M = 2, 4, 8): per shape, M
    and launch (plain, PDL), the row kernel as bsr_decode.for_shape launches it and the stream kernel
    (tvm_schedules.bsr_decode_stream) in its configuration fastest on unequal rows, balanced and unequal rows; the
    last column sets unequal rows on the stream kernel against balanced rows on the row kernel."""
    rows = pick(tag="stream") + pick(tag="stream small") + pick(tag="stream batch")
    if not rows:
        return []
    t = _beside_row_kernel(rows, "bsr_decode_stream", lambda r: r["time_us"])
    out = ["", "Decode, the row kernel (`bsr_decode.for_shape`) beside the stream kernel (`bsr_decode_stream`: rows "
           "dealt to thread blocks by kept blocks, warps splitting a thread block's blocks across row boundaries) in "
           "its configuration fastest on unequal rows; time (us), balanced / unequal rows (unequal rows' loss):", "",
           "| shape N x K | M | launch | row kernel | stream kernel | its configuration | unequal rows on the stream "
           "kernel against balanced rows on the row kernel |", "| --- | ---: | --- | ---: | ---: | --- | ---: |"]
    for n, k, m, pdl in sorted(t, key=_decode_order):
        v = t[n, k, m, pdl]
        if ("rows", "row") not in v or ("rows", "layer") not in v:
            continue
        cfgs = [c for c, a in v if c != "rows" and (c, "row") in v and (c, "layer") in v]
        if not cfgs:
            continue
        best = min(cfgs, key=lambda c: v[c, "layer"])
        rb, rl, sb, sl = v["rows", "row"], v["rows", "layer"], v[best, "row"], v[best, "layer"]
        out.append(f"| {n} x {k} | {m} | {'PDL' if pdl else 'plain'} | {rb:.1f} / {rl:.1f} ({rl / rb - 1:+.0%}) | "
                   f"{sb:.1f} / {sl:.1f} ({sl / sb - 1:+.0%}) | {best} | {sl / rb - 1:+.0%} |")
    return out


def _mma_table(pick, tag: str) -> list[str]:
    """Tags "mma decode" and "mma plan": per shape, M and launch (plain, PDL), the row kernel as
    bsr_decode.for_shape launches it beside the tensor-core GEMV (tvm_schedules.bsr_decode_mma) in its configuration
    fastest on balanced rows (the one bsr_decode_mma.for_shape picks, in "mma plan"); time (us) balanced / unequal
    rows, the speed-up, the ratio to cuBLAS fp16 and the unequal rows' loss against balanced rows on the row kernel."""
    rows = [r for r in pick(tag=tag) if r["alloc"] in ("row", "layer")]
    if not rows:
        return []
    t = _beside_row_kernel(rows, "bsr_decode_mma", lambda r: (r["time_us"], r["vs_fp16"]))
    which = ("as `bsr_decode_mma.for_shape` launches it" if tag == "mma plan"
             else "in its configuration fastest on balanced rows")
    out = ["", f"Decode (tag `{tag}`), the row kernel (`bsr_decode.for_shape`) beside the tensor-core GEMV "
           f"(`bsr_decode_mma`: 16-row tiles by column group, four mma.sync per 4 column groups) {which}; time (us) "
           "balanced / unequal rows:", "",
           "| shape N x K | M | launch | row kernel | mma kernel | its configuration | speed-up, balanced / unequal | "
           "x cuBLAS fp16, row kernel / mma kernel | unequal rows against balanced rows on the row kernel, "
           "row kernel / mma kernel |", "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for n, k, m, pdl in sorted(t, key=_decode_order):
        v = t[n, k, m, pdl]
        cfgs = [c for c, a in v if c != "rows" and a == "row" and (c, "layer") in v]
        if ("rows", "row") not in v or ("rows", "layer") not in v or not cfgs:
            continue
        best = min(cfgs, key=lambda c: v[c, "row"][0])
        (rb, fr), (rl, _), (mb, fm), (ml, _) = v["rows", "row"], v["rows", "layer"], v[best, "row"], v[best, "layer"]
        out.append(f"| {n} x {k} | {m} | {'PDL' if pdl else 'plain'} | {rb:.1f} / {rl:.1f} | {mb:.1f} / {ml:.1f} | "
                   f"{best} | {rb / mb:.2f}x / {rl / ml:.2f}x | {fr:.2f}x / {fm:.2f}x | {rl / rb - 1:+.0%} / "
                   f"{ml / rb - 1:+.0%} |")
    return out


def merge(runs: list[list[dict]]) -> list[dict]:
    """Results of several runs in order; a case measured again in a later run replaces the earlier row."""
    rows: dict = {}
    for results in runs:
        for r in results:
            rows[tuple(r.get(f) for f in ("kernel", "tag", "n", "k", "m", "sparsity", "alloc"))] = r
    return list(rows.values())


def print_table(doc: dict) -> str:
    """Every case, one row each (the full record behind docs/perf.md's summary)."""
    lines = [f"device: {doc['device']}; device-to-device copy {doc['copy_gbs']:.0f} GB/s (read + write)", "",
             "| kernel | shape N x K | M | R | sparsity | rows | config | time (us) | GB/s | % copy BW "
             "| x cuBLAS fp16 | x dlight int4 | TFLOP/s |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in doc["results"]:
        head = f"| {r['family']} | {r['n']} x {r['k']} | {r['m']} | {r['rows']} |"
        if "time_us" not in r:
            lines.append(f"{head} FAILED rel err {r['rel_err']:.1e} |")
            continue
        speed = f"{r['vs_fp16']:.2f}" if r["kind"] != "prefill" else f"{1 / r['vs_fp16']:.2f} (time)"
        int4 = f"{r['vs_int4']:.2f}" if "vs_int4" in r else "-"
        lines.append(f"{head} {r['sparsity']:.0%} | {r['alloc']} | {r['cfg'] or 'default'} | {r['time_us']:.1f} "
                     f"| {r['gbs']:.0f} | {r['pct_copy']:.0f}% | {speed} | {int4} | {r['tflops']:.1f} |")
    text = "\n".join(lines)
    print(text)
    return text


def summary(doc: dict) -> str:
    """The tables docs/perf.md shows: decode, unequal rows, sparsity, prefill, and speed versus R."""
    res = [dict(r, inv=1 / r["vs_fp16"]) for r in doc["results"] if "time_us" in r]

    def pick(**kw):
        return [r for r in res if all(r.get(k) == v for k, v in kw.items())]

    floor = f"; an empty kernel takes {doc['floor_us']:.1f} us back to back" if "floor_us" in doc else ""
    same = all("copy_same_us" in r for r in pick(tag="main", kind="decode")) and pick(tag="main", kind="decode")
    out = [f"Device: {doc['device']}; device-to-device copy {doc['copy_gbs']:.0f} GB/s (read + write){floor}. "
           "W4 G16, fp16 activations; times are medians of 7 (us)."]
    import math

    def gmean(rows, key="time_us"):
        return math.exp(sum(math.log(x[key]) for x in rows) / len(rows)) if rows else float("nan")

    current = bool(pick(tag="current"))  # the headline run: its tables replace the first day's (tag "main")
    if current:
        out += _current_tables(pick, gmean)
    out += _layer_table(pick)
    headline = len(out)
    main = bool(pick(tag="main")) and not current  # a run of some tags only (--only) has no main tables
    out += ["", "Decode GEMV, R = 1, 50% of blocks kept per row (row-balanced); x = speed-up over the baseline"
           + ("; same-byte copy: a device-to-device copy that moves as many bytes, the ceiling at this size"
              if same else "") + ":", "",
           "| shape N x K | M | time | GB/s | % of copy | x cuBLAS fp16 | x dlight int4 g32 | unequal rows: time (loss) |"
           + (" same-byte copy: time (kernel's % of its speed) |" if same else ""),
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if same else "")] * main
    for r in pick(tag="main", kind="decode") if main else ():
        u = pick(tag="unequal rows", n=r["n"], k=r["k"], m=r["m"])
        loss = f"{u[0]['time_us']:.1f} ({u[0]['time_us'] / r['time_us'] - 1:+.0%})" if u else "-"
        out.append(f"| {r['n']} x {r['k']} | {r['m']} | {r['time_us']:.1f} | {r['gbs']:.0f} | {r['pct_copy']:.0f}% "
                   f"| {r['vs_fp16']:.2f} | {r.get('vs_int4', float('nan')):.2f} | {loss} |"
                   + (f" {r['copy_same_us']:.1f} ({r['copy_same_us'] / r['time_us']:.0%}) |" if same else ""))
    full = [r for r in pick(tag="ablation", kind="decode") if "_no_" not in r["cfg"]]
    if full:
        out += ["", "Decode, where the time goes (us): the row kernel beside itself with every load and no arithmetic, "
                "and with only the codes loaded (indices, scales and zero points constant); both give wrong "
                "results and are timed unchecked. By launch (warps, blocks per lane per trip, lanes per block, ...: "
                "`DecodeConfig.key`) and kept blocks per lane per loop trip:", "",
                "| shape N x K | M | launch | blocks per lane | full kernel | loads only | codes only |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in sorted(full, key=lambda r: (SHAPES.index((r["n"], r["k"])), r["m"], r["cfg"])):
            cut = {a: [q for q in pick(tag="ablation", kind="decode", n=r["n"], k=r["k"], m=r["m"])
                       if q["cfg"] == f"{r['cfg']}_no_{a}"] for a in ("math", "meta")}
            unroll = re.match(r"w\d+u(\d+)", r["cfg"])[1]
            out.append(f"| {r['n']} x {r['k']} | {r['m']} | {r['cfg']} | {unroll} | {r['time_us']:.1f} | "
                       + " | ".join(f"{q[0]['time_us']:.1f}" if q else "-" for q in cut.values()) + " |")
    out += ["", "Time follows kept blocks (decode, R = 1):", "",
            "| shape N x K | M | 30% pruned | 50% pruned | 70% pruned |", "| --- | ---: | ---: | ---: | ---: |"] * main
    for r in pick(tag="main", kind="decode") if main else ():
        if r["m"] in (1, 8):
            cells = []
            for sp in (0.3, 0.5, 0.7):
                q = pick(tag="main" if sp == 0.5 else "sparsity", n=r["n"], k=r["k"], m=r["m"], sparsity=sp,
                         kind="decode", rows=1)
                cells.append(f"{q[0]['time_us']:.1f}" if q else "-")
            out.append(f"| {r['n']} x {r['k']} | {r['m']} | " + " | ".join(cells) + " |")
    out += ["", "Prefill (tensor cores, mma.sync m16n8k16), 50% of blocks; time / cuBLAS fp16 time on the same "
            "dense shape (the issue's bound: <= 1.1 at R = 1, <= 0.7 at R = 16, M >= 512):", "",
            "| shape N x K | M | R = 1 time | R = 1 / cuBLAS | R = 16 time | R = 16 / cuBLAS | cuBLAS fp16 | R = 16 TFLOP/s (dense-equivalent) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"] * main
    for r in pick(tag="main", kind="prefill", rows=1) if main else ():
        t = pick(tag="main", kind="prefill", rows=16, n=r["n"], k=r["k"], m=r["m"])
        t16 = t[0] if t else None
        out.append(f"| {r['n']} x {r['k']} | {r['m']} | {r['time_us']:.0f} | {1 / r['vs_fp16']:.1f} | "
                   + (f"{t16['time_us']:.0f} | {1 / t16['vs_fp16']:.1f} | " if t16 else "- | - | ")
                   + f"{r['fp16_us']:.0f} | " + (f"{t16['tflops']:.0f} |" if t16 else "- |"))
    out += ["", "Prefill time follows kept blocks at R = 16 (M = 512; the tiled GEMM skips pruned blocks' mma's, the "
            "per-warp kernel walks only kept blocks):", "",
            "| shape N x K | kernel | 30% pruned | 50% pruned | 70% pruned |", "| --- | --- | ---: | ---: | ---: |"] * main
    for r in pick(tag="main", kind="prefill", rows=16, m=512) if main else ():
        for fam, label in (("bsr_prefill", "tiled (compiled)"), ("bsr_prefill_warp", "per-warp (before)")):
            cells = []
            for sp in (0.3, 0.5, 0.7):
                q = [x for x in res if x["family"] == fam and x["n"] == r["n"] and x["k"] == r["k"] and x["m"] == 512
                     and x["rows"] == 16 and x["sparsity"] == sp and x["alloc"] == "row" and not x["cfg"]]
                cells.append(f"{q[0]['time_us']:.0f}" if q else "-")
            out.append(f"| {r['n']} x {r['k']} | {label} | " + " | ".join(cells) + " |")
    ms = sorted({r["m"] for r in pick(tag="tiled")})
    if ms:
        out += ["", "Prefill R = 1 by M: time / cuBLAS fp16 time, geometric mean over the seven shapes, for the "
                "per-warp kernel, each tiled configuration (rows x tokens per thread block, warps along rows x "
                "tokens, columns per stage, thread blocks per SM asked of ptxas), and what `gqsa-compile` runs "
                "(the tiled configuration chosen by M at run time):", "",
                "| kernel | " + " | ".join(f"M = {m}" for m in ms) + " |", "| --- |" + " ---: |" * len(ms)]
        kinds = [("bsr_prefill", "", "chosen by M (compiled)"), ("bsr_prefill_warp", "", "per-warp (before)")] + sorted(
            {("bsr_prefill_tiled", r["cfg"], r["cfg"]) for r in pick(tag="tiled", family="bsr_prefill_tiled")})
        for fam, cfg, label in kinds:
            cells = []
            for m in ms:
                q = [r for r in res if r["family"] == fam and r["m"] == m and r["rows"] == 1 and r["sparsity"] == 0.5
                     and r["alloc"] == "row" and (r["cfg"] == cfg) and r["tag"] in ("tiled", "main", "split-k")]
                q = list({(r["n"], r["k"]): r for r in q}.values())
                cells.append(f"{gmean(q, 'inv'):.2f}" if len(q) == len(SHAPES) else "-")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += _variant_table(pick, "rotate", "r", "Decode with the staged activations group-major and each lane's "
                          "tokens rotated (`DecodeConfig.rotate`) beside the same launch without it, time (us):")
    out += _variant_table(pick, "warp plan", "p", "Decode with rows given to warps by a per-matrix longest-first "
                          "plan (`DecodeConfig.plan`, `tvm_schedules/warp_plan.py`) beside the grid-stride order, "
                          "time (us):")
    out += _pdl_table(pick)
    out += _split_table(pick)
    out += _packed_table(pick)
    out += _ahead_table(pick)
    out += _resident_table(pick)
    for tag, launched in (
            ("one wave rule", "M = 1 up to 4224 rows (a warp per row in one wave, loading ahead)"),
            ("resident rule", "M = 1 from 4225 to 12672 rows (thread blocks of 8 or 16 warps, all resident, loading "
                              "ahead, the next launch triggered early)"),
            ("resident rule m2", "M = 2 up to 6336 rows (thread blocks of 16 warps, all resident, loading ahead, the "
                                 "next launch triggered early)"),
            ("ahead m4", "M = 4 up to 4224 rows (the tuned 132 thread blocks of 32 warps, loading ahead)")):
        out += _rule_table(pick, tag, f"Decode at {launched} as `bsr_decode.for_shape` launches it, against the "
                           "tuning before it")
    out += _resident_blocks_table(pick)
    out += _ahead3_table(pick)
    out += _small_blocks_table(pick)
    out += _ahead_batch_table(pick)
    out += _stream_table(pick)
    out += _mma_table(pick, "mma decode") + _mma_table(pick, "mma plan")
    out += ["", "Speed versus block height R (50% pruned; geometric mean over the seven shapes):", "",
            "| R | decode M = 1 (us) | decode M = 8 (us) | prefill M = 512 (us) | prefill M = 512 / cuBLAS |",
            "| ---: | ---: | ---: | ---: | ---: |"] * main
    for rows in (1, 4, 8, 16) if main else ():
        d1 = [r for r in res if r["kind"] == "decode" and r["rows"] == rows and r["m"] == 1 and r["sparsity"] == 0.5
              and r["alloc"] == "row" and r["tag"] in ("main", "block height")]
        d8 = [r for r in res if r["kind"] == "decode" and r["rows"] == rows and r["m"] == 8 and r["sparsity"] == 0.5
              and r["alloc"] == "row" and r["tag"] in ("main", "block height")]
        p = [r for r in res if r["kind"] == "prefill" and r["rows"] == rows and r["m"] == 512
             and r["sparsity"] == 0.5 and r["tag"] in ("main", "block height")]
        ratio = math.exp(sum(math.log(1 / r["vs_fp16"]) for r in p) / len(p)) if p else float("nan")
        out.append(f"| {rows} | {gmean(d1):.1f} | {gmean(d8):.1f} | {gmean(p):.0f} | {ratio:.2f} |")
    if current and len(out) > headline:
        out[headline:headline] = ["", "The tables below come from earlier runs: each compares variants of a kernel as "
                                  "it was built then (the headline above is what runs now)."]
    return "\n".join(out)


def write_doc(doc: dict, path: Path) -> None:
    text = path.read_text()
    a, b = "<!-- kernels -->", "<!-- /kernels -->"
    if a not in text:
        raise SystemExit(f"error: {path}: no {a} ... {b} markers")
    head, rest = text.split(a, 1)
    tail = rest.split(b, 1)[1]
    path.write_text(head + a + "\n" + summary(doc) + "\n" + b + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile every kernel variant and bundle them with runtime-only TVM")
    b.add_argument("out")
    b.add_argument("--arch", action="append", default=None, help="CUDA arch (repeatable; default sm_90)")
    b.add_argument("--quick", action="store_true", help="two shapes, fewer M (a smoke run)")
    b.add_argument("--only", default=None, help="build only these cases: comma-separated tags, kernel-name "
                   "substrings, or =name for one kernel exactly; !X for every case X does not select")
    b.add_argument("--m", type=int, action="append", default=None,
                   help="build only cases of this token count (repeatable); nvcc's time grows faster than the "
                   "number of kernels in one build")
    r = sub.add_parser("run", help="on the GPU host: check every kernel, then time it")
    r.add_argument("bundle")
    r.add_argument("--json", default=None)
    r.add_argument("--only", default=None, help="run only these cases (as build --only)")
    r.add_argument("--m", type=int, action="append", default=None,
                   help="run only cases of this token count (repeatable): one call to profile, e.g. under ncu")
    t = sub.add_parser("report", help="print the tables of a JSON result (and write them into a doc)")
    t.add_argument("json", nargs="+", help="result files; a run split over calls is merged in order")
    t.add_argument("--doc", default=None, help="markdown file with <!-- kernels --> markers to fill")
    a = p.parse_args(argv)
    try:
        if a.cmd == "build":
            sys.path.insert(0, str(ROOT))
            build(a.out, a.arch or ["sm_90"], a.quick, a.only, a.m)
            return 0
        if a.cmd == "run":
            if not (Path(a.bundle) / "kernels" / "plan.json").is_file():
                raise FileNotFoundError(f"{a.bundle}: not a kernel bundle (no kernels/plan.json)")
            os.environ.setdefault("TQDM_DISABLE", "1")
            return run(a.bundle, a.json, a.only, a.m)
        docs = [json.loads(Path(f).read_text()) for f in a.json]
        doc = dict(docs[-1], results=merge([d["results"] for d in docs]))
        print(summary(doc))
        if a.doc:
            write_doc(doc, Path(a.doc))
        return 0
    except (FileNotFoundError, json.JSONDecodeError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
