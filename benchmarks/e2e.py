"""End-to-end check and timing of a compiled artifact through its deploy bundle (the GPU run of docs/perf.md).

Two halves, because the GPU host has no TVM compiler and the build host has no GPU:
  here:  python benchmarks/e2e.py reference CKPT --out ref.npz
         (torch reference logits for a fixed prompt, prefill and teacher-forced decode steps)
  GPU:   python3 benchmarks/e2e.py run BUNDLE --reference ref.npz --json out.json
         (runtime-only: the bundle's own tvm; logits error vs the reference, prefill and decode tokens/s)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = 16
STEPS = 8


def make_reference(ckpt: str, out: str, seed: int = 0) -> None:
    import torch

    from training.checkpoint import load_compressed

    model = load_compressed(ckpt)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.args.vocab_size, PROMPT + STEPS).astype(np.int32)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids[None]).long())[0].numpy()
    np.savez_compressed(out, ids=ids, logits=logits.astype(np.float32))
    print(f"reference: {out} ({PROMPT} prompt + {STEPS} decode tokens)")


def run(bundle: str, reference: str, out_json: str | None, prefill_len: int, decode_tokens: int) -> dict:
    sys.path[:0] = [str(Path(bundle) / "site"), str(Path(bundle))]
    from runtime.model import CompiledModel

    t0 = time.perf_counter()
    model = CompiledModel(Path(bundle) / "artifact")
    load_s = time.perf_counter() - t0
    ref = np.load(reference)
    ids, want = ref["ids"], ref["logits"]
    got = [model.prefill(ids[:PROMPT])]
    for i in range(PROMPT, PROMPT + STEPS):
        got.append(model.decode(int(ids[i]), i)[None])
    got = np.concatenate(got)[: len(want) - 1]
    want = want[: len(got)]
    err = np.abs(got - want).max()
    scale = np.abs(want).max()
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())

    rng = np.random.default_rng(1)
    prompt = rng.integers(0, model.manifest["model"]["vocab_size"], prefill_len).astype(np.int32)
    pre = []
    for _ in range(5):
        t = time.perf_counter()
        model.prefill(prompt)
        pre.append(time.perf_counter() - t)
    dec = []
    tok = int(prompt[-1])
    for i in range(decode_tokens):
        t = time.perf_counter()
        tok = int(np.argmax(model.decode(tok, prefill_len + i)))
        dec.append(time.perf_counter() - t)
    res = {
        "device": str(model.dev), "target": model.manifest["target"], "archs": model.manifest["archs"],
        "load_s": round(load_s, 3),
        "logits_max_abs_err": float(err), "logits_max_abs_ref": float(scale),
        "logits_rel_err": float(err / scale), "top1_agreement": top1,
        "prefill_tokens": prefill_len, "prefill_ms_median": 1e3 * float(np.median(pre)),
        "prefill_tok_s": prefill_len / float(np.median(pre)),
        "decode_tokens": decode_tokens, "decode_ms_median": 1e3 * float(np.median(dec[3:])),
        "decode_tok_s": 1.0 / float(np.median(dec[3:])),
        "bundle_mib": round(sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file()) / 2**20, 1),
    }
    print(f"{'metric':<24}{'value':>14}")
    for k, v in res.items():
        print(f"{k:<24}{v:>14.4g}" if isinstance(v, float) else f"{k:<24}{str(v):>14}")
    if out_json:
        Path(out_json).write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("ckpt")
    r.add_argument("--out", required=True)
    g = sub.add_parser("run")
    g.add_argument("bundle")
    g.add_argument("--reference", required=True)
    g.add_argument("--json", default=None)
    g.add_argument("--prefill-len", type=int, default=128)
    g.add_argument("--decode-tokens", type=int, default=64)
    a = p.parse_args()
    if a.cmd == "reference":
        make_reference(a.ckpt, a.out)
    else:
        run(a.bundle, a.reference, a.json, a.prefill_len, a.decode_tokens)


if __name__ == "__main__":
    main()
