"""Calibration data: token windows, and the activations that flow into each transformer block.

Every stage works one transformer block at a time (GPTQ, BQPO), so memory stays at one block plus its
inputs: ``BlockIO`` keeps the calibration activations entering the current block, for the full-precision
model (the BQPO targets) and for the compressed model so far (what the compressed block will really see).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import Transformer, TransformerBlock


def calibration_windows(tokenizer, text: str, count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``length`` tokens from ``text`` -> LongTensor [count, length]."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if len(ids) < length + 1:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one window of {length}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (count,), generator=g)
    return torch.stack([ids[s:s + length] for s in starts])


@dataclass
class BlockContext:
    """What a block needs besides its input for a full causal window: rope tables and the causal mask."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor

    @classmethod
    def for_model(cls, model: Transformer, length: int) -> "BlockContext":
        pos = torch.arange(length, device=model.rope_cos.device)
        return cls(model.rope_cos[:length], model.rope_sin[:length], pos[None, :] <= pos[:, None], pos)


def run_block(block: TransformerBlock, x: torch.Tensor, ctx: BlockContext, batch: int = 8) -> torch.Tensor:
    """The block applied to every window of ``x`` [n, T, D], ``batch`` windows at a time (no KV cache)."""
    return torch.cat([block(x[i:i + batch], ctx.cos, ctx.sin, ctx.mask, ctx.pos) for i in range(0, len(x), batch)])


@torch.no_grad()
def embed_windows(model: Transformer, windows: torch.Tensor, device) -> torch.Tensor:
    """Inputs of block 0: [n, T, D] fp32 on ``device``."""
    return torch.cat([model.embed(w[None].to(device)).float() for w in windows])


@torch.no_grad()
def input_hessians(block: TransformerBlock, x: torch.Tensor, ctx: BlockContext,
                   names: list[str]) -> dict[str, torch.Tensor]:
    """H = sum over calibration tokens of x x^T for the input of each named Linear of ``block`` (fp32).

    The diagonal is the squared input-column norm Wanda uses; the whole matrix drives OBS/GPTQ.
    """
    hessians: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(mod, inp, out, name=name):
            a = inp[0].reshape(-1, inp[0].shape[-1]).float()
            h = a.T @ a
            hessians[name] = hessians[name] + h if name in hessians else h
        hooks.append(block.get_submodule(name).register_forward_hook(hook))
    try:
        run_block(block, x, ctx)
    finally:
        for h in hooks:
            h.remove()
    return hessians
