"""Stacking BSR matrices' rows (q/k/v, gate/up) is exact, and mixed configurations stay apart."""
import pytest
import torch

from gqsa_compile.fuse_projections import fuse_projections, stack_rows
from training.bsr import compress_matrix, dequantize


def _bsr(n, k, bits=4, group=16, rows=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n // rows, k // group, generator=g) < 0.5
    keep[0] = False  # a block row with no blocks
    return compress_matrix(torch.randn(n, k, generator=g), keep, bits, group, rows)


@pytest.mark.parametrize("rows", [1, 4])
def test_stacked_rows_dequantize_to_the_stacked_matrices(rows):
    parts = [_bsr(64, 96, rows=rows, seed=1), _bsr(32, 96, rows=rows, seed=2), _bsr(32, 96, rows=rows, seed=3)]
    fused = stack_rows(parts)
    assert fused.shape == (128, 96) and fused.indptr[-1] == sum(p.nnzb for p in parts)
    torch.testing.assert_close(dequantize(fused), torch.cat([dequantize(p) for p in parts]), rtol=0, atol=0)


def test_layers_fuse_where_configurations_match():
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"]
    compressed = {f"layers.0.{n}": _bsr(32, 64, seed=i) for i, n in enumerate(names)}
    compressed.update({f"layers.1.{n}": _bsr(32, 64, seed=i) for i, n in enumerate(names)})
    compressed["layers.1.mlp.up_proj"] = _bsr(32, 64, bits=8, group=32, seed=9)  # per-matrix bits: no fusion
    out = fuse_projections(compressed, 2)
    assert set(out) == {"layers.0.self_attn.qkv_proj", "layers.0.mlp.gate_up_proj", "layers.1.self_attn.qkv_proj",
                        "layers.1.mlp.gate_proj", "layers.1.mlp.up_proj"}
    assert out["layers.0.self_attn.qkv_proj"].shape == (96, 64)
