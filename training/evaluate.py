"""Perplexity of a dense or a compressed checkpoint on held-out text (``gqsa-eval``)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm


def load_any(model_dir: str | Path):
    """Our Transformer for a GQSA checkpoint (has gqsa.json) or a plain HF LLaMA folder."""
    from .checkpoint import load_compressed
    from .model import load_dense

    return load_compressed(model_dir) if (Path(model_dir) / "gqsa.json").is_file() else load_dense(model_dir)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int = 1024, stride: int | None = None,
               max_windows: int | None = None) -> tuple[float, int]:
    """Sliding-window perplexity; each token is scored once, with up to ``window - stride`` tokens of context.

    Returns (perplexity, number of scored tokens).
    """
    stride = stride or window
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in (0, window], got {stride}")
    device = next(model.buffers()).device
    nll, scored, prev_end = 0.0, 0, 0
    starts = list(range(0, max(1, len(ids) - 1), stride))
    if max_windows:
        starts = starts[:max_windows]
    for begin in tqdm(starts, desc="perplexity", unit="window"):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        new = end - max(prev_end, begin + 1)  # tokens not scored yet (the first token has no context)
        if new <= 0 or len(chunk) < 2:
            break
        chunk = chunk.to(device)
        logits = model(chunk[None])[0, :-1].float()
        targets = chunk[1:]
        loss = F.cross_entropy(logits[-new:], targets[-new:], reduction="sum")
        nll += loss.item()
        scored += new
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / scored), scored
