"""Every compression method the tool runs, GQSA and its baselines, as data: one table, one driver.

A method says which weights go (``pattern`` and the ``score`` that ranks them), whether the kept weights are
compensated with second-order information (``compensate``: SparseGPT / GPTQ / group OBS) or rounded alone
(RTN), and whether they are quantized. Methods whose result is a BSR int-k matrix (group patterns and dense
quantization) write a GQSA checkpoint that compiles; the others (N:M and unstructured patterns, fp16 weights)
write a plain Hugging Face folder, for evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    pattern: str        # "group" (R x G blocks), "dense", "n:m" e.g. "2:4", "unstructured"
    score: str          # "obs" (group OBS / SparseGPT), "wanda", "magnitude", "none"
    compensate: bool    # second-order sweep (OBS/GPTQ) instead of round-to-nearest
    quantized: bool     # False: kept weights stay fp16
    about: str

    @property
    def bsr(self) -> bool:
        return self.quantized and self.pattern in ("group", "dense")

    @property
    def nm(self) -> tuple[int, int] | None:
        if ":" not in self.pattern:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def prunes(self) -> bool:
        return self.pattern != "dense"


METHODS = {
    "gqsa": Method("group", "obs", True, True, "group OBS pruning + GPTQ, then BQPO and E2E-OQP (--stages)"),
    "wanda-group": Method("group", "wanda", False, True, "Wanda block importance + round-to-nearest"),
    "magnitude-group": Method("group", "magnitude", False, True, "block |W| sum + round-to-nearest"),
    "rtn": Method("dense", "none", False, True, "dense round-to-nearest int-k"),
    "gptq": Method("dense", "none", True, True, "dense GPTQ int-k"),
    "wanda-2:4": Method("2:4", "wanda", False, False, "2:4 by Wanda, fp16 weights"),
    "sparsegpt-2:4": Method("2:4", "obs", True, False, "2:4 by SparseGPT, fp16 weights"),
    "wanda-4:8": Method("4:8", "wanda", False, False, "4:8 by Wanda, fp16 weights"),
    "sparsegpt-4:8": Method("4:8", "obs", True, False, "4:8 by SparseGPT, fp16 weights"),
    "sparsegpt-unstructured": Method("unstructured", "obs", True, True, "SparseGPT unstructured + GPTQ int-k"),
    "wanda-unstructured": Method("unstructured", "wanda", False, False, "Wanda unstructured, fp16 weights"),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (one of: {', '.join(METHODS)})")
    return METHODS[name]


def bits_per_weight(m: Method, *, sparsity: float, bits: int, group: int) -> float:
    """Storage bits per original weight of a non-BSR result (BSR results count their real bytes instead).

    N:M: values plus log2(m)-bit positions per kept value (NVIDIA's 2:4 metadata is 2 bits per kept value).
    Unstructured: a 1-bit mask plus the kept values, plus per-group fp16 scale and 8-bit zero if quantized.
    Dense int-k: the values plus per-group fp16 scale and 8-bit zero.
    """
    if m.nm:
        n, mm = m.nm
        return n / mm * (16 + math.log2(mm))
    value_bits = bits if m.quantized else 16
    overhead = 24 / group if m.quantized else 0.0
    mask_bits = 1 if m.prunes else 0
    return mask_bits + (1 - sparsity) * value_bits + overhead
