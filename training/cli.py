"""``gqsa-compress`` and ``gqsa-eval``: user-facing commands, one-line errors for user mistakes."""
from __future__ import annotations

import argparse
import sys

from .assets import DEFAULT_MODEL


def _fail(prog: str, e: Exception) -> int:
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


def _text(path):
    from . import assets

    if path is None:
        return assets.load_text(assets.default_text_files()[0])
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such text file")
    return assets.load_text(path)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")


def _stages(value: str) -> tuple[str, ...]:
    """'bqpo' means up to and including bqpo; 'prune,bqpo' is accepted too."""
    from .compress import STAGES

    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in STAGES:
            raise argparse.ArgumentTypeError(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    return STAGES[:STAGES.index(names[-1]) + 1] if len(names) == 1 else tuple(names)


def compress_main(argv=None) -> int:
    from .bqpo import BQPOConfig
    from .e2e_oqp import E2EConfig
    from .methods import METHODS

    methods = "; ".join(f"{k}: {m.about}" for k, m in METHODS.items())
    p = argparse.ArgumentParser(
        prog="gqsa-compress", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Compress a Hugging Face LLaMA model. The default recipe (gqsa) is group OBS pruning + GPTQ, "
        "then BQPO (block-wise training), then E2E-OQP (end-to-end scale training); the result is a GQSA "
        "checkpoint (BSR int-k, docs/format.md) that gqsa-compile builds. Baseline methods run through the same "
        "driver; those that BSR cannot hold (N:M, unstructured fp16) write a plain HF folder for gqsa-eval. "
        "An interrupted run resumes from its per-block work folder (.OUTPUT.work beside the output).")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"HF LLaMA folder, or '{DEFAULT_MODEL}' (the embedded SmolLM2-135M)")
    p.add_argument("-o", "--output", required=True, help="folder to write")
    p.add_argument("--method", default="gqsa", choices=list(METHODS), metavar="METHOD", help=methods)
    p.add_argument("--stages", type=_stages, default=None,
                   help="last stage to run: prune, bqpo or e2e (default: e2e for gqsa, prune otherwise)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of blocks (or weights) pruned")
    p.add_argument("--bits", type=int, default=4, help="weight bits: 2, 3, 4 or 8")
    p.add_argument("--group", type=int, default=16, help="G: input columns per block and quantization group")
    p.add_argument("--rows", type=int, default=1, help="R: output rows per block: 1, 4, 8, 16")
    p.add_argument("--allocation", choices=["row", "layer"], default="row",
                   help="row: every block row keeps the same count; layer: ranked across the whole matrix")
    p.add_argument("--embed-bits", type=int, default=8, choices=[4, 8],
                   help="embedding / lm_head bits, groups of 32 (8: exact for the GGUF default)")
    p.add_argument("--device", default="cpu", help="torch device for the work: cpu, cuda, cuda:1 ...")
    p.add_argument("--calib", default=None, help="calibration text file (default: Wikipedia calibration split)")
    p.add_argument("--calib-windows", type=int, default=64, help="calibration windows")
    p.add_argument("--calib-length", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore (and replace) an interrupted run's work folder")
    b, e = BQPOConfig(), E2EConfig()
    g = p.add_argument_group("BQPO (stage bqpo)")
    g.add_argument("--bqpo-epochs", type=int, default=b.epochs)
    g.add_argument("--bqpo-lr-weight", type=float, default=b.lr_weight, help="x each Linear's weight RMS")
    g.add_argument("--bqpo-lr-quant", type=float, default=b.lr_quant, help="x each Linear's median scale")
    g.add_argument("--bqpo-batch", type=int, default=b.batch)
    g.add_argument("--bqpo-samples", type=int, default=None, help="windows used (default: all)")
    g = p.add_argument_group("E2E-OQP (stage e2e)")
    g.add_argument("--e2e-epochs", type=int, default=e.epochs)
    g.add_argument("--e2e-lr", type=float, default=e.lr, help="x each Linear's median scale")
    g.add_argument("--e2e-batch", type=int, default=e.batch)
    g.add_argument("--e2e-accum", type=int, default=e.accum, help="gradient accumulation steps")
    g.add_argument("--e2e-samples", type=int, default=None, help="windows used (default: all)")
    g.add_argument("--e2e-kl", action="store_true", help="KL to the full-precision model instead of next-token CE")
    a = p.parse_args(argv)
    from . import assets
    from .model import ModelArgs, ModelError

    try:
        from .bsr import check_config
        from .compress import CompressConfig, compress, work_path

        _check_device(a.device)
        cfg = CompressConfig(
            method=a.method, sparsity=a.sparsity, bits=a.bits, group=a.group, rows=a.rows,
            allocation=a.allocation, embed_bits=a.embed_bits, stages=a.stages, seed=a.seed, device=a.device,
            bqpo=BQPOConfig(a.bqpo_epochs, a.bqpo_lr_weight, a.bqpo_lr_quant, a.bqpo_batch, a.bqpo_samples),
            e2e=E2EConfig(a.e2e_epochs, a.e2e_lr, a.e2e_batch, a.e2e_accum, a.e2e_samples, a.e2e_kl))
        cfg.resolved_stages()
        check_config((a.rows, a.group), a.bits, a.group, a.rows)  # before any slow work
        model_dir = assets.resolve_model(a.model)
        ModelArgs.from_dir(model_dir)
        windows = None
        if cfg.needs_calibration:
            from transformers import AutoTokenizer

            from .calibration import calibration_windows

            tok = AutoTokenizer.from_pretrained(model_dir)
            windows = calibration_windows(tok, _text(a.calib), a.calib_windows, a.calib_length, a.seed)
        if a.fresh:
            import shutil

            shutil.rmtree(work_path(a.output), ignore_errors=True)
        out = compress(model_dir, a.output, cfg, windows)
    except (ModelError, assets.AssetError, FileNotFoundError, ValueError, OSError) as e:
        return _fail("gqsa-compress", e)
    except KeyboardInterrupt:
        print("\ngqsa-compress: interrupted; the same command resumes from the last finished block",
              file=sys.stderr)
        return 130
    import json

    meta_file = out / "gqsa.json" if (out / "gqsa.json").is_file() else out / "gqsa_baseline.json"
    meta = json.loads(meta_file.read_text())
    print(f"{'checkpoint' if meta_file.name == 'gqsa.json' else 'HF folder'}: {out}  ({a.method}, "
          f"stages {','.join(meta['stages'])}, W{meta['bits']} G{a.group} R{meta['rows']}, sparsity "
          f"{meta['sparsity']:.3f}, {meta['bits_per_weight']:.2f} bits/weight in the Linears, "
          f"{meta['total_seconds']:.0f} s)")
    return 0


def eval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gqsa-eval", description="Perplexity of a dense HF LLaMA folder or a "
                                "GQSA checkpoint (torch reference) on held-out text.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model folder or checkpoint")
    p.add_argument("--data", default=None, help="text file (default: held-out Wikipedia articles)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--stride", type=int, default=None, help="default: the window (non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda ...")
    a = p.parse_args(argv)
    from . import assets
    from .model import ModelError

    try:
        import torch
        from transformers import AutoTokenizer

        from .evaluate import load_any, perplexity

        model_dir = assets.resolve_model(a.model)
        _check_device(a.device)
        model = load_any(model_dir).to(a.device)
        data = a.data or assets.default_text_files()[1]
        text = _text(str(data))
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = torch.tensor(tok(text)["input_ids"])
        ppl, n = perplexity(model, ids, a.window, a.stride, a.max_windows)
    except (ModelError, assets.AssetError, FileNotFoundError, ValueError, OSError) as e:
        return _fail("gqsa-eval", e)
    print(f"perplexity {ppl:.3f} over {n} scored tokens (window {a.window}, stride {a.stride or a.window})")
    return 0
