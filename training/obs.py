"""Second-order pruning and quantization of one Linear: group OBS + GPTQ, and the SparseGPT/GPTQ baselines.

With H = X^T X the Hessian of the layer's squared output error, removing a set S of a row's weights costs
w_S (H^-1_SS)^-1 w_S^T / 2 when the other weights move optimally (Optimal Brain Surgeon). GQSA's unit is a
whole block of G columns (x R rows), so the saliency is that group form, not a sum of per-weight terms.

One column sweep then does the pruning compensation and the quantization together (SparseGPT / GPTQ): the
columns are visited left to right, each becomes its quantized value (or 0 if pruned), and its error is
spread over the columns not yet visited through the Cholesky factor U of H^-1 (H^-1 = U^T U). Groups are
fitted when the sweep reaches their first column, on the already-compensated weights. With ``compensate``
off the same sweep is plain round-to-nearest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bsr import fit_groups, quantize


@dataclass
class Solution:
    """Result for one Linear: the weight to run (dequantized, pruned) and, if quantized, its integer form."""

    weight: torch.Tensor                 # [N, K] fp32
    mask: torch.Tensor                   # [N, K] bool, kept weights
    codes: torch.Tensor | None = None    # [N, K] float holding integers
    scale: torch.Tensor | None = None    # [N, K/G] fp32 (fp16-representable)
    zero: torch.Tensor | None = None     # [N, K/G] fp32 (integers)
    compensated: torch.Tensor | None = None  # [N, K] each column as the sweep saw it, before rounding:
    # round(compensated / scale + zero) gives the codes back, and it is off the grid, so a straight-through
    # quantizer started from it has a gradient for the scales (from the grid points that gradient is zero)


def inverse_hessian(h: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H^-1, U upper with H^-1 = U^T U, dead columns) in float64, after GPTQ's damping of the diagonal."""
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(percdamp * torch.diag(h).mean())
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return hinv, torch.linalg.cholesky(hinv, upper=True), dead


def group_obs_saliency(w: torch.Tensor, hinv: torch.Tensor, group: int, rows: int) -> torch.Tensor:
    """OBS cost of removing each R x G block on its own: [N/R, K/G], sum over its rows of w_S (H^-1_SS)^-1 w_S^T."""
    n, k = w.shape
    idx = torch.arange(k, device=w.device).view(k // group, group)
    inv_blocks = torch.linalg.inv(hinv[idx[:, :, None], idx[:, None, :]])      # [K/G, G, G]
    wb = w.double().view(n, k // group, group)
    s = torch.einsum("ncg,cgh,nch->nc", wb, inv_blocks, wb)
    return s.view(n // rows, rows, k // group).sum(1)


def wanda_scores(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||x_j||: Wanda's per-weight importance, [N, K]."""
    return w.abs().double() * torch.diag(h).double().clamp(min=0).sqrt()[None, :]


def block_sum(scores: torch.Tensor, group: int, rows: int) -> torch.Tensor:
    n, k = scores.shape
    return scores.reshape(n // rows, rows, k // group, group).sum((1, 3))


def select_blocks(scores: torch.Tensor, sparsity: float, allocation: str) -> torch.Tensor:
    """Keep-mask removing ``sparsity`` of the blocks: the same count in every block row ("row", what the decode
    kernel balances best) or the lowest scores across the whole matrix ("layer"); both hit the target."""
    nbr, nbc = scores.shape
    if allocation == "row":
        keep_n = round((1 - sparsity) * nbc)
        idx = scores.topk(keep_n, dim=1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    if allocation == "layer":
        keep_n = round((1 - sparsity) * nbr * nbc)
        idx = scores.flatten().topk(keep_n).indices
        return torch.zeros(nbr * nbc, dtype=torch.bool, device=scores.device).scatter_(0, idx, True).view(nbr, nbc)
    raise ValueError(f"unknown allocation {allocation!r} (row or layer)")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest of every m consecutive input columns of each row."""
    rows, k = scores.shape
    s = scores.reshape(rows, k // m, m)
    idx = s.topk(n, dim=-1).indices
    return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, k)


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's per-output-row comparison group: each row keeps its (1 - sparsity) highest weights."""
    keep_n = round((1 - sparsity) * scores.shape[1])
    idx = scores.topk(keep_n, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


@torch.no_grad()
def sweep(w: torch.Tensor, h: torch.Tensor | None, *, bits: int | None, group: int,
          mask: torch.Tensor | None = None, nm: tuple[int, int] | None = None, sparsity: float = 0.0,
          compensate: bool = True, percdamp: float = 0.01, blocksize: int = 128) -> Solution:
    """Prune and/or quantize ``w`` [N, K] in one left-to-right column sweep.

    The mask is either given (``mask`` [N, K] bool, e.g. from whole-block saliency) or chosen during the sweep
    from the compensated weights, SparseGPT-style: ``nm`` = (n, m) semi-structured, or ``sparsity`` > 0
    unstructured (each row's lowest w^2 / U_jj^2 within each chunk of ``blocksize`` columns). ``bits`` None keeps the kept weights in full precision.
    """
    n_out, k = w.shape
    w = w.float().clone()
    dev = w.device
    u = None
    if compensate:
        if h is None:
            raise ValueError("compensation needs the input Hessian")
        _, u, dead = inverse_hessian(h)
        u = u.float()
        w[:, dead] = 0
    elif (nm or sparsity) and mask is None:
        raise ValueError("a mask chosen during the sweep needs compensation (the Hessian)")
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.clone().to(dev)
    out = torch.zeros_like(w)
    seen = torch.zeros_like(w)
    codes = torch.zeros_like(w) if bits else None
    scale = torch.zeros(n_out, k // group, device=dev) if bits else None
    zero = torch.zeros(n_out, k // group, device=dev) if bits else None
    step = group * (nm[1] if nm else 1)
    blocksize = max(step, blocksize // step * step)
    for c0 in range(0, k, blocksize):
        c1 = min(c0 + blocksize, k)
        w1 = w[:, c0:c1].clone()
        err = torch.zeros_like(w1)
        d = torch.diag(u)[c0:c1] if compensate else None
        if sparsity and mask is None:
            keep[:, c0:c1] = unstructured_mask(w1.pow(2) / d.pow(2)[None, :], sparsity)
        for j in range(c1 - c0):
            col = c0 + j
            if nm and mask is None and j % nm[1] == 0:
                s = w1[:, j:j + nm[1]].pow(2) / d[j:j + nm[1]].pow(2)[None, :]
                keep[:, col:col + nm[1]] = nm_mask(s, *nm)
            if bits and col % group == 0:
                g = col // group
                scale[:, g], zero[:, g] = fit_groups(w1[:, j:j + group] * keep[:, col:col + group], bits)
            x = w1[:, j]
            seen[:, col] = x
            if bits:
                g = col // group
                codes[:, col] = quantize(x[:, None], scale[:, g], zero[:, g], bits)[:, 0]
                q = (codes[:, col] - zero[:, g]) * scale[:, g]
            else:
                q = x
            q = q * keep[:, col]
            out[:, col] = q
            if compensate:
                e = (x - q) / u[col, col]
                w1[:, j:] -= e[:, None] * u[col, col:c1][None, :]
                err[:, j] = e
        if compensate:
            w[:, c1:] -= err @ u[c0:c1, c1:]
    return Solution(out, keep, codes, scale, zero, seen)
