"""``gqsa-compile MODEL_DIR --target cuda|llvm [--arch sm_87 ...] -o OUT_DIR``"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="gqsa-compile",
        description="Compile a GQSA checkpoint (from gqsa-compress) ahead of time into a TVM module: "
                    "model.so with device code for every --arch, weights outside it, a manifest, the tokenizer.")
    p.add_argument("model_dir", help="GQSA checkpoint folder (gqsa-compress output)")
    p.add_argument("--target", default="cuda", choices=["cuda", "llvm"], help="device kind (default: cuda)")
    p.add_argument("--arch", action="append", default=None, metavar="SM",
                   help="CUDA arch to embed device code for, repeatable (default: sm_87 and sm_90)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=None,
                   help="activation dtype (default: float16 on cuda, float32 on llvm)")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="launch every kernel from the VM instead of replaying CUDA graphs (cuda only)")
    p.add_argument("--pdl", action="store_const", const=True, default=None,
                   help="every kernel a programmatic dependent launch, placed while the one before it finishes "
                        "(needs every --arch sm_90+; the default where they all are: SmolLM2 decode 1.16-1.18x faster "
                        "on an H200, docs/perf.md)")
    p.add_argument("--no-pdl", dest="pdl", action="store_const", const=False,
                   help="plain launches even where every --arch is sm_90+")
    p.add_argument("--decode-kernel", choices=["auto", "rows", "stream"], default="auto",
                   help="GEMV for decode (cuda): 'rows' a warp per row; 'stream' warps splitting each thread block's "
                        "kept blocks across rows, by a plan stored with each matrix; 'auto' (default) the stream "
                        "kernel for large matrices whose rows keep unequal numbers of blocks, where it measured faster "
                        "(docs/perf.md)")
    p.add_argument("-o", "--output", default=None, help="artifact folder (default: MODEL_DIR-TARGET)")
    a = p.parse_args(argv)

    from training.model import ModelError

    from .compiler import CompileError, compile_model
    from .cuda_toolchain import ToolchainError

    out = Path(a.output or f"{a.model_dir.rstrip('/')}-{a.target}")
    try:
        compile_model(a.model_dir, out, a.target, a.arch, a.dtype, cuda_graph=a.cuda_graph, pdl=a.pdl,
                      decode_kernel=a.decode_kernel)
    except (ModelError, CompileError, ToolchainError, ValueError) as e:
        print(f"gqsa-compile: error: {e}", file=sys.stderr)
        return 2
    print(f"artifact: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
