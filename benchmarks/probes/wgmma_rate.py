"""Tensor-core rate of wgmma by N and A's source (wgmma_rate.cu): can a GEMM that skips pruned 16-row blocks,
one m64n16k16 per kept block, keep Hopper's tensor cores as busy as m64n128k16 does?

    python benchmarks/probes/wgmma_rate.py build out/wgrate     # here: nvcc -> wgmma_rate.cubin
    python3 out/wgrate/wgmma_rate.py run [--json X]             # GPU host: torch + libcuda, no TVM
"""
import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

# kernel: (N, accumulators per commit group, A from registers)
KERNELS = {"ss128_acc2": (128, 2, False), "ss16_acc16": (16, 16, False), "rs16_acc16": (16, 16, True),
           "rs16_acc8": (16, 8, True), "rs16_acc4": (16, 4, True), "rs32_acc8": (32, 8, True)}
WARPGROUPS, ITERS = 2, 4096


def build(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from gqsa_compile.cuda_toolchain import cuda_root

    out.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).with_suffix(".cu")
    r = subprocess.run([str(cuda_root() / "bin" / "nvcc"), "-arch=sm_90a", "-cubin", "-O3", "-Xptxas", "-v",
                        "-o", str(out / "wgmma_rate.cubin"), str(src)], capture_output=True, text=True)
    print(r.stderr)
    r.check_returncode()
    shutil.copy2(__file__, out / "wgmma_rate.py")


def run(here: Path, json_out: str | None) -> None:
    import torch

    out = torch.zeros(1024, device="cuda")  # torch's context, current on this thread
    cu = ctypes.CDLL("libcuda.so.1")
    ok = lambda r: r == 0 or sys.exit(f"CUDA driver error {r}")  # noqa: E731
    mod = ctypes.c_void_p()
    ok(cu.cuModuleLoadData(ctypes.byref(mod), (here / "wgmma_rate.cubin").read_bytes()))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    rows = []
    for name, (n, acc, rs) in KERNELS.items():
        f = ctypes.c_void_p()
        ok(cu.cuModuleGetFunction(ctypes.byref(f), mod, name.encode()))
        iters, ptr = ctypes.c_int(ITERS), ctypes.c_void_p(out.data_ptr())
        args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(iters), ctypes.c_void_p),
                                     ctypes.cast(ctypes.byref(ptr), ctypes.c_void_p))
        launch = lambda: ok(cu.cuLaunchKernel(f, sms, 1, 1, 128 * WARPGROUPS, 1, 1, 0, stream, args, None))  # noqa: E731
        for _ in range(3):
            launch()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(7):
            s.record()
            for _ in range(5):
                launch()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 5)
        ms = sorted(times)[3]
        flops = 2 * sms * WARPGROUPS * ITERS * acc * 64 * n * 16
        rows.append({"kernel": name, "n": n, "accumulators": acc, "a_from_registers": rs, "ms": ms,
                     "tflops": flops / ms / 1e9})
    peak = rows[0]["tflops"]
    print(f"device: {torch.cuda.get_device_name()}, {sms} SMs x {WARPGROUPS} warpgroups, {ITERS} iterations")
    print(f"{'kernel':<12} {'N':>4} {'acc':>4} {'A':>4} {'TFLOP/s':>8} {'of n128':>8}")
    for r in rows:
        r["of_n128"] = r["tflops"] / peak
        print(f"{r['kernel']:<12} {r['n']:>4} {r['accumulators']:>4} {'reg' if r['a_from_registers'] else 'smem':>4} "
              f"{r['tflops']:>8.0f} {r['of_n128']:>8.2f}")
    if json_out:
        Path(json_out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        run(Path(__file__).resolve().parent, sys.argv[3] if len(sys.argv) > 3 else None)
