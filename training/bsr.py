"""Block Sparse Row int-k weights: the storage every later stage reads (docs/format.md).

A weight W [N, K] is cut into blocks of R output rows x G consecutive input columns. A block row
(R rows) keeps any number of blocks; each kept block stores, per row r in 0..R-1, one quantization group
of G integers in [0, 2^bits) with an fp16 scale and an integer zero point:  w = (q - zero) * scale.

Tensors (nnzb = kept blocks, W = ceil(G / (32 // bits)) words per group):
    indptr  int32  [N/R + 1]      block row b holds blocks indptr[b] .. indptr[b+1]-1
    indices uint16 [nnzb]         block column (input columns indices*G .. +G-1)
    qweight uint32 [nnzb, R, W]   value i of a group is bits (i % P)*bits.. of word i // P, P = 32 // bits
    scales  fp16   [nnzb, R]
    zeros   uint8  [nnzb, R]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (8, 16, 32, 64, 128)
SUPPORTED_ROWS = (1, 4, 8, 16)


def words_per_group(bits: int, group: int) -> int:
    per = 32 // bits
    return -(-group // per)


@dataclass
class BSRWeight:
    """One compressed matrix; numpy arrays so that torch-free code (the runtime) can share the layout."""

    shape: tuple[int, int]
    bits: int
    group: int
    rows: int
    indptr: np.ndarray
    indices: np.ndarray
    qweight: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray

    TENSORS = ("indptr", "indices", "qweight", "scales", "zeros")

    @property
    def nnzb(self) -> int:
        return int(self.indices.shape[0])

    @property
    def density(self) -> float:
        n, k = self.shape
        return self.nnzb / ((n // self.rows) * (k // self.group))

    def nbytes(self) -> int:
        return sum(getattr(self, t).nbytes for t in self.TENSORS)

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{t}": getattr(self, t) for t in self.TENSORS}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, shape, bits, group, rows) -> "BSRWeight":
        return cls(tuple(shape), bits, group, rows, *(np.asarray(tensors[f"{prefix}.{t}"]) for t in cls.TENSORS))


def check_config(shape, bits: int, group: int, rows: int) -> None:
    n, k = shape
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bits {bits} (supported: {', '.join(map(str, SUPPORTED_BITS))})")
    if group not in SUPPORTED_GROUPS:
        raise ValueError(f"unsupported group size {group} (supported: {', '.join(map(str, SUPPORTED_GROUPS))})")
    if rows not in SUPPORTED_ROWS:
        raise ValueError(f"unsupported block height {rows} (supported: {', '.join(map(str, SUPPORTED_ROWS))})")
    if k % group or n % rows:
        raise ValueError(f"a {n}x{k} weight does not tile into {rows}x{group} blocks")
    if k // group > 65535:
        raise ValueError(f"{k} input columns need more than uint16 block indices")


def fit_groups(w: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max grid per last-dim group: (scale, zero) as float32, scale already rounded to fp16.

    Asymmetric: the range always contains 0 and the zero point is an integer in [0, 2^bits). Symmetric: zero
    fixed at the middle code, exact for absmax-scaled codes such as GGUF Q8_0.
    """
    qmax = 2**bits - 1
    w = w.float()
    if symmetric:
        zero = torch.full(w.shape[:-1], (qmax + 1) // 2, dtype=torch.float32, device=w.device)
        scale = w.abs().amax(-1) / ((qmax + 1) // 2 - 1)
    else:
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = (hi - lo) / qmax
    scale = scale.clamp(min=2**-24).half().float()  # smallest fp16 subnormal: never 0 once stored
    if not symmetric:
        zero = (-lo / scale).round().clamp(0, qmax)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes round(w / scale + zero) clamped to [0, 2^bits); scale/zero broadcast over the last dim (float)."""
    return (w / scale[..., None] + zero[..., None]).round().clamp(0, 2**bits - 1)


def quantize_groups(w: torch.Tensor, bits: int, symmetric: bool = False):
    """Round-to-nearest per last-dim group. w [..., G] -> (q uint8, scale fp16, zero uint8)."""
    scale, zero = fit_groups(w, bits, symmetric)
    return quantize(w.float(), scale, zero, bits).to(torch.uint8), scale.half(), zero.to(torch.uint8)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """[..., G] uint8 codes -> [..., W] uint32 words."""
    per = 32 // bits
    g = q.shape[-1]
    w = words_per_group(bits, g)
    padded = np.zeros(q.shape[:-1] + (w * per,), dtype=np.uint32)
    padded[..., :g] = q
    padded = padded.reshape(q.shape[:-1] + (w, per))
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    return np.bitwise_or.reduce(padded << shifts, axis=-1).astype(np.uint32)


def unpack(words: np.ndarray, bits: int, group: int) -> np.ndarray:
    per = 32 // bits
    shifts = np.arange(per, dtype=np.uint32) * bits
    vals = (words[..., None] >> shifts) & np.uint32(2**bits - 1)
    return vals.reshape(words.shape[:-1] + (-1,))[..., :group].astype(np.uint8)


def compress_matrix(w: torch.Tensor, keep: torch.Tensor, bits: int, group: int, rows: int,
                    symmetric: bool = False) -> BSRWeight:
    """w [N, K] float, keep [N/R, K/G] bool mask of blocks -> BSRWeight (round-to-nearest)."""
    n, k = w.shape
    check_config((n, k), bits, group, rows)
    groups = w.detach().float().reshape(n, k // group, group)
    scale, zero = fit_groups(groups, bits, symmetric)
    codes = quantize(groups, scale, zero, bits).reshape(n, k)
    return pack_blocks(codes, scale, zero, keep, bits, group, rows)


def pack_blocks(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, keep: torch.Tensor, bits: int,
                group: int, rows: int) -> BSRWeight:
    """Dense codes [N, K], per-group scale/zero [N, K/G] and a block mask [N/R, K/G] -> BSRWeight.

    Entries of pruned blocks are ignored. Scales are stored as fp16, zeros and codes as integers.
    """
    n, k = codes.shape
    check_config((n, k), bits, group, rows)
    keep = keep.cpu()
    br, bc = keep.nonzero(as_tuple=True)  # row-major: sorted by block row, then column
    blocks = codes.detach().cpu().reshape(n // rows, rows, k // group, group).permute(0, 2, 1, 3)[br, bc]
    per_row = lambda t: t.detach().cpu().reshape(n // rows, rows, k // group).permute(0, 2, 1)[br, bc]  # noqa: E731
    indptr = np.zeros(n // rows + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(keep.sum(1).numpy())
    return BSRWeight((n, k), bits, group, rows, indptr, bc.numpy().astype(np.uint16),
                     pack(blocks.to(torch.uint8).numpy(), bits), per_row(scale).half().numpy(),
                     per_row(zero).to(torch.uint8).numpy())


def dequantize(b: BSRWeight) -> torch.Tensor:
    """BSRWeight -> dense fp32 [N, K], zeros where blocks were pruned."""
    n, k = b.shape
    q = torch.from_numpy(unpack(b.qweight, b.bits, b.group).astype(np.float32))  # [nnzb, R, G]
    vals = (q - torch.from_numpy(b.zeros.astype(np.float32))[..., None]) * torch.from_numpy(
        b.scales.astype(np.float32))[..., None]
    dense = torch.zeros(n // b.rows, k // b.group, b.rows, b.group)
    br = torch.repeat_interleave(torch.arange(n // b.rows), torch.from_numpy(np.diff(b.indptr).astype(np.int64)))
    dense[br, torch.from_numpy(b.indices.astype(np.int64))] = vals
    return dense.permute(0, 2, 1, 3).reshape(n, k)


class BSRLinear(nn.Module):
    """y = x W^T with W held in BSR int-k form; the dense fp32 copy is made once, on first use."""

    def __init__(self, weight: BSRWeight):
        super().__init__()
        self.bsr = weight
        self.register_buffer("dense", dequantize(weight), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense

    def forward(self, x):
        return x @ self.dense.to(x.dtype).T


class BSREmbedding(nn.Module):
    """Embedding rows from a (dense, full-density) BSR matrix; the same object can serve a tied lm_head."""

    def __init__(self, linear: BSRLinear):
        super().__init__()
        self.linear = linear

    def forward(self, idx):
        return self.linear.dense[idx]
