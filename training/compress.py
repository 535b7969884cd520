"""The compression driver: one pass over the transformer blocks, then the end-to-end stage.

For each block, in order (memory: one block plus the calibration activations entering it):
  prune  input Hessians on what the compressed model so far produces (true-sequential inside the block:
         o_proj's inputs come from the compressed q/k/v, down_proj's from the compressed gate/up), then per
         Linear the method's mask and the OBS/GPTQ sweep (or round-to-nearest);
  bqpo   the block trained towards the full-precision block's output (training/bqpo.py);
then, over the whole model:
  e2e    only the scales trained on next-token loss (training/e2e_oqp.py).
Each finished block is saved in a work folder beside the output, so an interrupted run resumes where it
stopped and ends with the same result; the folder is removed once the output is written.
"""
from __future__ import annotations

import copy
import hashlib
import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .bqpo import BQPOConfig, train_block
from .bsr import BSRLinear, BSRWeight, check_config, compress_matrix, dequantize
from .calibration import BlockContext, embed_windows, input_hessians, run_block
from .checkpoint import linear_names, write_checkpoint, write_dense
from .e2e_oqp import E2EConfig, train_scales
from .methods import Method, bits_per_weight, get_method
from .model import Transformer, load_dense
from .obs import block_sum, group_obs_saliency, inverse_hessian, nm_mask, select_blocks, sweep, \
    unstructured_mask, wanda_scores
from .qlinear import QuantLinear

STAGES = ("prune", "bqpo", "e2e")
EMBED_GROUP = 32
SEQUENTIAL = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
BLOCK_LINEARS = [n for names in SEQUENTIAL for n in names]


@dataclass
class CompressConfig:
    method: str = "gqsa"
    sparsity: float = 0.5
    bits: int = 4
    group: int = 16
    rows: int = 1
    allocation: str = "row"
    embed_bits: int = 8
    stages: tuple[str, ...] | None = None  # None: the method's default (all three for gqsa, prune otherwise)
    bqpo: BQPOConfig = field(default_factory=BQPOConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    seed: int = 0
    device: str = "cpu"

    def resolved_stages(self) -> tuple[str, ...]:
        m = get_method(self.method)
        stages = self.stages or (STAGES if self.method == "gqsa" else ("prune",))
        if tuple(stages) != STAGES[:len(stages)]:
            raise ValueError(f"stages run in order {','.join(STAGES)}; got {','.join(stages)}")
        if len(stages) > 1 and not m.bsr:
            raise ValueError(f"method {self.method} keeps fp16 weights: only the prune stage applies")
        return tuple(stages)

    @property
    def needs_calibration(self) -> bool:
        """Pruning, compensation and training all read calibration activations; dense RTN does not."""
        m = get_method(self.method)
        return m.prunes or m.compensate or len(self.resolved_stages()) > 1

    @property
    def block_rows(self) -> int:
        """R of the stored blocks: the option for group patterns; dense int-k is stored as 1 x G blocks."""
        return self.rows if get_method(self.method).pattern == "group" else 1

    def validate(self, shapes: list[tuple[int, int]]) -> None:
        m = get_method(self.method)
        self.resolved_stages()
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.allocation not in ("row", "layer"):
            raise ValueError(f"unknown allocation {self.allocation!r} (row or layer)")
        if self.embed_bits not in (4, 8):
            raise ValueError(f"unsupported embedding bits {self.embed_bits} (4 or 8)")
        for shape in shapes:
            check_config(shape, self.bits, self.group, self.block_rows)
            if m.nm and shape[1] % m.nm[1]:
                raise ValueError(f"{shape[1]} input columns do not split into groups of {m.nm[1]}")


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def solve_linear(w: torch.Tensor, h: torch.Tensor, m: Method, cfg: CompressConfig):
    """One Linear: (Solution, block keep-mask [N/R, K/G] or None)."""
    bits = cfg.bits if m.quantized else None
    rows = cfg.block_rows
    keep_blocks, mask, nm, sparsity = None, None, None, 0.0
    if m.pattern == "group":
        if m.score == "obs":
            scores = group_obs_saliency(w, inverse_hessian(h)[0].to(w.device), cfg.group, rows)
        else:
            scores = block_sum(wanda_scores(w, h) if m.score == "wanda" else w.abs(), cfg.group, rows)
        keep_blocks = select_blocks(scores, cfg.sparsity, cfg.allocation) if cfg.sparsity else \
            torch.ones_like(scores, dtype=torch.bool)
        mask = keep_blocks.repeat_interleave(rows, 0).repeat_interleave(cfg.group, 1)
    elif m.pattern == "dense":
        keep_blocks = torch.ones(w.shape[0], w.shape[1] // cfg.group, dtype=torch.bool, device=w.device)
    elif m.score == "obs":  # SparseGPT: mask chosen during the sweep
        nm, sparsity = m.nm, (0.0 if m.nm else cfg.sparsity)
    else:
        s = wanda_scores(w, h)
        mask = nm_mask(s, *m.nm) if m.nm else unstructured_mask(s, cfg.sparsity)
    sol = sweep(w, h, bits=bits, group=cfg.group, mask=mask, nm=nm, sparsity=sparsity, compensate=m.compensate)
    return sol, keep_blocks


def _fingerprint(model_dir, cfg: CompressConfig, windows: torch.Tensor) -> str:
    d = {k: v for k, v in asdict(cfg).items() if k not in ("device",)}
    d["e2e"] = None  # the block work does not depend on the end-to-end options
    h = hashlib.sha256(json.dumps([str(Path(model_dir).resolve()), d], sort_keys=True, default=str).encode())
    h.update(windows.numpy().tobytes())
    return h.hexdigest()[:16]


def work_path(out_dir: str | Path) -> Path:
    """Where an unfinished run keeps its finished blocks: a hidden sibling of the output."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.work"


class WorkDir:
    """Per-block results of an unfinished run (torch.save, atomic rename), tied to the run's fingerprint."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        stamp = path / "fingerprint"
        if path.exists() and stamp.is_file() and stamp.read_text() != fingerprint:
            raise ValueError(f"{path} holds an interrupted run with other options or data: rerun with the same "
                             "options to resume, or delete it")
        path.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)

    def block(self, i: int) -> Path:
        return self.path / f"block_{i:03d}.pt"

    def save(self, i: int, obj) -> None:
        tmp = self.path / f".block_{i:03d}.tmp"
        torch.save(obj, tmp)
        tmp.rename(self.block(i))


def _quantize_embeddings(model: Transformer, bits: int) -> dict[str, BSRWeight]:
    """Dense 8-bit (or 4-bit) groups of 32 for the embedding and an untied lm_head; the model then runs the
    dequantized values, so every later stage sees what will be deployed. Symmetric int8 reproduces GGUF Q8_0."""
    out = {}
    mods = {"embed_tokens": model.embed_tokens}
    if not model.args.tie_embeddings:
        mods["lm_head"] = model.lm_head
    for name, mod in mods.items():
        w = mod.weight.detach()
        full = torch.ones(w.shape[0], w.shape[1] // EMBED_GROUP, dtype=torch.bool)
        out[name] = compress_matrix(w, full, bits, EMBED_GROUP, 1, symmetric=bits == 8)
        mod.weight.data = dequantize(out[name])
    return out


def _set(block, name: str, module) -> None:
    parent, attr = name.rsplit(".", 1)
    setattr(block.get_submodule(parent), attr, module)


def _shell(lin, cfg: CompressConfig) -> QuantLinear:
    """An empty QuantLinear of the right shapes, for a saved block's state to load into."""
    n, k = lin.weight.shape
    rows = cfg.block_rows
    z = torch.zeros(n, k // cfg.group)
    return QuantLinear(lin.weight.detach(), z, z, torch.zeros(n // rows, k // cfg.group, dtype=torch.bool),
                       cfg.bits, cfg.group, rows)


def as_stored(model: Transformer) -> Transformer:
    """A copy that runs exactly what the checkpoint will hold (fp16 scales, integer codes), as load_compressed
    would give it: every QuantLinear becomes a BSRLinear of its packed form."""
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        if isinstance(mod, QuantLinear):
            _set(out, name, BSRLinear(mod.to_bsr()))
    return out


def run(model_dir: str | Path, cfg: CompressConfig, windows: torch.Tensor | None,
        work: WorkDir | None = None, on_stage=None) -> tuple[Transformer, dict, dict[str, BSRWeight]]:
    """Compress in memory: (the compressed torch model, metadata, embedding BSR weights).

    ``on_stage(stage, model)`` is called after the block stages and after e2e (the ablation evaluates there).
    """
    m = get_method(cfg.method)
    stages = cfg.resolved_stages()
    dev = torch.device(cfg.device)
    model = load_dense(model_dir)
    cfg.validate([tuple(model.get_submodule(n).weight.shape) for n in linear_names(model.args)])
    needs_data = cfg.needs_calibration
    if needs_data and windows is None:
        raise ValueError(f"method {cfg.method} needs calibration windows")
    embeddings = _quantize_embeddings(model, cfg.embed_bits)
    stats: dict = {"blocks": [], "seconds": {s: 0.0 for s in stages}, "peak_mb": {}}
    if not needs_data:
        windows = torch.zeros(1, 2, dtype=torch.long)
    model.rope_cos, model.rope_sin = model.rope_cos.to(dev), model.rope_sin.to(dev)
    ctx = BlockContext.for_model(model, windows.shape[1])
    x_q = embed_windows(model, windows, "cpu").to(dev) if needs_data else None
    x_fp = x_q.clone() if "bqpo" in stages else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, block in enumerate(tqdm(model.layers, desc=f"{cfg.method} blocks", unit="block")):
        block.to(dev)
        fp_block = copy.deepcopy(block) if x_fp is not None else None
        saved = work.block(i) if work else None
        y_fp = None
        if saved is not None and saved.is_file():
            state = torch.load(saved, map_location=dev, weights_only=False)
            if m.bsr:
                for name in BLOCK_LINEARS:
                    _set(block, name, _shell(block.get_submodule(name), cfg))
            block.load_state_dict(state["block"])
            block.to(dev)
            stats["blocks"].append(state["stats"])
        else:
            st = {"block": i}
            t0 = time.time()
            for names in SEQUENTIAL:  # each group's Hessians see the already-compressed Linears before it
                hess = input_hessians(block, x_q, ctx, names) if needs_data else {}
                for name in names:
                    lin = block.get_submodule(name)
                    sol, keep = solve_linear(lin.weight.detach(), hess.get(name), m, cfg)
                    if m.bsr:
                        _set(block, name, QuantLinear(sol.compensated, sol.scale, sol.zero, keep, cfg.bits,
                                                      cfg.group, cfg.block_rows).to(dev))
                    else:
                        lin.weight.data = sol.weight.half().float() if not m.quantized else sol.weight
                del hess
            stats["seconds"]["prune"] += time.time() - t0
            if "bqpo" in stages:
                t0 = time.time()
                with torch.no_grad():
                    y_fp = run_block(fp_block, x_fp, ctx)
                st["bqpo_mse"] = train_block(block, x_q, y_fp, ctx, cfg.bqpo, seed=cfg.seed * 1000 + i)
                stats["seconds"]["bqpo"] += time.time() - t0
            stats["blocks"].append(st)
            if work:
                work.save(i, {"block": block.state_dict(), "stats": st})
        with torch.no_grad():
            if x_fp is not None:
                x_fp = y_fp if y_fp is not None else run_block(fp_block, x_fp, ctx)
            if x_q is not None and i + 1 < len(model.layers):
                x_q = run_block(block, x_q, ctx)
        block.cpu()
    stats["peak_mb"]["blocks"] = round(_peak_mb(cfg.device), 1)
    del x_q, x_fp
    if on_stage:
        on_stage([s for s in stages if s != "e2e"][-1], model)
    if "e2e" in stages:
        t0 = time.time()
        model.to(dev)
        teacher = load_dense(model_dir).to(dev) if cfg.e2e.kl else None
        if teacher is not None:
            _quantize_embeddings(teacher, cfg.embed_bits)
        stats["e2e_loss"] = train_scales(model, windows, cfg.e2e, seed=cfg.seed, teacher=teacher)
        stats["seconds"]["e2e"] = time.time() - t0
        stats["peak_mb"]["e2e"] = round(_peak_mb(cfg.device), 1)
        model.cpu()
        if on_stage:
            on_stage("e2e", model)
    model.cpu()
    model.rope_cos, model.rope_sin = model.rope_cos.cpu(), model.rope_sin.cpu()
    stats["seconds"] = {k: round(v, 1) for k, v in stats["seconds"].items()}
    calib = {"windows": windows.shape[0], "length": windows.shape[1]} if needs_data else None
    meta = {"method": cfg.method, "stages": list(stages), "bits": cfg.bits if m.quantized else 16,
            "group": cfg.group, "rows": cfg.block_rows, "allocation": cfg.allocation,
            "target_sparsity": cfg.sparsity if m.pattern in ("group", "unstructured") else
            (1 - m.nm[0] / m.nm[1] if m.nm else 0.0),
            "embed_bits": cfg.embed_bits, "calibration": calib, "seed": cfg.seed, "device": cfg.device,
            "bqpo": asdict(cfg.bqpo) if "bqpo" in stages else None,
            "e2e": asdict(cfg.e2e) if "e2e" in stages else None, **stats}
    return model.eval(), meta, embeddings


def linear_stats(model: Transformer, m: Method, cfg: CompressConfig) -> dict:
    """Measured sparsity and storage of the Linears (BSR: real bytes; others: the format's formula)."""
    names = linear_names(model.args)
    total = kept = nbytes = 0
    for name in names:
        mod = model.get_submodule(name)
        w = mod.quantized_weight() if isinstance(mod, QuantLinear) else mod.weight
        total += w.numel()
        kept += int(mod.element_mask().sum()) if isinstance(mod, QuantLinear) else int((w != 0).sum())
        if isinstance(mod, QuantLinear):
            nbytes += mod.to_bsr().nbytes()
    sparsity = 1 - kept / total
    bpw = 8 * nbytes / total if m.bsr else bits_per_weight(m, sparsity=sparsity, bits=cfg.bits, group=cfg.group)
    stats = {"sparsity": round(sparsity, 6)}
    if m.pattern == "dense":  # a dense int-k format needs no block indices; BSR storage of it does
        stats["bsr_bits_per_weight"] = round(bpw, 4)
        bpw = bits_per_weight(m, sparsity=0.0, bits=cfg.bits, group=cfg.group)
    return {**stats, "bits_per_weight": round(bpw, 4), "bytes_per_weight": round(bpw / 8, 6)}


def compress(model_dir: str | Path, out_dir: str | Path, cfg: CompressConfig | None = None,
             windows: torch.Tensor | None = None, *, resume: bool = True, **overrides) -> Path:
    """Compress a Hugging Face LLaMA folder into ``out_dir``: a GQSA checkpoint (BSR methods) or an HF folder.

    ``windows`` [count, length] are calibration token ids (training.calibration.calibration_windows).
    Keyword overrides set CompressConfig fields (``sparsity=0.3``...).
    """
    cfg = copy.deepcopy(cfg) if cfg else CompressConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"unknown option {k}")
        setattr(cfg, k, v)
    m = get_method(cfg.method)
    out_dir = Path(out_dir)
    t0 = time.time()
    work = None
    if resume and windows is not None:
        work = WorkDir(work_path(out_dir), _fingerprint(model_dir, cfg, windows))
    try:
        model, meta, embeddings = run(model_dir, cfg, windows, work)
    except BaseException:
        if work and not any(work.path.glob("block_*.pt")):  # nothing to resume from: leave nothing behind
            shutil.rmtree(work.path, ignore_errors=True)
        raise
    meta.update(linear_stats(model, m, cfg))
    meta.update(source=str(model_dir), total_seconds=round(time.time() - t0, 1))
    if m.bsr:
        compressed = {n: model.get_submodule(n).to_bsr() for n in linear_names(model.args)}
        compressed.update(embeddings)
        dense = {k: v for k, v in model.state_dict().items() if "norm" in k and k.endswith("weight")}
        write_checkpoint(out_dir, model_dir, dense, compressed, meta)
    else:
        write_dense(out_dir, model_dir, model, meta)
    if work:
        shutil.rmtree(work.path, ignore_errors=True)
    return out_dir
