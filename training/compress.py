"""First GQSA compressor: calibration-aware group pruning plus round-to-nearest group quantization.

Importance of a block is Wanda's |W_ij| * ||x_j||_2 summed over the block's R x G weights, with
||x_j|| measured on calibration text. Blocks are kept per block row ("row": every row keeps the same count,
what the decode kernel balances best) or across the whole matrix ("layer"). Kept blocks are quantized
asymmetrically per 1 x G group. The full two-stage training (BQPO, E2E-OQP) builds on this.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from .bsr import BSRWeight, check_config, compress_matrix
from .checkpoint import linear_names, write_checkpoint
from .model import Transformer, load_dense

EMBED_GROUP = 32


def calibration_windows(tokenizer, text: str, count: int, length: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``length`` tokens from ``text`` -> LongTensor [count, length]."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if len(ids) < length + 1:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one window of {length}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (count,), generator=g)
    return torch.stack([ids[s:s + length] for s in starts])


@torch.no_grad()
def input_norms(model: Transformer, windows: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Squared L2 norm of each input column of each named Linear over the calibration tokens."""
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(mod, inp, out, name=name):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            sq[name] = sq.get(name, 0) + (x * x).sum(0)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        for w in tqdm(windows, desc="calibration", unit="window"):
            model(w[None])
    finally:
        for h in hooks:
            h.remove()
    return sq


def block_scores(w: torch.Tensor, col_sq: torch.Tensor, group: int, rows: int) -> torch.Tensor:
    """Wanda importance summed per block: [N/R, K/G]."""
    n, k = w.shape
    s = w.abs().double() * col_sq.sqrt()[None, :]
    return s.reshape(n // rows, rows, k // group, group).sum((1, 3))


def select_blocks(scores: torch.Tensor, sparsity: float, allocation: str) -> torch.Tensor:
    """Boolean keep-mask with ``sparsity`` of the blocks removed (rounded per row or per matrix)."""
    nbr, nbc = scores.shape
    if allocation == "row":
        keep_n = max(1, round((1 - sparsity) * nbc)) if sparsity < 1 else 0
        idx = scores.topk(keep_n, dim=1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    if allocation == "layer":
        keep_n = round((1 - sparsity) * nbr * nbc)
        idx = scores.flatten().topk(keep_n).indices
        return torch.zeros(nbr * nbc, dtype=torch.bool).scatter_(0, idx, True).view(nbr, nbc)
    raise ValueError(f"unknown allocation {allocation!r} (row or layer)")


def compress(model_dir: str | Path, out_dir: str | Path, *, sparsity: float = 0.5, bits: int = 4,
             group: int = 16, rows: int = 1, embed_bits: int = 8, allocation: str = "row",
             windows: torch.Tensor | None = None, seed: int = 0) -> Path:
    """Compress a Hugging Face LLaMA folder into a GQSA checkpoint (format v1).

    ``windows`` [count, length] are calibration token ids (see :func:`calibration_windows`).
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if embed_bits not in (4, 8):
        raise ValueError(f"unsupported embedding bits {embed_bits} (4 or 8)")
    t0 = time.time()
    model = load_dense(model_dir)
    names = linear_names(model.args)
    for name in names:
        check_config(tuple(model.get_submodule(name).weight.shape), bits, group, rows)
    col_sq = {}
    if sparsity > 0:
        if windows is None:
            raise ValueError("pruning needs calibration windows")
        col_sq = input_norms(model, windows, names)
    compressed: dict[str, BSRWeight] = {}
    for name in tqdm(names, desc="compress", unit="linear"):
        w = model.get_submodule(name).weight.detach()
        n, k = w.shape
        if sparsity > 0:
            keep = select_blocks(block_scores(w, col_sq[name], group, rows), sparsity, allocation)
        else:
            keep = torch.ones(n // rows, k // group, dtype=torch.bool)
        compressed[name] = compress_matrix(w, keep, bits, group, rows)
    # Embedding (and the tied lm_head): dense, quantized per 32 columns; symmetric int8 reproduces GGUF Q8_0.
    emb = model.embed_tokens.weight.detach()
    full = torch.ones(emb.shape[0], emb.shape[1] // EMBED_GROUP, dtype=torch.bool)
    compressed["embed_tokens"] = compress_matrix(emb, full, embed_bits, EMBED_GROUP, 1, symmetric=embed_bits == 8)
    if not model.args.tie_embeddings:
        compressed["lm_head"] = compress_matrix(model.lm_head.weight.detach(), full, embed_bits, EMBED_GROUP, 1,
                                                symmetric=embed_bits == 8)
    dense = {k: v for k, v in model.state_dict().items()
             if "norm" in k and k.endswith("weight")}
    kept = sum(compressed[n].nnzb * compressed[n].rows * compressed[n].group for n in names)
    total = sum(compressed[n].shape[0] * compressed[n].shape[1] for n in names)
    lin_bytes = sum(compressed[n].nbytes() for n in names)
    meta = {
        "method": "wanda-group+rtn", "bits": bits, "group": group, "rows": rows, "allocation": allocation,
        "target_sparsity": sparsity, "sparsity": round(1 - kept / total, 6), "embed_bits": embed_bits,
        "bytes_per_weight": round(lin_bytes / total, 6),
        "calibration": {"windows": windows.shape[0], "length": windows.shape[1], "seed": seed} if sparsity else None,
        "source": str(model_dir), "seconds": round(time.time() - t0, 1),
    }
    return write_checkpoint(out_dir, model_dir, dense, compressed, meta)
