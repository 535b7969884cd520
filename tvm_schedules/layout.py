"""The packed-code orders the kernels read (pure numpy: the benchmark's GPU side imports it too).

Checkpoints store code i of a group at bits ``(i % P) * bits`` of word ``i // P`` (docs/format.md). CUDA
artifacts of 4-bit models store each word in the interleaved order instead: codes 2p and 2p + 1 at nibbles
p and p + 4, so ``(word >> 4p) & 0x000F000F`` puts the pair into the two halves of a 32-bit register, and
OR-ing in 0x64006400 makes it the half2 (1024 + c0, 1024 + c1) with no per-code shift or conversion. They
also pack each 4-bit R = 1 block's column, zero point and scale into one 32-bit word (``pack_metadata``).
"""
from __future__ import annotations

import numpy as np


def nibble(i):
    """Nibble position of 4-bit code ``i`` (mod 8) inside its word in the interleaved order."""
    return (i % 8) // 2 + 4 * (i % 2)


def interleave_codes(qweight: np.ndarray) -> np.ndarray:
    """uint32 words of eight 4-bit codes, checkpoint order -> interleaved order."""
    out = np.zeros_like(qweight)
    for i in range(8):
        out |= ((qweight >> np.uint32(4 * i)) & np.uint32(15)) << np.uint32(4 * nibble(i))
    return out


def pack_metadata(indices: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """A 4-bit R = 1 matrix's per-block metadata as one uint32 per block, scale << 16 | zero << 12 | column (the
    fp16 scale's bits unchanged; columns < 4096): what CUDA artifacts store (gqsa_compile.kernel_layout)."""
    col = indices.astype(np.uint32)
    assert col.max(initial=0) < 4096 and zeros.shape[1] == 1 and zeros.max(initial=0) < 16
    z = zeros[:, 0].astype(np.uint32) << np.uint32(12)
    return col | z | scales[:, 0].view(np.uint16).astype(np.uint32) << np.uint32(16)
