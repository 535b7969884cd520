"""Build real CUDA device code (a multi-arch fatbin) on a machine with no GPU and no CUDA driver.

TVM's CUDA codegen only compiles device code when ``libtvm_runtime_cuda.so`` can be loaded; otherwise it
silently embeds CUDA *source*, which no deploy target can run. So we (1) load libcudart from the
``nvidia-cuda-runtime`` wheel and a stub ``libcuda.so.1`` (the toolkit's build-host trick: every entry
point returns an error, nothing ever runs on it), and (2) register our own ``tvm_callback_cuda_compile`` that
runs nvcc from the ``nvidia-cuda-nvcc`` wheel with one ``-gencode`` pair per requested architecture.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import tempfile
from pathlib import Path

SUPPORTED_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_120")
_STUB_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                 "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                 "cuTensorMapEncodeTiled", "cuInit", "cuDriverGetVersion", "cuGetProcAddress")
FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50 little-endian


class ToolchainError(RuntimeError):
    pass


def cuda_root() -> Path:
    """The folder of the pip CUDA wheels (nvidia/cu13): bin/nvcc, lib/libcudart.so.13, include/."""
    import nvidia

    for base in nvidia.__path__:
        root = Path(base) / "cu13"
        if (root / "bin" / "nvcc").is_file():
            return root
    raise ToolchainError("nvcc not found: install the nvidia-cuda-nvcc wheel (pip install -e .)")


def cudart_path() -> Path:
    import nvidia

    for base in nvidia.__path__:
        p = Path(base) / "cu13" / "lib" / "libcudart.so.13"
        if p.is_file():
            return p
    raise ToolchainError("libcudart.so.13 not found: install the nvidia-cuda-runtime wheel")


def _stub_libcuda() -> Path:
    """Compile (once, into the cache) a libcuda.so.1 whose functions all return CUDA_ERROR_NO_DEVICE."""
    from training.assets import cache_dir

    out = cache_dir() / "stub" / "libcuda.so.1"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = "".join(f"int {s}(void) {{ return 100; }}\n" for s in _STUB_SYMBOLS)
    c, tmp = out.with_suffix(f".{os.getpid()}.c"), out.with_suffix(f".{os.getpid()}.tmp")
    c.write_text(src)
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(c)], check=True, capture_output=True)
        os.replace(tmp, out)
    finally:
        c.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out


_ARCHS: list[str] = []


def _nvcc_compile(code: str, target=None) -> bytes:
    nvcc = cuda_root() / "bin" / "nvcc"
    with tempfile.TemporaryDirectory() as d:
        cu, fatbin = Path(d) / "kernels.cu", Path(d) / "kernels.fatbin"
        cu.write_text(code)
        cmd = [str(nvcc), "--fatbin", "-O3", "-lineinfo", "-o", str(fatbin), str(cu)]
        for arch in _ARCHS:
            num = arch.removeprefix("sm_")
            cmd += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise ToolchainError(f"nvcc failed:\n{r.stderr[-4000:]}")
        return fatbin.read_bytes()


def setup(archs: list[str]) -> None:
    """Make TVM compile CUDA device code for ``archs`` with nvcc, here and now, without a GPU."""
    bad = [a for a in archs if a not in SUPPORTED_ARCHS]
    if bad or not archs:
        raise ToolchainError(f"unsupported CUDA arch {', '.join(bad) or '(none)'} "
                             f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    _ARCHS[:] = archs
    root = cuda_root()
    os.environ["CUDA_PATH"] = os.environ["CUDA_HOME"] = str(root)
    os.environ["PATH"] = f"{root / 'bin'}:{os.environ.get('PATH', '')}"
    ctypes.CDLL(str(cudart_path()), mode=ctypes.RTLD_GLOBAL)
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)  # a real driver, if this host has one
    except OSError:
        ctypes.CDLL(str(_stub_libcuda()), mode=ctypes.RTLD_GLOBAL)
    import tvm
    import tvm_ffi

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if lib.is_file():
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _nvcc_compile, override=True)


def has_device_code(so_path: str | Path) -> tuple[bool, bool]:
    """(contains a fatbin, contains CUDA source) for an exported library."""
    data = Path(so_path).read_bytes()
    return FATBIN_MAGIC in data, b"__global__" in data


def fatbin_archs(so_path: str | Path) -> set[int]:
    """SM numbers of the ELF (cubin) entries of every fatbin inside a library, read from the fatbin headers."""
    import struct

    data = Path(so_path).read_bytes()
    archs, start = set(), data.find(FATBIN_MAGIC)
    while start >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", data, start)
        pos, end = start + header, start + header + size
        while pos < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
            if kind == 2:  # ELF
                archs.add(struct.unpack_from("<I", data, pos + 28)[0])
            pos += entry_header + payload
        start = data.find(FATBIN_MAGIC, end)
    return archs


def _cuobjdump(so_path: str | Path, option: str) -> str:
    """``cuobjdump option`` over every fatbin inside a library: the fatbins TVM embeds as data are cut out (their
    headers give their sizes)."""
    import struct

    root = cuda_root()
    env = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '')}"}
    data = Path(so_path).read_bytes()
    text, start = "", data.find(FATBIN_MAGIC)
    with tempfile.TemporaryDirectory() as d:
        while start >= 0:
            _, _, header, size = struct.unpack_from("<IHHQ", data, start)
            blob = Path(d) / f"{start}.fatbin"
            blob.write_bytes(data[start:start + header + size])
            r = subprocess.run([str(root / "bin" / "cuobjdump"), option, str(blob)], capture_output=True,
                               text=True, env=env)
            if r.returncode:
                raise ToolchainError(f"cuobjdump failed: {r.stderr.strip()[-2000:]}")
            text += r.stdout
            start = data.find(FATBIN_MAGIC, start + header + size)
    return text


def _by_arch(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in text.split("arch = sm_")[1:]:
        num = int(part[:part.index("\n")].rstrip("a"))
        out[num] = out.get(num, "") + part
    return out


def sass_by_arch(so_path: str | Path) -> dict[int, str]:
    """The SASS of every cubin inside a library, keyed by SM number (cuobjdump -sass)."""
    return _by_arch(_cuobjdump(so_path, "-sass"))


def resources_by_arch(so_path: str | Path) -> dict[int, dict[str, dict[str, int]]]:
    """Per SM number, per kernel, what ptxas allotted it (cuobjdump -res-usage): REG, STACK, SHARED, LOCAL, ..."""
    return {arch: {m[1]: {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", m[2])}
                   for m in re.finditer(r"Function (\w+):\n(.*)", text)}
            for arch, text in _by_arch(_cuobjdump(so_path, "-res-usage")).items()}


def functions_with(sass: str, opcode: str) -> set[str]:
    """Names of the kernels in one arch's SASS whose code contains ``opcode`` (e.g. HMMA, HGMMA)."""
    found = set()
    for chunk in sass.split("Function : ")[1:]:
        name = chunk[:chunk.index("\n")].strip()
        if opcode in chunk:
            found.add(name)
    return found
