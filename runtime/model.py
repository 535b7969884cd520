"""Load a compiled GQSA artifact with TVM's runtime library alone and run prefill / decode.

No torch, no TVM compiler: only numpy, the runtime-only ``tvm`` package (``TVM_USE_RUNTIME_LIB=1``) and,
for CUDA, libcudart plus ``libtvm_runtime_cuda.so`` loaded by hand (runtime-only TVM does not load them).
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from .files import sha256

_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
              "U16": np.uint16, "U32": np.uint32}


class ArtifactError(RuntimeError):
    """The artifact folder is missing, incomplete or tampered with; the message is for the user."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal reader of the (documented, stable) safetensors layout: u64 header size, JSON header, bytes."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    n = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
    header = json.loads(data[8:8 + n].tobytes())
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + lo: 8 + n + hi], _ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def _find_cudart() -> str:
    """libcudart.so.13: a bundle's lib/, $GQSA_CUDART, the nvidia-cuda-runtime wheel, or torch's copy."""
    candidates = [os.environ.get("GQSA_CUDART", "")]
    here = Path(__file__).resolve().parent.parent
    candidates.append(str(here / "lib" / "libcudart.so.13"))
    for pkg in ("nvidia", "torch"):
        spec = importlib.util.find_spec(pkg)
        for base in (spec.submodule_search_locations or []) if spec else []:
            candidates += [str(p) for p in Path(base).glob("**/libcudart.so.13")]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    return "libcudart.so.13"  # let the dynamic loader search (a CUDA toolkit on LD_LIBRARY_PATH)


def import_tvm(cuda: bool):
    """Import the runtime-only TVM; for CUDA also load libcudart and TVM's CUDA runtime library."""
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    if cuda:
        try:
            ctypes.CDLL(_find_cudart(), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ArtifactError(f"cannot load libcudart.so.13 ({e}); set GQSA_CUDART") from None
    import tvm
    import tvm.runtime.vm  # noqa: F401  (not imported by ``import tvm`` in runtime-only mode)

    if cuda:
        lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ArtifactError(f"cannot load {lib.name} ({e}); is an NVIDIA driver installed?") from None
    return tvm


# The newest artifact layout this runtime runs (docs/format.md). 3: decode may be a captured CUDA graph, which
# needs decode's inputs kept at fixed addresses, as this runtime does; 4: block metadata may be packed into
# the index words (the kernels read it; the runtime only passes tensors); 5: a stream GEMV's plan may follow a
# matrix's indptr (the kernels read it too).
ARTIFACT_VERSION = 5


class CompiledModel:
    """Prefill and decode over a KV cache that lives on the device between calls."""

    def __init__(self, artifact_dir: str | Path, verify: bool = True):
        self.dir = Path(artifact_dir)
        mpath = self.dir / "manifest.json"
        if not mpath.is_file():
            raise ArtifactError(f"{self.dir}: no manifest.json (not a gqsa-compile artifact)")
        try:
            self.manifest = m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{mpath}: corrupt JSON ({e.msg})") from None
        if m.get("artifact_version", 1) > ARTIFACT_VERSION:
            raise ArtifactError(f"{self.dir}: artifact version {m['artifact_version']} is newer than this runtime "
                                f"reads ({ARTIFACT_VERSION}); use the runtime of the gqsa that built it")
        for f, digest in m["checksums"].items():
            p = self.dir / f
            if not p.is_file():
                raise ArtifactError(f"{self.dir}: {f} is missing")
            if verify and sha256(p) != digest:
                raise ArtifactError(f"{self.dir}: {f} does not match its checksum (modified or corrupt)")
        cuda = m["target"] == "cuda"
        tvm = self.tvm = import_tvm(cuda)
        self.dev = tvm.cuda(0) if cuda else tvm.cpu(0)
        if cuda and not self.dev.exist:
            raise ArtifactError("this artifact needs a CUDA GPU and none is visible")
        lib = tvm.runtime.load_module(str(self.dir / "model.so"))
        self.vm = tvm.runtime.vm.VirtualMachine(lib, self.dev)
        self._prefill, self._decode = self.vm["prefill"], self.vm["decode"]
        arrays = read_safetensors(self.dir / "weights.safetensors")
        self.weights = [tvm.runtime.tensor(np.ascontiguousarray(arrays[w["name"]]), self.dev) for w in m["weights"]]
        c = m["caches"]
        self.max_seq_len = c["shape"][0]
        self.caches = [tvm.runtime.tensor(np.zeros(c["shape"], c["dtype"]), self.dev) for _ in c["names"]]

        # decode's token and position: device tensors overwritten in place, as a captured CUDA graph reads them
        # at the addresses it was captured with (manifest "varying_inputs")
        self._step = [tvm.runtime.tensor(np.zeros(1, np.int32), self.dev) for _ in range(2)]
        # decode with every argument bound once (a closure kept by the VM): a step passes none of the hundreds
        # of cache and weight tensors through the FFI again
        self.vm.save_function("decode", "gqsa_decode_step", *self._step, *self.caches, *self.weights)
        self._decode_step = self.vm["gqsa_decode_step"]

    def _check(self, start: int, n: int) -> None:
        if start + n > self.max_seq_len:
            raise ValueError(f"sequence longer than the compiled cache ({self.max_seq_len} tokens)")

    def prefill(self, ids, start: int = 0, last: bool = False) -> np.ndarray:
        """Logits [T, vocab] for ``ids`` placed at positions start..start+T-1 (the cache is written); with
        ``last``, only the last position's [vocab], all generation needs: only that row leaves the GPU (a
        1024-token prompt's [T, vocab] fp32 logits are 201 MB, whose copy took 58-74% of a SmolLM2 prefill's
        GPU time on an H100, docs/perf.md)."""
        ids = np.asarray(ids, np.int32)
        self._check(start, len(ids))
        t = self.tvm.runtime.tensor
        pos = np.arange(start, start + len(ids), dtype=np.int32)
        out = self._prefill(t(ids, self.dev), t(pos, self.dev), *self.caches, *self.weights)
        if not last:
            return out.numpy()
        vocab = out.shape[-1]
        row = vocab * np.dtype(out.dtype).itemsize
        return out._create_view((vocab,), out.dtype, (len(ids) - 1) * row).numpy()

    def decode(self, token: int, pos: int) -> np.ndarray:
        """Logits [vocab] for one token at ``pos``."""
        self._check(pos, 1)
        ids, where = self._step
        ids.copyfrom(np.array([token], np.int32))
        where.copyfrom(np.array([pos], np.int32))
        return self._decode_step().numpy()[0]

    def sync(self):
        self.dev.sync()
