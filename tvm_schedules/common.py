"""What every kernel family shares: the BSR int-k layout's constants and the dequantization expression."""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .layout import nibble


@dataclass(frozen=True)
class BSRShape:
    """A compressed Linear's static description: y[M, n] = x[M, k] @ W^T, W in R x G blocks of ``bits``."""

    n: int
    k: int
    bits: int
    group: int
    rows: int
    dtype: str = "float16"  # activations
    interleaved: bool = False  # 4-bit codes in half2 pair order (tvm_schedules.layout)

    def __post_init__(self):
        # the artifact's code order is one flag for all matrices; other widths keep the checkpoint order
        object.__setattr__(self, "interleaved", self.interleaved and self.bits == 4)

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def words(self) -> int:
        return -(-self.group // self.per_word)

    @property
    def block_rows(self) -> int:
        return self.n // self.rows

    @property
    def key(self) -> str:
        return f"n{self.n}_k{self.k}_b{self.bits}_g{self.group}_r{self.rows}_{self.dtype}" + (
            "_il" if self.interleaved else "")


def code(word, i: int | T.PrimExpr, s: BSRShape):
    """Integer code ``i`` (0..G-1) of a group from its packed uint32 word, as fp32."""
    pos = nibble(i) if s.interleaved else i % s.per_word
    shift = T.Cast("uint32", pos * s.bits)
    return T.Cast("float32", (word >> shift) & T.uint32(2**s.bits - 1))


def is_gpu(target) -> bool:
    return target.kind.name in ("cuda", "rocm", "metal", "vulkan", "opencl")


def slab(rows: int) -> int:
    """fp16 between 8-column slabs of a wgmma tile (its descriptor's leading-dimension byte offset / 2): the
    K-major core matrices of ``rows`` rows, then 16 bytes so that a row's slabs land in different banks."""
    return rows // 8 * 64 + 8
