"""Stage 2, E2E-OQP: train only the quantization scales of the whole compressed model, end to end.

Integer codes, zero points and masks are frozen (:meth:`QuantLinear.freeze_codes`), so the model keeps the
exact sparsity pattern and integer weights BQPO produced; what moves is one fp16 scale per kept group.
Loss: next-token cross-entropy on the calibration windows, or (``kl``) the KL divergence to the
full-precision model's next-token distribution. Gradient accumulation lets a small batch stand for a large
one; AdamW with a cosine schedule. The learning rate is in units of each Linear's median scale (as in BQPO).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .model import Transformer
from .qlinear import QuantLinear


@dataclass
class E2EConfig:
    epochs: int = 1
    lr: float = 0.004  # x median scale of each Linear
    batch: int = 1
    accum: int = 4
    samples: int | None = None
    kl: bool = False


def _loss(model: Transformer, ids: torch.Tensor, teacher: Transformer | None) -> torch.Tensor:
    logits = model(ids)[:, :-1].float()
    if teacher is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    with torch.no_grad():
        target = F.log_softmax(teacher(ids)[:, :-1].float(), -1)
    return F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean") / ids.shape[1]


@torch.no_grad()
def mean_loss(model: Transformer, windows: torch.Tensor, teacher: Transformer | None = None) -> float:
    return sum(_loss(model, w[None], teacher).item() for w in windows) / len(windows)


def train_scales(model: Transformer, windows: torch.Tensor, cfg: E2EConfig, seed: int,
                 teacher: Transformer | None = None) -> tuple[float, float]:
    """Optimise the scales of every QuantLinear of ``model`` in place; returns (loss before, loss after)."""
    dev = next(model.parameters()).device
    windows = windows[: cfg.samples or len(windows)].to(dev)
    qlinears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in qlinears:
        m.freeze_codes()
        m.scale.requires_grad_(True)
    scales = [m.scale for m in qlinears]
    before = mean_loss(model, windows, teacher)
    per_step = cfg.batch * cfg.accum
    steps = cfg.epochs * math.ceil(len(windows) / per_step)
    groups = [{"params": [m.scale], "lr": cfg.lr * m.median_step()}
              for m in qlinears]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    with tqdm(total=steps, desc="e2e-oqp", unit="step") as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(len(windows), generator=gen)
            for chunk in order.split(per_step):
                opt.zero_grad(set_to_none=True)
                parts = chunk.split(cfg.batch)
                for idx in parts:
                    (_loss(model, windows[idx.to(dev)], teacher) / len(parts)).backward()
                opt.step()
                sched.step()
                bar.update()
    for s in scales:
        s.requires_grad_(False)
        s.data = s.data.clamp(min=2**-24).half().float()  # what the checkpoint will store
    return before, mean_loss(model, windows, teacher)
