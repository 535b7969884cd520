"""Weight-layout pass: repack the checkpoint's BSR tensors into the order the target's kernels read.

The checkpoint format is the training side's contract (docs/format.md, version 1) and stays as it is; the
artifact may store the same numbers in a kernel-friendly order. For CUDA, 4-bit codes are interleaved
(tvm_schedules.layout: codes 2p and 2p + 1 at nibbles p and p + 4) so the decode and prefill kernels turn a
code pair into a half2 with one LOP3. CPU (llvm) artifacts keep the checkpoint order.
"""
from __future__ import annotations

from dataclasses import replace

from training.bsr import BSRWeight
from tvm_schedules.layout import interleave_codes

CHECKPOINT = "checkpoint"
INTERLEAVED4 = "interleaved4"


def code_order(target_kind: str) -> str:
    return INTERLEAVED4 if target_kind == "cuda" else CHECKPOINT


def to_kernel_layout(compressed: dict[str, BSRWeight], order: str) -> dict[str, BSRWeight]:
    """The same matrices with ``qweight`` in ``order`` (4-bit matrices only; others are unchanged)."""
    if order == CHECKPOINT:
        return compressed
    return {name: replace(b, qweight=interleave_codes(b.qweight)) if b.bits == 4 else b
            for name, b in compressed.items()}
