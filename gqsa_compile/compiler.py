"""checkpoint -> ONNX -> Relax -> built module -> artifact folder (written atomically).

Artifact layout (docs/format.md):
    model.so            host code + device code (a fatbin for every requested arch; never CUDA source)
    weights.safetensors weight inputs in call order (outside the .so)
    model.onnx          the exported graph (weights are its inputs, so it is small)
    manifest.json       entry points, input/weight specs, dtypes, G, bits, arch list, checksums
    tokenizer files
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import onnx

from runtime.files import sha256, writing_dir
from training.checkpoint import copy_tokenizer, read_checkpoint
import tvm_schedules
from tvm_schedules import bsr_decode_stream, launch
from tvm_schedules.common import BSRShape

from . import cuda_toolchain
from .fuse_projections import fuse_projections
from .kernel_layout import PACKED32, block_meta, code_order, pack_block_metadata, plan_streams, to_kernel_layout
from .onnx_export import build_graph, cache_names, weight_arrays
from .onnx_import import VARYING_INPUTS, LoweringContext, import_model

# 2: 4-bit codes of CUDA artifacts in the interleaved order; 3: decode captured as a CUDA graph, so a runtime
# must keep decode's inputs at fixed addresses; 4: block metadata of CUDA artifacts packed (manifest "block_meta");
# 5: the stream GEMV's plan may follow a matrix's indptr (BSRMatMul attribute "stream")
# (runtime.model.ARTIFACT_VERSION: the newest a runtime runs)
ARTIFACT_VERSION = 5
DECODE_KERNELS = ("auto", "rows", "stream")  # compile_model(decode_kernel=...)


class CompileError(RuntimeError):
    pass


def make_target(kind: str, archs: list[str]):
    import tvm

    if kind == "llvm":
        return tvm.target.Target("llvm")
    if kind == "cuda":
        cuda_toolchain.setup(archs)
        return tvm.target.Target({"kind": "cuda", "arch": archs[0]}, host="llvm")
    raise CompileError(f"unsupported target {kind!r} (cuda or llvm)")


def kernel_choices(mod) -> dict[str, str]:
    """Every hand-scheduled kernel in the module and the tuning configuration it was built with."""
    out = {}
    for gv, func in mod.functions_items():
        if "gqsa.config" in (func.attrs or {}):
            out[gv.name_hint] = str(func.attrs["gqsa.config"])
    return dict(sorted(out.items()))


def compile_model(ckpt_dir: str | Path, out_dir: str | Path, target: str = "cuda",
                  archs: list[str] | None = None, dtype: str | None = None, log=print,
                  order: str | None = None, cuda_graph: bool = True, pdl: bool | None = None,
                  meta_layout: str | None = None, decode_kernel: str = "auto") -> Path:
    """``order``: the weights' code order, ``meta_layout``: how block metadata is stored (kernel_layout); the target's
    own by default. Tests pass "interleaved4" and "packed32" with llvm to check the CUDA artifacts' layout end to
    end on a CPU.

    ``cuda_graph`` (CUDA only): kernels that read only fixed-address tensors run as CUDA graphs, captured on
    the first call and replayed after: a decode step is then one graph launch instead of hundreds of kernel
    launches from the VM (onnx_import.VARYING_INPUTS says which inputs the runtime keeps in place).
    ``decode_kernel`` (CUDA): which GEMV decodes each packed matrix: "rows" the row kernel (bsr_decode), "stream"
    the stream kernel wherever it takes the matrix (bsr_decode_stream: warps split kept blocks across rows, a
    per-matrix plan appended to indptr), "auto" the stream kernel where bsr_decode_stream.pays (unequal rows on
    large matrices, where it measured faster).
    ``pdl`` (CUDA, every arch sm_90+; None: on exactly there): every kernel is a programmatic dependent launch
    (tvm_schedules.launch): decode GEMVs let the next kernel launch as their loop ends and wait for the previous
    one only before reading activations; every other kernel waits for the previous one first and then lets the
    next one launch, unless its grid is a constant of more than one wave of thread blocks."""
    import tvm

    archs = archs or ["sm_87", "sm_90"]
    if pdl is None:
        pdl = target == "cuda" and launch.supported(archs)
    if pdl and not (target == "cuda" and launch.supported(archs)):
        raise CompileError(f"--pdl needs --target cuda and every --arch sm_90 or later (got {', '.join(archs)})")
    if decode_kernel not in DECODE_KERNELS:
        raise CompileError(f"unknown decode kernel {decode_kernel!r} ({', '.join(DECODE_KERNELS)})")
    dtype = dtype or ("float16" if target == "cuda" else "float32")
    if dtype not in ("float16", "float32"):
        raise CompileError(f"unsupported dtype {dtype!r} (float16 or float32)")
    t0 = time.time()
    args, meta, dense, compressed = read_checkpoint(ckpt_dir)
    order, meta_layout = order or code_order(target), meta_layout or block_meta(target)
    compressed = fuse_projections(to_kernel_layout(compressed, order), args.n_layers)
    tgt = make_target(target, archs)
    wgmma = target == "cuda" and all(a == "sm_90a" for a in archs)
    def shape(b, packed: bool = False) -> BSRShape:
        return BSRShape(*b.shape, b.bits, b.group, b.rows, dtype, order != "checkpoint", packed)

    if meta_layout == PACKED32:
        compressed = pack_block_metadata(compressed, lambda b: tvm_schedules.reads_packed(shape(b), tgt, wgmma))
    if target == "cuda" and decode_kernel != "rows":
        def streams(b) -> bool:
            s = shape(b, True)
            return bsr_decode_stream.supports(s, 1) and (
                decode_kernel == "stream" or bsr_decode_stream.pays(s, b.indptr, pdl))

        compressed = plan_streams(compressed, streams, bsr_decode_stream.CTAS)
    streamed = sum(bool(getattr(b, "stream", 0)) for b in compressed.values())
    log(f"[1/4] export ONNX ({args.n_layers} layers, {len(compressed)} BSR matrices"
        + (f", {streamed} decoded by the stream GEMV" if streamed else "") + ")")
    model = build_graph(args, dense, compressed, dtype)
    log("[2/4] import into Relax (prefill: T symbolic, decode: T = 1)")
    ctx = LoweringContext(tgt, dtype, args.n_heads, args.n_kv_heads, args.head_dim, args.max_seq_len,
                          interleaved=order != "checkpoint", pdl=pdl, wgmma=wgmma)
    mod = import_model(model, ctx)
    log(f"[3/4] build for {target}" + (f" ({', '.join(archs)})" if target == "cuda" else ""))
    cuda_graph = cuda_graph and target == "cuda"
    with tgt, tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": cuda_graph}):
        executable = tvm.compile(mod, target=tgt, tir_pipeline=launch.PIPELINE_ALL if pdl else launch.PIPELINE)

    out = Path(out_dir)
    log(f"[4/4] write artifact {out}")
    with writing_dir(out) as tmp:
        executable.export_library(str(tmp / "model.so"))
        if target == "cuda":
            fatbin, source = cuda_toolchain.has_device_code(tmp / "model.so")
            if not fatbin or source:
                raise CompileError("the CUDA build holds no device code (CUDA source fallback)")
        weights = weight_arrays(args, dense, compressed, dtype)
        from safetensors.numpy import save_file

        save_file(weights, str(tmp / "weights.safetensors"))
        onnx.save(model, str(tmp / "model.onnx"))
        copy_tokenizer(ckpt_dir, tmp)
        manifest = {
            "artifact_version": ARTIFACT_VERSION,
            "format_version": meta["format_version"],
            "target": target, "archs": archs if target == "cuda" else [], "dtype": dtype,
            "entry_points": {"prefill": "T symbolic", "decode": "T = 1"},
            "cuda_graph": cuda_graph,
            "dependent_launch": pdl,
            "varying_inputs": VARYING_INPUTS,
            "inputs": [{"name": "input_ids", "dtype": "int32", "shape": ["T"]},
                       {"name": "positions", "dtype": "int32", "shape": ["T"]}],
            "caches": {"names": cache_names(args), "dtype": dtype,
                       "shape": [args.max_seq_len, args.n_kv_heads, args.head_dim]},
            "weights": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in weights.items()],
            "model": {"n_layers": args.n_layers, "dim": args.dim, "n_heads": args.n_heads,
                      "n_kv_heads": args.n_kv_heads, "vocab_size": args.vocab_size,
                      "max_seq_len": args.max_seq_len},
            "code_order": order,
            "block_meta": meta_layout,
            "kernels": kernel_choices(mod),
            "compression": {k: meta.get(k) for k in ("bits", "group", "rows", "sparsity", "embed_bits",
                                                     "bytes_per_weight", "method")},
            "checksums": {},
            "compile_seconds": None,
        }
        for f in sorted(os.listdir(tmp)):
            manifest["checksums"][f] = sha256(tmp / f)
        manifest["compile_seconds"] = round(time.time() - t0, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out
