"""Stage 1, BQPO (block quantization-pruning optimisation): recover one transformer block's output.

The compressed block sees what the compressed model before it produces (``x_q``) and is trained towards
what the full-precision block produces from the full-precision stream (``y_fp``), by MSE. Trained: the
kept weights, the scales and the zero points of every :class:`QuantLinear` (rounding straight-through);
fixed: the masks and everything else in the block. AdamW with a cosine schedule (EfficientQAT's Block-AP).

Learning rates are relative, so one setting fits models whose weights differ in scale by 10x (SmolLM2's
are ~10x LLaMA-7B's; EfficientQAT's absolute 1e-5 / 1e-4 moved no code at all on it): the weights' in
units of the Linear's weight RMS (not of the quantization step, which would freeze 8-bit weights: their step
is 16x finer), the scales' in units of the median scale. Zero points are integers in the format; they move
by rounding their trained value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .calibration import BlockContext, run_block
from .model import TransformerBlock
from .qlinear import QuantLinear


@dataclass
class BQPOConfig:
    epochs: int = 2
    lr_weight: float = 0.02   # x weight RMS (~0.1 x the median step of W4 g16 on SmolLM2)
    lr_quant: float = 0.01    # x median scale, for scales; zero points get lr_quant x 2^bits codes
    batch: int = 2
    samples: int | None = None  # calibration windows used (default: all)


@torch.no_grad()
def block_loss(block: TransformerBlock, x: torch.Tensor, y: torch.Tensor, ctx: BlockContext) -> float:
    return F.mse_loss(run_block(block, x, ctx), y).item()


def train_block(block: TransformerBlock, x_q: torch.Tensor, y_fp: torch.Tensor, ctx: BlockContext,
                cfg: BQPOConfig, seed: int) -> tuple[float, float]:
    """Optimise ``block`` in place; returns (MSE before, MSE after) over the samples used."""
    n = min(cfg.samples or len(x_q), len(x_q))
    x_q, y_fp = x_q[:n], y_fp[:n]
    qlinears = [m for m in block.modules() if isinstance(m, QuantLinear)]
    for p in block.parameters():
        p.requires_grad_(False)
    weights = [m.weight for m in qlinears]
    quant = [p for m in qlinears for p in (m.scale, m.zero)]
    for p in weights + quant:
        p.requires_grad_(True)
    groups = []
    for m in qlinears:
        groups += [{"params": [m.weight], "lr": cfg.lr_weight * m.weight_rms()},
                   {"params": [m.scale], "lr": cfg.lr_quant * m.median_step()},
                   {"params": [m.zero], "lr": cfg.lr_quant * 2**m.bits}]
    before = block_loss(block, x_q, y_fp, ctx)
    steps = cfg.epochs * math.ceil(n / cfg.batch)
    if steps == 0 or not qlinears:
        return before, before
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch):
            idx = idx.to(x_q.device)
            loss = F.mse_loss(block(x_q[idx], ctx.cos, ctx.sin, ctx.mask, ctx.pos), y_fp[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    for p in weights + quant:
        p.requires_grad_(False)
    with torch.no_grad():  # zero points are integers in the format
        for m in qlinears:
            m.zero.round_().clamp_(0, 2**m.bits - 1)
    return before, block_loss(block, x_q, y_fp, ctx)
