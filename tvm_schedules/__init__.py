"""Hand-written TensorIR kernels for the GQSA model, chosen per target and shape.

Families (one per file): bsr_decode (CUDA GEMV, M <= 8), bsr_decode_stream (CUDA GEMV, M = 1, warps splitting
kept blocks across rows: large matrices with unequal rows), bsr_decode_mma (CUDA tensor cores, M = 1-8, on 16-row
tiles stored by column group; benchmark only: gqsa-compile decodes at M = 1), bsr_prefill_tiled (CUDA tensor
cores, any M: 4-bit codes), bsr_prefill (CUDA tensor cores, any M: the other code widths), bsr_prefill_wgmma
(sm_90a, R = 1: weights dequantized once, then a pipelined wgmma GEMM; the plan's last entry in sm_90a builds),
bsr_prefill_simt (CUDA without tensor cores: G = 8, fp32), bsr_cpu (llvm),
attention, kv_cache, embedding. Every PrimFunc carries the attributes Relax needs to leave it alone.
"""
from __future__ import annotations

from .attention import attention_cpu, attention_cuda
from .bsr_cpu import bsr_matmul_cpu
from .bsr_decode import for_shape as decode_for_shape
from .bsr_decode import bsr_decode_cuda
from . import bsr_decode_stream, bsr_prefill, bsr_prefill_tiled
from .bsr_prefill_simt import bsr_prefill_simt
from .common import WEIGHT_HINT, BSRShape, is_gpu, packable
from .embedding import embedding
from .kv_cache import kv_append
from .launch import PIPELINE  # noqa: F401  (registers the TIR pipeline that flags dependent launches)

DECODE_MAX_M = 8
SCHEDULED = {"tirx.is_scheduled": True, "op_pattern": 8}


def _finish(func, name: str, config: str = "default"):
    """Attributes Relax needs to leave the kernel alone, its symbol, and its tuning choice (for the manifest)."""
    return func.with_attrs({**SCHEDULED, "global_symbol": name, "gqsa.config": config})


def bsr_matmul(s: BSRShape, m: int | None, target, decode_cfg=None, prefill_cfg=None, pdl: bool = False,
               wgmma: bool = False):
    """The kernel for y[M, n] = x[M, k] W^T; ``m`` is the static token count, None when symbolic. ``pdl``: decode
    kernels use programmatic dependent launch (every arch of the build sm_90+, tvm_schedules.launch). ``wgmma``
    (every arch of the build sm_90a): long prefills run bsr_prefill_wgmma (bsr_prefill_tiled.WGMMA_ABOVE)."""
    if not is_gpu(target):
        return _finish(bsr_matmul_cpu(s), f"bsr_matmul_{s.key}")
    if m == 1 and s.stream:  # a per-matrix plan appended to indptr (gqsa-compile: bsr_decode_stream.pays)
        cfg = bsr_decode_stream.StreamConfig(ctas=s.stream, pdl=pdl, hint=WEIGHT_HINT)
        return _finish(bsr_decode_stream.bsr_decode_stream(s, m, cfg), f"bsr_decode_m{m}_{s.key}", cfg.key)
    if m is not None and m <= DECODE_MAX_M:
        cfg = decode_cfg or decode_for_shape(s, m, pdl)
        return _finish(bsr_decode_cuda(s, m, cfg), f"bsr_decode_m{m}_{s.key}", cfg.key)
    tiled = bsr_prefill_tiled.tuned(s, wgmma=wgmma)
    if prefill_cfg is None and bsr_prefill_tiled.plan_supported(s, tiled):
        return _finish(bsr_prefill_tiled.bsr_prefill_tiled(s, tiled), f"bsr_prefill_{s.key}",
                       bsr_prefill_tiled.config_key(tiled))
    if s.packed:
        raise ValueError(f"no CUDA prefill kernel reads packed block metadata for {s}")
    cfg = prefill_cfg or bsr_prefill.tuned(s.rows)
    if bsr_prefill.supports(s, cfg):
        return _finish(bsr_prefill.bsr_prefill_mma(s, cfg), f"bsr_prefill_{s.key}", bsr_prefill.effective(s, cfg).key)
    return _finish(bsr_prefill_simt(s), f"bsr_prefill_simt_{s.key}")


def reads_packed(s: BSRShape, target, wgmma: bool = False) -> bool:
    """Whether every kernel ``bsr_matmul`` would pick for ``s`` can read its block metadata packed into one
    uint32 per block (BSRShape.packed): on CUDA the tiled (and wgmma) prefill plan must take the matrix."""
    if not packable(s.bits, s.rows, s.k, s.group):
        return False
    return not is_gpu(target) or bsr_prefill_tiled.plan_supported(s, bsr_prefill_tiled.tuned(s, wgmma=wgmma))


def attention(n_heads: int, n_kv: int, head_dim: int, cache_len: int, dtype: str, target):
    f = attention_cuda if is_gpu(target) else attention_cpu
    return _finish(f(n_heads, n_kv, head_dim, cache_len, dtype), f"attention_h{n_heads}_kv{n_kv}_{dtype}")


def cache_append(n_kv: int, head_dim: int, cache_len: int, dtype: str, target):
    return _finish(kv_append(n_kv, head_dim, cache_len, dtype, is_gpu(target)), f"kv_append_{dtype}")


def embed(s: BSRShape, target):
    return _finish(embedding(s, is_gpu(target)), f"embed_{s.key}")
