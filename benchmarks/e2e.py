"""End-to-end check and timing of a compiled artifact through its deploy bundle (the GPU run of docs/perf.md).

Two halves, because the GPU host has no TVM compiler and the build host has no GPU:
  here:  python benchmarks/e2e.py reference CKPT --out ref.npz [--prompt N]
         (torch reference logits for a fixed prompt of N tokens, default 16, prefill and teacher-forced decode
         steps; a prompt past 128 tokens checks sm_90a's wgmma prefill in the model)
  GPU:   python3 benchmarks/e2e.py run BUNDLE --reference ref.npz --json out.json
         (runtime-only: the bundle's own tvm; logits error vs the reference, prefill and decode tokens/s)
  A/B:   ... run BUNDLE --reference ref.npz --artifact A --artifact B   (several artifacts, one process,
         side by side with the ratio A / B; e.g. with and without CUDA graphs, gqsa-compile --no-cuda-graph)
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


def make_reference(ckpt: str, out: str, prompt: int = PROMPT, seed: int = 0) -> None:
    import torch

    from training.checkpoint import load_compressed

    model = load_compressed(ckpt)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.args.vocab_size, prompt + STEPS).astype(np.int32)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids[None]).long())[0].numpy()
    np.savez_compressed(out, ids=ids, logits=logits.astype(np.float32), prompt=prompt)
    print(f"reference: {out} ({prompt} prompt + {STEPS} decode tokens)")


def measure(model, reference: str, prefill_len: int, decode_tokens: int) -> dict:
    """Logits against the torch reference, then prefill and decode timed per call from Python."""
    ref = np.load(reference)
    ids, want = ref["ids"], ref["logits"]
    n = int(ref["prompt"]) if "prompt" in ref else PROMPT
    got = [model.prefill(ids[:n])]
    for i in range(n, n + STEPS):
        got.append(model.decode(int(ids[i]), i)[None])
    got = np.concatenate(got)[: len(want) - 1]
    want = want[: len(got)]
    err = np.abs(got - want).max()
    scale = np.abs(want).max()
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())

    rng = np.random.default_rng(1)
    prompt = rng.integers(0, model.manifest["model"]["vocab_size"], prefill_len).astype(np.int32)
    pre = []
    for _ in range(5):  # as generation prefills: only the last position's logits come back
        t = time.perf_counter()
        model.prefill(prompt, last=True)
        pre.append(time.perf_counter() - t)
    dec = []
    tok = int(prompt[-1])
    for i in range(decode_tokens):
        t = time.perf_counter()
        tok = int(np.argmax(model.decode(tok, prefill_len + i)))
        dec.append(time.perf_counter() - t)
    return {
        "device": str(model.dev), "target": model.manifest["target"], "archs": model.manifest["archs"],
        "cuda_graph": model.manifest.get("cuda_graph", False),
        "logits_max_abs_err": float(err), "logits_max_abs_ref": float(scale),
        "logits_rel_err": float(err / scale), "top1_agreement": top1, "reference_prompt": n,
        "prefill_tokens": prefill_len, "prefill_last_logits_only": True, "prefill_ms_median": 1e3 * float(np.median(pre)),
        "prefill_tok_s": prefill_len / float(np.median(pre)),
        "decode_tokens": decode_tokens, "decode_ms_median": 1e3 * float(np.median(dec[3:])),
        "decode_tok_s": 1.0 / float(np.median(dec[3:])),
    }


def run(bundle: str, reference: str, out_json: str | None, prefill_len: int, decode_tokens: int,
        artifacts: list[str] | None = None) -> list[dict]:
    """Each artifact (the bundle's own by default) loaded with the bundle's runtime and measured in turn; with
    several, a last column gives each metric of the first artifact divided by the second's."""
    sys.path[:0] = [str(Path(bundle) / "site"), str(Path(bundle))]
    from runtime.model import CompiledModel

    bundle_mib = round(sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file()) / 2**20, 1)
    rows = []
    for art in artifacts or [str(Path(bundle) / "artifact")]:
        t0 = time.perf_counter()
        model = CompiledModel(art)
        load_s = time.perf_counter() - t0
        rows.append({"artifact": Path(art).name, "load_s": round(load_s, 3),
                     **measure(model, reference, prefill_len, decode_tokens), "bundle_mib": bundle_mib})
        del model
    ratio = len(rows) > 1

    def cell(v) -> str:
        return f"{v:>16.4g}" if isinstance(v, float) else f"{str(v):>16}"

    print(f"{'metric':<24}" + "".join(f"{r['artifact']:>16}" for r in rows) + (f"{'first / second':>16}" if ratio else ""))
    for k in rows[0]:
        vals = [r[k] for r in rows]
        line = f"{k:<24}" + "".join(cell(v) for v in vals)
        if ratio and all(isinstance(v, float) for v in vals[:2]) and vals[1]:
            line += f"{vals[0] / vals[1]:>16.3f}"
        print(line)
    if out_json:
        Path(out_json).write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("ckpt")
    r.add_argument("--out", required=True)
    r.add_argument("--prompt", type=int, default=PROMPT, help=f"prompt tokens (default {PROMPT})")
    g = sub.add_parser("run")
    g.add_argument("bundle")
    g.add_argument("--reference", required=True)
    g.add_argument("--json", default=None)
    g.add_argument("--prefill-len", type=int, default=128)
    g.add_argument("--decode-tokens", type=int, default=64)
    g.add_argument("--artifact", action="append", default=None,
                   help="artifact folder to measure with the bundle's runtime, repeatable (default: the bundle's)")
    a = p.parse_args()
    if a.cmd == "reference":
        make_reference(a.ckpt, a.out, a.prompt)
    else:
        run(a.bundle, a.reference, a.json, a.prefill_len, a.decode_tokens, a.artifact)


if __name__ == "__main__":
    main()
