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


TILE = 16  # rows of a column tile: the m16n8k16 mma's A operand (bsr_decode_mma)


def column_tiles(indptr: np.ndarray, indices: np.ndarray, qweight: np.ndarray, scales: np.ndarray,
                 zeros: np.ndarray, k: int, group: int = 16) -> list[np.ndarray]:
    """A 4-bit G16 R = 1 matrix (checkpoint code order) in bsr_decode_mma's layout, the same kept blocks re-ordered:
    rows in tiles of 16, a tile's blocks by column group, then row. ``[tile_ptr, words, codes, meta]``:
    tile_ptr[t] is tile t's first block; words[t, c] = offset << 16 | mask, bit j of the mask set where row
    16t + j keeps column group c, offset the tile's blocks before column group c; codes the blocks' two words
    in the interleaved order (interleave_codes), then one zero block (with ``absent_loads`` the kernel loads
    where an absent block would sit, which past a tile's last kept block is the next tile's first or that zero
    block); meta the fp16 scale's bits << 16 | the fp16 bits of 1024 + the zero point (0x6400 + z), each half a
    byte permute from the half2 the dequantization subtracts or multiplies by. Row j of a (tile, column group)
    is at block tile_ptr[t] + offset + popcount(mask & ((1 << j) - 1)): no index walk, and a column group's
    activations serve all 16 rows' blocks at once."""
    n, groups = len(indptr) - 1, k // group
    assert n % TILE == 0 and group == 16 and qweight.shape[1:] == (1, 2), "4-bit G16 R = 1, rows a multiple of 16"
    assert TILE * groups <= 1 << 16, f"{groups} column groups: a tile's offsets need more than 16 bits"
    row = np.repeat(np.arange(n), np.diff(indptr.astype(np.int64)))
    col = indices.astype(np.int64)
    tile, j = row // TILE, row % TILE
    order = np.lexsort((j, col, tile))
    cell = tile * groups + col  # (tile, column group), flat
    mask = np.bincount(cell, weights=(1 << j).astype(np.float64), minlength=n // TILE * groups).astype(np.uint32)
    count = np.bincount(cell, minlength=n // TILE * groups).reshape(n // TILE, groups)
    offset = (np.cumsum(count, 1) - count).astype(np.uint32)  # the tile's blocks before each column group
    words = (offset << np.uint32(16)) | mask.reshape(n // TILE, groups)
    tile_ptr = np.concatenate([[0], np.cumsum(count.sum(1))]).astype(np.int32)
    assert zeros.shape[1] == 1 and zeros.max(initial=0) < 16
    meta = scales[:, 0].view(np.uint16).astype(np.uint32) << np.uint32(16) | (0x6400 + zeros[:, 0].astype(np.uint32))
    codes = np.concatenate([interleave_codes(qweight[:, 0, :])[order], np.zeros((1, 2), np.uint32)])
    return [tile_ptr, words, codes, np.concatenate([meta[order], np.zeros(1, np.uint32)])]
