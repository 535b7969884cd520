"""The deploy bundle runs from its own folder with runtime-only TVM (no compiler library, no torch)."""
import subprocess
import sys


def test_bundle_runs_with_runtime_only_tvm(tiny_artifact, tmp_path):
    from runtime.bundle import make_bundle

    dest = make_bundle(tiny_artifact, tmp_path / "bundle")
    assert not list(dest.rglob("libtvm_compiler.so"))
    probe = (
        "import sys; sys.modules['torch'] = None  # as on a host without torch: importing it fails\n"
        f"sys.path[:0] = [{str(dest / 'site')!r}, {str(dest)!r}]\n"
        "import os; os.environ['TVM_USE_RUNTIME_LIB'] = '1'\n"
        "from runtime.model import CompiledModel\n"
        f"m = CompiledModel({str(dest / 'artifact')!r})\n"
        "import tvm; assert tvm.__file__.startswith(sys.path[0]), tvm.__file__\n"
        "print(int(m.decode(5, 0).argmax()))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 0 <= int(r.stdout.split()[-1]) < 256
