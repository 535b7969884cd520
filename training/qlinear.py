"""The trainable form of a BSR int-k Linear: what BQPO and E2E-OQP optimise, and what becomes a BSRWeight.

W_hat = mask * (clamp(round(W / s) + round(z), 0, 2^b - 1) - round(z)) * s, per 1 x G group of each row,
with rounding passed straight through to the gradient. The block mask (R x G blocks) is fixed.

Two modes:
* BQPO: the continuous weights W, the scales s and the zero points z are trained (codes follow W).
* E2E-OQP (after :meth:`freeze_codes`): the integer codes and zero points are buffers; only s is trained, so
  the integer weights and the mask provably stay what BQPO left.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bsr import BSRWeight, pack_blocks, quantize


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


class QuantLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, keep: torch.Tensor,
                 bits: int, group: int, rows: int):
        """weight [N, K] continuous weights that round to the starting codes (GPTQ's compensated weights:
        BQPO then starts exactly where GPTQ ended), scale/zero [N, K/G], keep [N/R, K/G] bool."""
        super().__init__()
        self.bits, self.group, self.rows = bits, group, rows
        self.shape = tuple(weight.shape)
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.scale = nn.Parameter(scale.detach().float().clone())
        self.zero = nn.Parameter(zero.detach().float().clone())
        self.register_buffer("keep", keep.detach().bool().clone())
        self.register_buffer("codes", None)

    @property
    def frozen(self) -> bool:
        return self.codes is not None

    def element_mask(self) -> torch.Tensor:
        return self.keep.repeat_interleave(self.rows, 0).repeat_interleave(self.group, 1)

    @torch.no_grad()
    def median_step(self) -> float:
        """Median scale over kept groups: the unit the training learning rates are given in."""
        return self.scale[self.element_mask()[:, ::self.group]].median().item()

    @torch.no_grad()
    def weight_rms(self) -> float:
        """RMS of the kept weights: the unit of the weights' learning rate, whatever the bit width."""
        return self.weight[self.element_mask()].pow(2).mean().sqrt().item()

    def _grouped(self, t: torch.Tensor) -> torch.Tensor:
        n, k = self.shape
        return t.reshape(n, k // self.group, self.group)

    def quantized_weight(self) -> torch.Tensor:
        n, k = self.shape
        s, z = self.scale[..., None], round_ste(self.zero)[..., None]
        if self.frozen:
            q = self._grouped(self.codes).float()
        else:
            q = torch.clamp(round_ste(self._grouped(self.weight) / s) + z, 0, 2**self.bits - 1)
        return ((q - z) * s).reshape(n, k) * self.element_mask()

    def forward(self, x):
        return F.linear(x, self.quantized_weight().to(x.dtype))

    @torch.no_grad()
    def integer_codes(self) -> torch.Tensor:
        """Codes [N, K] uint8 under the fp16-rounded scales that will be stored."""
        if self.frozen:
            return self.codes.clone()
        s = self.scale.clamp(min=2**-24).half().float()
        return quantize(self._grouped(self.weight), s, self.zero.round(), self.bits).reshape(self.shape) \
            .to(torch.uint8)

    @torch.no_grad()
    def freeze_codes(self) -> None:
        """Enter E2E-OQP mode: integer codes and zero points become constants, only the scales train."""
        codes = self.integer_codes()
        self.scale.data = self.scale.data.half().float()
        self.zero.data = self.zero.data.round()
        self.zero.requires_grad_(False)
        self.codes = codes
        # the continuous weights are no longer read: free them (26 GiB of fp32 on a 7B model)
        self.weight = nn.Parameter(torch.empty(0, device=codes.device), requires_grad=False)

    def to_bsr(self) -> BSRWeight:
        return pack_blocks(self.integer_codes(), self.scale.detach().half().float(), self.zero.detach().round(),
                           self.keep, self.bits, self.group, self.rows)
