"""Weight-layout pass: repack the checkpoint's BSR tensors into the order the target's kernels read.

The checkpoint format is the training side's contract (docs/format.md, version 1) and stays as it is; the
artifact may store the same numbers in a kernel-friendly order. For CUDA, 4-bit codes are interleaved
(tvm_schedules.layout: codes 2p and 2p + 1 at nibbles p and p + 4) so the decode and prefill kernels turn a
code pair into a half2 with one LOP3, and the block metadata of 4-bit R = 1 matrices is packed into one
uint32 per block (scale << 16 | zero << 12 | column): 12 bytes a block instead of 13, read in one load
instead of three (decode 1.03-1.15x faster at M = 1 on an H100, docs/perf.md). CPU (llvm) artifacts keep the
checkpoint order and separate tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from training.bsr import BSRWeight
from tvm_schedules.layout import interleave_codes, pack_metadata
from tvm_schedules.warp_plan import stream as stream_plan

CHECKPOINT = "checkpoint"
INTERLEAVED4 = "interleaved4"
SEPARATE = "separate"  # block metadata as the checkpoint stores it: indices, scales, zeros
PACKED32 = "packed32"  # where the kernels read it: one uint32 per block in ``indices``; no scales, no zeros


def code_order(target_kind: str) -> str:
    return INTERLEAVED4 if target_kind == "cuda" else CHECKPOINT


def block_meta(target_kind: str) -> str:
    return PACKED32 if target_kind == "cuda" else SEPARATE


def to_kernel_layout(compressed: dict[str, BSRWeight], order: str) -> dict[str, BSRWeight]:
    """The same matrices with ``qweight`` in ``order`` (4-bit matrices only; others are unchanged)."""
    if order == CHECKPOINT:
        return compressed
    return {name: replace(b, qweight=interleave_codes(b.qweight)) if b.bits == 4 else b
            for name, b in compressed.items()}


@dataclass
class PackedBSRWeight(BSRWeight):
    """A matrix whose ``indices`` are uint32 words scale << 16 | zero << 12 | column; scales and zeros are None."""

    TENSORS = ("indptr", "indices", "qweight")
    packed = True


@dataclass
class StreamBSRWeight(PackedBSRWeight):
    """A packed matrix whose indptr carries the stream GEMV's plan for ``stream`` thread blocks
    (tvm_schedules.warp_plan.stream): decode runs it on bsr_decode_stream, prefill reads indptr's head as before."""

    stream: int = 0


def plan_streams(compressed: dict[str, BSRWeight], chosen: Callable[[BSRWeight], bool],
                 ctas: int) -> dict[str, BSRWeight]:
    """Every packed matrix ``chosen`` picks, with the stream plan of ``ctas`` thread blocks appended to indptr."""
    return {name: StreamBSRWeight(b.shape, b.bits, b.group, b.rows, stream_plan(b.indptr, ctas), b.indices,
                                  b.qweight, None, None, ctas)
            if getattr(b, "packed", False) and chosen(b) else b for name, b in compressed.items()}


def pack_block_metadata(compressed: dict[str, BSRWeight],
                        reads_packed: Callable[[BSRWeight], bool]) -> dict[str, BSRWeight]:
    """Every matrix whose kernels read packed metadata (``reads_packed``), packed; the embedding table (read by
    the embedding kernel too) and the rest as they are."""
    return {name: PackedBSRWeight(b.shape, b.bits, b.group, b.rows, b.indptr,
                                  pack_metadata(b.indices, b.scales, b.zeros), b.qweight, None, None)
            if name != "embed_tokens" and reads_packed(b) else b for name, b in compressed.items()}
