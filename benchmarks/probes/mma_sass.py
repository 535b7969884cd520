"""SASS instructions, registers and spill stores of tensor-core decode GEMVs (tvm_schedules.bsr_decode_mma), built
here for sm_90a with nvcc (no GPU needed): what a kernel change costs before any GPU time is spent on it.

    python benchmarks/probes/mma_sass.py N K M KEY [KEY ...]      # KEY as MmaConfig.key spells it, e.g. mm_w8l2abg
"""
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def parse_key(key: str):
    """MmaConfig from its key, or a one-line exit for anything else."""
    from tvm_schedules.bsr_decode_mma import MmaConfig

    try:
        return MmaConfig.from_key(key)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv: list[str]) -> None:
    import tvm

    from gqsa_compile import cuda_toolchain
    from tvm_schedules import launch
    from tvm_schedules.bsr_decode_mma import bsr_decode_mma, supports
    from tvm_schedules.common import BSRShape

    if len(argv) < 4 or not all(a.isdigit() for a in argv[:3]):
        raise SystemExit("usage: mma_sass.py N K M KEY [KEY ...]  (e.g. 4096 4096 8 mm_w16l1a3bge)")
    n, k, m, keys = int(argv[0]), int(argv[1]), int(argv[2]), argv[3:]
    cuda_toolchain.setup(["sm_90a"])
    s = BSRShape(n, k, 4, 16, 1)
    if not supports(s, m):
        raise SystemExit(f"the mma GEMV takes rows in 16-row tiles and M <= 8, not {n} x {k} at M = {m}")
    funcs = {key: bsr_decode_mma(s, m, parse_key(key)).with_attr("global_symbol", key) for key in keys}
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host="llvm")
    with tempfile.TemporaryDirectory() as tmp, target:
        lib = tvm.compile(tvm.IRModule(funcs), target=target, tir_pipeline=launch.PIPELINE)
        so = Path(tmp) / "probe.so"
        lib.export_library(str(so))
        sass = cuda_toolchain.sass_by_arch(so)[90]
        res = cuda_toolchain.resources_by_arch(so)[90]
    for chunk in sass.split("Function : ")[1:]:
        name = chunk[:chunk.index("\n")].strip()
        count = len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", chunk, re.M))
        print(f"{name:28s} {count:5d} instructions  {res[name].get('REG')} registers  "
              f"{len(re.findall(r'STL', chunk))} spill stores  {res[name].get('SHARED')} B shared")


if __name__ == "__main__":
    main(sys.argv[1:])
