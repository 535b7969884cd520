"""The compiled model (llvm) against the torch reference, the ONNX file, CUDA device code, bad input."""
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import torch

from training.checkpoint import load_compressed


def _model(artifact):
    from runtime.model import CompiledModel

    return CompiledModel(artifact)


def test_onnx_passes_checker(tiny_artifact):
    model = onnx.load(tiny_artifact / "model.onnx")
    onnx.checker.check_model(model, full_check=False)
    assert {n.op_type for n in model.graph.node if n.domain == "gqsa"} == {
        "BSRMatMul", "BSREmbedding", "KVAppend", "CachedAttention"}


def _assert_logits_match(ckpt, artifact, seed: int, prompt: int, total: int):
    """Prefill ``prompt`` random tokens, then teacher-forced decode to ``total``, against the torch reference.
    Tolerance: 1e-4 absolute on fp32 logits (float32 artifact, same math in a different order)."""
    ids = np.random.default_rng(seed).integers(0, 256, total).astype(np.int32)
    with torch.no_grad():
        ref = load_compressed(ckpt)(torch.from_numpy(ids[None]).long())[0].numpy()
    m = _model(artifact)
    got = np.concatenate([m.prefill(ids[:prompt])] + [m.decode(int(ids[i]), i)[None] for i in range(prompt, total)])
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    last = m.prefill(ids[:prompt], last=True)  # only the last row leaves the device, the same values
    assert last.shape == ref[prompt - 1].shape
    np.testing.assert_array_equal(last, got[prompt - 1])


def test_logits_match_reference(tiny_ckpt, tiny_artifact):
    _assert_logits_match(tiny_ckpt, tiny_artifact, seed=0, prompt=8, total=12)


def test_cuda_code_order_end_to_end_on_cpu(tiny_ckpt, tmp_path):
    """The CUDA artifacts' weight layout (interleaved 4-bit codes, block metadata packed into one word per
    block), built for llvm so a CPU can run it: the repacked weights, the lowering's layout flags and every
    kernel's decoding (4-bit Linears, the 8-bit embedding and tied head) must agree, or the logits drift from
    the reference."""
    from gqsa_compile.compiler import compile_model

    out = compile_model(tiny_ckpt, tmp_path / "il", "llvm", log=lambda *a: None, order="interleaved4",
                        meta_layout="packed32")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["code_order"] == "interleaved4" and manifest["block_meta"] == "packed32"
    names = {w["name"]: w["dtype"] for w in manifest["weights"]}
    o = "layers.0.self_attn.o_proj"  # the packed words replace the scales and zero points
    assert names[f"{o}.indices"] == "uint32" and f"{o}.scales" not in names and f"{o}.zeros" not in names
    assert names["embed_tokens.indices"] == "uint16" and "embed_tokens.scales" in names  # the embedding kernel's
    _assert_logits_match(tiny_ckpt, out, seed=1, prompt=6, total=10)


def test_greedy_generation_identical_for_32_tokens(tiny_ckpt, tiny_artifact):
    from runtime.generate import generate

    prompt = [3, 17, 42, 99]
    st = generate(_model(tiny_artifact), prompt, max_new_tokens=32)
    ref_model = load_compressed(tiny_ckpt)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(32):
            ids.append(int(ref_model(torch.tensor([ids]))[0, -1].argmax()))
    assert st.tokens == ids[len(prompt):]


ARCHS = ["sm_90", "sm_80", "sm_87", "sm_89"]  # Hopper, A100, Jetson Orin, Ada: what the kernels must build for


def test_cuda_artifact_holds_device_code_not_source(tiny_ckpt, tmp_path):
    from gqsa_compile.compiler import compile_model
    from gqsa_compile.cuda_toolchain import fatbin_archs, has_device_code

    out = compile_model(tiny_ckpt, tmp_path / "cuda", "cuda", ARCHS, log=lambda *a: None)
    fatbin, source = has_device_code(out / "model.so")
    assert fatbin and not source
    assert fatbin_archs(out / "model.so") == {80, 87, 89, 90}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["archs"] == ARCHS and manifest["compression"]["bits"] == 4
    # decode runs as one CUDA graph (captured on the first call), prefill (symbolic T) launches kernels
    assert manifest["cuda_graph"] and manifest["varying_inputs"] == {"prefill": 2, "decode": 0}
    so = (out / "model.so").read_bytes()
    assert b"decode_cuda_graph_capture" in so and b"prefill_cuda_graph_capture" not in so
    # sm_80-89 have no griddepcontrol: plain launches
    assert not manifest["dependent_launch"] and b"use_programtic_dependent_launch" not in so
    # the weights are stored in the kernels' code order, and the chosen tuning is recorded per kernel
    from runtime.model import read_safetensors
    from training.checkpoint import read_checkpoint
    from tvm_schedules import bsr_prefill_tiled
    from tvm_schedules.bsr_decode import tuned
    from tvm_schedules.common import WEIGHT_HINT
    from tvm_schedules.layout import interleave_codes

    assert manifest["artifact_version"] == 5 and manifest["code_order"] == "interleaved4"
    assert manifest["block_meta"] == "packed32"
    compressed = read_checkpoint(tiny_ckpt)[3]
    stored = read_safetensors(out / "weights.safetensors")
    o = "layers.0.self_attn.o_proj"
    np.testing.assert_array_equal(stored[f"{o}.qweight"], interleave_codes(compressed[o].qweight))
    # q, k and v stacked into one matrix (fuse_projections), each part in the kernels' code order
    qkv = np.concatenate([interleave_codes(compressed[f"layers.0.self_attn.{n}_proj"].qweight) for n in "qkv"])
    np.testing.assert_array_equal(stored["layers.0.self_attn.qkv_proj.qweight"], qkv)
    assert "layers.0.self_attn.q_proj.qweight" not in stored
    kernels = manifest["kernels"]
    # a tiny model's matrices are one-wave grids: their GEMVs load ahead of the staging (bsr_decode.for_shape)
    assert any(k.startswith("bsr_decode_m1_") and v == replace(tuned(1), ahead=2, hint=WEIGHT_HINT).key
               for k, v in kernels.items())
    assert any(k.startswith("bsr_prefill_") and v.startswith("m<=32:t64x32") and v.endswith(
        bsr_prefill_tiled.DEFAULT.key) for k, v in kernels.items())


def _cli(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from gqsa_compile.cli import main; "
                           "from training.cli import compress_main; from runtime.cli import main as run; "
                           f"sys.exit({args[0]}({list(args[1:])!r}))"], capture_output=True, text=True)


def _one_line_error(r, out_dir):
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "error:" in r.stderr, r.stderr
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.*"))  # no temp folder left behind


def test_sm90_builds_launch_every_kernel_as_a_dependent(tiny_ckpt, tmp_path):
    """Where every arch is sm_90+, dependent launch is the default: every kernel waits on the one before it
    (tvm_schedules.launch), so each one's launch parameters carry the flag; --no-pdl builds without."""
    import re

    from gqsa_compile.compiler import compile_model

    out = compile_model(tiny_ckpt, tmp_path / "pdl", "cuda", ["sm_90"], log=lambda *a: None)
    assert json.loads((out / "manifest.json").read_text())["dependent_launch"]
    so = (out / "model.so").read_bytes()
    # the CUDA module's function table: each kernel's name twice (length-prefixed), its argument types and
    # launch parameters, up to the next kernel's entry
    starts = [m.start() for m in re.finditer(rb"(.{8})(\w+_kernel(?:_\d+)?)(.{8})\2", so, re.S)
              if int.from_bytes(m[1], "little") == len(m[2])]
    entries = [so[a:b] for a, b in zip(starts, starts[1:] + [starts[-1] + 4096])]
    assert len(entries) > 20 and all(b"tirx.use_programtic_dependent_launch" in e for e in entries)
    plain = compile_model(tiny_ckpt, tmp_path / "plain", "cuda", ["sm_90"], pdl=False, log=lambda *a: None)
    assert not json.loads((plain / "manifest.json").read_text())["dependent_launch"]
    assert b"use_programtic_dependent_launch" not in (plain / "model.so").read_bytes()


def test_stream_decode_kernel_reads_a_plan_stored_after_indptr(tiny_ckpt, tmp_path):
    """--decode-kernel stream: each packed matrix's decode runs bsr_decode_stream (the 8-bit head is not packed),
    whose plan (warp_plan.stream) the weights store after indptr; indptr itself, all the prefill kernels read, is
    unchanged. The default ("auto") leaves a tiny model's matrices on the row kernel (bsr_decode_stream.pays)."""
    from gqsa_compile.compiler import compile_model
    from runtime.model import read_safetensors
    from training.checkpoint import read_checkpoint
    from tvm_schedules import bsr_decode_stream, warp_plan
    from tvm_schedules.common import WEIGHT_HINT

    out = compile_model(tiny_ckpt, tmp_path / "st", "cuda", ["sm_90"], log=lambda *a: None, decode_kernel="stream")
    manifest = json.loads((out / "manifest.json").read_text())
    decode = {k: v for k, v in manifest["kernels"].items() if k.startswith("bsr_decode_m1_") and "_pm" in k}
    cfg = bsr_decode_stream.StreamConfig(pdl=True, hint=WEIGHT_HINT)
    assert decode and all(k.endswith(f"_st{cfg.ctas}") and v == cfg.key for k, v in decode.items())
    o = "layers.0.self_attn.o_proj"
    indptr = read_checkpoint(tiny_ckpt)[3][o].indptr
    stored = read_safetensors(out / "weights.safetensors")[f"{o}.indptr"]
    assert len(stored) == warp_plan.stream_len(len(indptr) - 1, cfg.ctas)
    np.testing.assert_array_equal(stored, warp_plan.stream(indptr, cfg.ctas))
    auto = compile_model(tiny_ckpt, tmp_path / "auto", "cuda", ["sm_90"], log=lambda *a: None)
    assert not any("_st" in k for k in json.loads((auto / "manifest.json").read_text())["kernels"])


def test_bad_inputs_give_one_line_errors(tiny_model, tiny_ckpt, tiny_artifact, tmp_path):
    out = tmp_path / "out"
    _one_line_error(_cli("main", str(tmp_path / "missing"), "--target", "llvm", "-o", str(out)), out)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, corrupt)
    (corrupt / "config.json").write_text("{not json")
    _one_line_error(_cli("main", str(corrupt), "--target", "llvm", "-o", str(out)), out)
    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    _one_line_error(_cli("main", str(other), "--target", "llvm", "-o", str(out)), out)
    _one_line_error(_cli("main", str(tiny_ckpt), "--target", "cuda", "--arch", "sm_42", "-o", str(out)), out)
    _one_line_error(_cli("main", str(tiny_ckpt), "--target", "cuda", "--pdl", "-o", str(out)), out)  # sm_87 too
    _one_line_error(_cli("compress_main", str(tiny_model), "-o", str(out), "--bits", "5", "--sparsity", "0"), out)
    _one_line_error(_cli("compress_main", str(tiny_model), "-o", str(out), "--group", "12", "--sparsity", "0"), out)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, tampered)
    with open(tampered / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x01\x02\x03\x04")
    r = _cli("run", str(tampered))
    assert r.returncode == 2 and "checksum" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    newer = tmp_path / "newer"  # built by a later gqsa: refused, not run with the wrong assumptions
    shutil.copytree(tiny_artifact, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "artifact_version": 99}))
    r = _cli("run", str(newer))
    assert r.returncode == 2 and "newer than this runtime" in r.stderr and len(r.stderr.strip().splitlines()) == 1
