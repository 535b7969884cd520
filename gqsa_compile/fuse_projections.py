"""Projection-fusion pass: a layer's q, k and v projections become one BSR matrix, and so do gate and up.

Matrices that read the same activations can run as one kernel. At SmolLM2's size a decode GEMV is its fixed
cost (2.6 us for 0.1-0.35 MB, docs/perf.md), so five launches per layer cost more than two; prefill's small
grids fill more of the GPU too. BSR block rows are independent, so stacking two matrices' rows is exact:
indptr of the second continues from the first's kept blocks, and the block arrays are appended. The graph
then slices the one output (onnx_export), and the slices fuse into the kernels that read them.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.bsr import BSRWeight

FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def stack_rows(parts: list[BSRWeight]) -> BSRWeight:
    """One matrix whose output rows are those of ``parts`` in order (same K, bits, G and R)."""
    first = parts[0]
    if any((p.shape[1], p.bits, p.group, p.rows) != (first.shape[1], first.bits, first.group, first.rows)
           for p in parts):
        raise ValueError("only matrices with the same K, bits, group and block height stack")
    offsets = np.cumsum([0] + [p.nnzb for p in parts[:-1]])
    indptr = np.concatenate([first.indptr[:1]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    cat = lambda t: np.concatenate([getattr(p, t) for p in parts])  # noqa: E731
    return replace(first, shape=(sum(p.shape[0] for p in parts), first.shape[1]),
                   indptr=indptr.astype(first.indptr.dtype), indices=cat("indices"), qweight=cat("qweight"),
                   scales=cat("scales"), zeros=cat("zeros"))


def fuse_projections(compressed: dict[str, BSRWeight], n_layers: int) -> dict[str, BSRWeight]:
    """``compressed`` with each layer's q/k/v and gate/up stacked where their configurations allow."""
    out = dict(compressed)
    for i in range(n_layers):
        for fused, names in FUSED.items():
            keys = [f"layers.{i}.{n}" for n in names]
            parts = [compressed[k] for k in keys]
            try:
                out[f"layers.{i}.{fused}"] = stack_rows(parts)
            except ValueError:
                continue  # mixed configurations (e.g. per-matrix bits): keep the matrices apart
            for k in keys:
                del out[k]
    return out
