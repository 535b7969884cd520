"""Pack an artifact into a folder that runs offline with plain ``python3`` (numpy + tokenizers + a driver).

    DEST/run.py            entry point: python3 DEST/run.py --prompt "..."
    DEST/artifact/         the compiled model
    DEST/runtime/          this package (no torch, no compiler)
    DEST/site/tvm          TVM's Python package with only the runtime libraries (no libtvm_compiler.so)
    DEST/site/tvm_ffi      from the apache-tvm-ffi wheel for the chosen Python version
    DEST/site/ml_dtypes    TVM's Python package imports it (wheel for the chosen Python version)
    DEST/lib/libcudart.so.13   for CUDA artifacts
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .files import writing_dir

_TVM_SKIP = {"3rdparty", "src", "include", "lib64", "web", "__pycache__"}
_TVM_LIBS = {"libtvm_runtime.so", "libtvm_runtime_cuda.so"}
_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]

RUN_PY = '''"""Run the bundled GQSA model: python3 run.py --prompt "..." (see --help)."""
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(here, "site"), here]
os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
from runtime.cli import main
sys.exit(main([os.path.join(here, "artifact")] + sys.argv[1:]))
'''


class BundleError(RuntimeError):
    pass


def _wheel_into(pkg: str, python: str, site: Path) -> None:
    """Unpack ``pkg`` (the version installed here) built for ``python`` into ``site``."""
    version = importlib.metadata.version(pkg)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", d, f"{pkg}=={version}"]
        for p in _PLATFORMS:
            cmd += ["--platform", p]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(d).glob("*.whl"))
        if r.returncode == 0 and wheels:
            with zipfile.ZipFile(wheels[0]) as z:
                z.extractall(site)
            return
    if python != here:
        raise BundleError(f"cannot download {pkg}=={version} for Python {python} (no network?)")
    dist = importlib.metadata.distribution(pkg)
    for f in dist.files or []:
        src = Path(dist.locate_file(f))
        if src.is_file() and ".dist-info" not in str(f) and not str(f).startswith(".."):
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def add_runtime(tmp: Path, python: str, cuda: bool) -> None:
    """Put this package, runtime-only TVM (+ tvm-ffi, ml_dtypes) and, for CUDA, libcudart into ``tmp``."""
    import runtime
    from runtime.model import _find_cudart

    spec = importlib.util.find_spec("tvm")
    tvm_dir = Path(list(spec.submodule_search_locations)[0])
    shutil.copytree(Path(runtime.__file__).parent, tmp / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "bundle.py"))
    site = tmp / "site"

    def ignore(d, names):
        skip = {n for n in names if n in _TVM_SKIP}
        if Path(d).name == "lib":
            skip |= {n for n in names if n.endswith(".so") and n not in _TVM_LIBS}
        return skip

    shutil.copytree(tvm_dir, site / "tvm", ignore=ignore)
    for pkg in ("apache-tvm-ffi", "ml_dtypes"):
        _wheel_into(pkg, python, site)
    if cuda:
        (tmp / "lib").mkdir()
        shutil.copy2(_find_cudart(), tmp / "lib" / "libcudart.so.13")


def make_bundle(artifact_dir: str | Path, dest: str | Path, python: str | None = None) -> Path:
    import json

    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    artifact, dest = Path(artifact_dir), Path(dest)
    if not (artifact / "manifest.json").is_file():
        raise BundleError(f"{artifact}: no manifest.json (not a gqsa-compile artifact)")
    cuda = json.loads((artifact / "manifest.json").read_text())["target"] == "cuda"
    with writing_dir(dest) as tmp:
        shutil.copytree(artifact, tmp / "artifact")
        add_runtime(tmp, python, cuda)
        (tmp / "run.py").write_text(RUN_PY)
    return dest
