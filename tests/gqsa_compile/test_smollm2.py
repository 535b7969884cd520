"""The real model: SmolLM2-135M compressed W4S50, compiled for llvm, against the torch reference (~1.5 min)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_smollm2_compiled_logits_match_reference(tmp_path):
    from gqsa_compile.compiler import compile_model
    from runtime.model import CompiledModel
    from training import assets
    from training.checkpoint import load_compressed
    from training.compress import compress

    model_dir = assets.default_model_dir()
    windows = torch.randint(0, 49152, (2, 128), generator=torch.Generator().manual_seed(0))
    ck = compress(model_dir, tmp_path / "ck", windows=windows, sparsity=0.5, bits=4, group=16, stages=("prune",))
    art = compile_model(ck, tmp_path / "llvm", "llvm", log=lambda *a: None)
    ids = np.random.default_rng(0).integers(0, 49152, 10).astype(np.int32)
    with torch.no_grad():
        ref = load_compressed(ck)(torch.from_numpy(ids[None]).long())[0].numpy()
    m = CompiledModel(art)
    got = np.concatenate([m.prefill(ids[:8])] + [m.decode(int(ids[i]), i)[None] for i in (8, 9)])
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max(), rtol=0)
