"""``gqsa-compress`` and ``gqsa-eval``: user-facing commands, one-line errors for user mistakes."""
from __future__ import annotations

import argparse
import sys

from .assets import DEFAULT_MODEL


def _fail(prog: str, e: Exception) -> int:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2


def _text(path):
    from . import assets

    if path is None:
        return assets.load_text(assets.default_text_files()[0])
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such text file")
    return assets.load_text(path)


def compress_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gqsa-compress", description="Group-prune and quantize a Hugging Face "
                                "LLaMA model into a GQSA checkpoint (BSR int-k, docs/format.md).")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"HF LLaMA folder, or '{DEFAULT_MODEL}' (default: the embedded SmolLM2-135M)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of blocks pruned (default 0.5)")
    p.add_argument("--bits", type=int, default=4, help="weight bits: 2, 3, 4 or 8 (default 4)")
    p.add_argument("--group", type=int, default=16, help="G: input columns per block / quant group (default 16)")
    p.add_argument("--rows", type=int, default=1, help="R: output rows per block: 1, 4, 8, 16 (default 1)")
    p.add_argument("--allocation", choices=["row", "layer"], default="row",
                   help="row: every block row keeps the same count (default); layer: ranked across the matrix")
    p.add_argument("--embed-bits", type=int, default=8, choices=[4, 8],
                   help="embedding / lm_head bits, groups of 32 (default 8: exact for the GGUF default)")
    p.add_argument("--calib", default=None, help="calibration text file (default: Wikipedia calibration split)")
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--calib-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from . import assets
    from .bsr import check_config
    from .model import ModelArgs, ModelError

    try:
        model_dir = assets.resolve_model(a.model)
        ModelArgs.from_dir(model_dir)
        check_config((a.rows * 1, a.group), a.bits, a.group, a.rows)
        windows = None
        if a.sparsity > 0:
            from transformers import AutoTokenizer

            from .compress import calibration_windows

            tok = AutoTokenizer.from_pretrained(model_dir)
            windows = calibration_windows(tok, _text(a.calib), a.calib_windows, a.calib_length, a.seed)
        from .compress import compress

        out = compress(model_dir, a.output, sparsity=a.sparsity, bits=a.bits, group=a.group, rows=a.rows,
                       embed_bits=a.embed_bits, allocation=a.allocation, windows=windows, seed=a.seed)
    except (ModelError, assets.AssetError, FileNotFoundError, ValueError, OSError) as e:
        return _fail("gqsa-compress", e)
    import json

    meta = json.loads((out / "gqsa.json").read_text())
    print(f"checkpoint: {out}  (W{a.bits} G{a.group} R{a.rows}, sparsity {meta['sparsity']:.3f}, "
          f"{meta['bytes_per_weight']:.3f} bytes/weight in the Linears)")
    return 0


def eval_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gqsa-eval", description="Perplexity of a dense HF LLaMA folder or a "
                                "GQSA checkpoint (torch reference) on held-out text.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model folder or checkpoint")
    p.add_argument("--data", default=None, help="text file (default: held-out Wikipedia articles)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--stride", type=int, default=None, help="default: the window (non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None)
    a = p.parse_args(argv)
    from . import assets
    from .model import ModelError

    try:
        import torch
        from transformers import AutoTokenizer

        from .evaluate import load_any, perplexity

        model_dir = assets.resolve_model(a.model)
        model = load_any(model_dir)
        data = a.data or assets.default_text_files()[1]
        text = _text(str(data))
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = torch.tensor(tok(text)["input_ids"])
        ppl, n = perplexity(model, ids, a.window, a.stride, a.max_windows)
    except (ModelError, assets.AssetError, FileNotFoundError, ValueError, OSError) as e:
        return _fail("gqsa-eval", e)
    print(f"perplexity {ppl:.3f} over {n} scored tokens (window {a.window}, stride {a.stride or a.window})")
    return 0
