"""Quality of GQSA and its baselines on SmolLM2-135M: perplexity on held-out Wikipedia articles.

Every row goes through the same driver as ``gqsa-compress`` (training.compress.run) on the same model,
calibration windows and held-out tokens, and is evaluated as it would be stored (training.compress.as_stored).
Three steps, because the GPU host has no tokenizer data and the build host has no GPU:

  here:  python benchmarks/quality.py prepare -o out/quality_data.pt      (token ids: calibration + held-out)
  GPU:   python3 benchmarks/quality.py run --data quality_data.pt --device cuda --json rows.json [--only ...]
  here:  python benchmarks/quality.py report rows.json[=NOTE] ...  -> benchmarks/results/quality.json and the
         table in docs/quality.md (between its <!-- table --> markers; the text around it is written by hand)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, CompressConfig fields, what the row tests). GQSA rows run the whole recipe; "gqsa W4S50" is also
# evaluated after each stage (the ablation).
ROWS = [
    ("rtn W4 g16", dict(method="rtn", bits=4), "int4 alone (not lossless: integer zero points cannot hold Q4_1's "
     "float minimum)"),
    ("gptq W4 g16", dict(method="gptq", bits=4), "int4 alone, with GPTQ"),
    ("rtn W3 g16", dict(method="rtn", bits=3), "dense 3-bit"),
    ("gptq W3 g16", dict(method="gptq", bits=3), "dense 3-bit"),
    ("rtn W2 g16", dict(method="rtn", bits=2), "dense 2-bit: the W2 baseline"),
    ("gptq W2 g16", dict(method="gptq", bits=2), "dense 2-bit: the W2 baseline"),
    ("rtn W2 g32", dict(method="rtn", bits=2, group=32), "dense 2-bit"),
    ("gptq W2 g32", dict(method="gptq", bits=2, group=32), "dense 2-bit"),
    ("magnitude-group W4S50", dict(method="magnitude-group"), "group pruning by block magnitude, RTN"),
    ("wanda-group W4S50", dict(method="wanda-group"), "GQSA ablation step 0: importance + RTN"),
    ("wanda 2:4", dict(method="wanda-2:4"), "2:4 fp16"),
    ("sparsegpt 2:4", dict(method="sparsegpt-2:4"), "2:4 fp16"),
    ("wanda 4:8", dict(method="wanda-4:8"), "4:8 fp16"),
    ("sparsegpt 4:8", dict(method="sparsegpt-4:8"), "4:8 fp16"),
    ("wanda 50% unstructured", dict(method="wanda-unstructured"), "unstructured fp16"),
    ("sparsegpt 50% + W4", dict(method="sparsegpt-unstructured"), "unstructured + int4"),
    ("gqsa W4S50 one-shot", dict(method="gqsa", stages=("prune",)), "GQSA ablation step 1: + group OBS / GPTQ"),
    ("gqsa W4S50", dict(method="gqsa"), "the headline configuration (steps 2, 3: + BQPO, + E2E-OQP)"),
    ("gqsa W4S50 long", dict(method="gqsa", bqpo=dict(epochs=4), e2e=dict(epochs=4)), "4x the training"),
    ("gqsa W4S50 kl", dict(method="gqsa", e2e=dict(kl=True)), "E2E-OQP on KL to the model"),
    ("gqsa W4S30", dict(method="gqsa", sparsity=0.3), "sparsity"),
    ("gqsa W4S60", dict(method="gqsa", sparsity=0.6), "sparsity"),
    ("gqsa W3S50", dict(method="gqsa", bits=3), "bits"),
    ("gqsa W8S50", dict(method="gqsa", bits=8), "pruning alone (8-bit is near lossless)"),
    ("gqsa W4S50 R4", dict(method="gqsa", rows=4), "block height: the price of tensor-core tiles"),
    ("gqsa W4S50 R8", dict(method="gqsa", rows=8), "block height"),
    ("gqsa W4S50 R16", dict(method="gqsa", rows=16), "block height"),
    ("gqsa W4S50 layer", dict(method="gqsa", allocation="layer"), "per-layer instead of row-balanced allocation"),
]


def prepare(out: str, count: int, length: int, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from training import assets
    from training.calibration import calibration_windows

    model_dir = assets.default_model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    calib, held = assets.default_text_files()
    windows = calibration_windows(tok, assets.load_text(calib), count, length, seed)
    heldout = torch.tensor(tok(assets.load_text(held))["input_ids"], dtype=torch.long)
    torch.save({"windows": windows, "heldout": heldout, "seed": seed}, out)
    print(f"{out}: {count} calibration windows x {length} tokens, {len(heldout)} held-out tokens")


def run(data: str, device: str, out_json: str, only: list[str] | None, window: int, bqpo_epochs: int | None,
        e2e_epochs: int | None, max_windows: int | None = None) -> None:
    import torch

    from training import assets
    from training.bqpo import BQPOConfig
    from training.compress import CompressConfig, as_stored, linear_stats
    from training.e2e_oqp import E2EConfig
    from training.compress import run as compress_run
    from training.evaluate import perplexity
    from training.methods import get_method
    from training.model import load_dense

    d = torch.load(data)
    windows, heldout = d["windows"], d["heldout"]
    model_dir = assets.default_model_dir()
    results = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
               "calibration": list(windows.shape), "heldout_tokens": len(heldout), "window": window, "rows": []}

    def save():
        Path(out_json).write_text(json.dumps(results, indent=1))

    def evaluate(model):
        model.to(device)
        ppl, n = perplexity(model, heldout, window, max_windows=max_windows)
        model.cpu()
        return round(ppl, 3), n

    if not only or "fp32" in only:
        ppl, n = evaluate(load_dense(model_dir))
        results["rows"].append({"label": "fp32 (the model)", "ppl": ppl, "scored": n, "bits_per_weight": 16.0,
                                "sparsity": 0.0, "tests": "reference"})
        save()
        print(f"fp32: ppl {ppl}", flush=True)
    table = {label: (fields, tests) for label, fields, tests in ROWS}
    for label in only or list(table):
        if label == "fp32":
            continue
        if label not in table:
            raise SystemExit(f"unknown row {label!r}; rows: {', '.join(table)}")
        fields, tests = table[label]
        fields = dict(fields)
        cfg = CompressConfig(device=device, **{k: v for k, v in fields.items() if k not in ("bqpo", "e2e")})
        cfg.bqpo = BQPOConfig(**fields.get("bqpo", {}))
        cfg.e2e = E2EConfig(**fields.get("e2e", {}))
        if bqpo_epochs is not None:
            cfg.bqpo.epochs = bqpo_epochs
        if e2e_epochs is not None:
            cfg.e2e.epochs = e2e_epochs
        staged = {}

        def on_stage(stage, model, staged=staged):
            if label == "gqsa W4S50" or stage == cfg.resolved_stages()[-1]:
                staged[stage] = (evaluate(as_stored(model)), linear_stats(model, get_method(cfg.method), cfg))

        t0 = time.time()
        _, meta, _ = compress_run(model_dir, cfg, windows, on_stage=on_stage)
        for stage, ((ppl, n), st) in staged.items():
            row = {"label": label if stage == cfg.resolved_stages()[-1] else f"{label} (after {stage})",
                   "method": cfg.method, "stage": stage, "bits": meta["bits"], "group": cfg.group,
                   "rows": meta["rows"], "allocation": cfg.allocation, "ppl": ppl, "scored": n, **st,
                   "tests": tests, "seconds": meta["seconds"], "peak_mb": meta["peak_mb"],
                   "bqpo_mse": [b.get("bqpo_mse") for b in meta["blocks"]] if "bqpo" in meta["stages"] else None,
                   "e2e_loss": meta.get("e2e_loss"), "bqpo_cfg": meta["bqpo"], "e2e_cfg": meta["e2e"],
                   "wall_s": round(time.time() - t0, 1)}
            results["rows"].append(row)
            print(f"{row['label']}: ppl {ppl}  bits/w {st['bits_per_weight']}  {meta['seconds']}", flush=True)
        save()


def _order(row) -> tuple:
    labels = ["fp32"] + [label for label, _, _ in ROWS]
    base = row["label"].split(" (")[0]
    return (labels.index(base) if base in labels else len(labels), "(after" not in row["label"],
            row.get("note", ""))


def report(files: list[str]) -> None:
    """FILE or FILE=NOTE: the NOTE is attached to that file's rows that ran BQPO (e.g. an older recipe)."""
    rows, info = [], {}
    for spec in files:
        f, _, note = spec.partition("=")
        d = json.loads(Path(f).read_text())
        info = {k: v for k, v in d.items() if k != "rows"}
        for r in d["rows"]:
            if note and r.get("bqpo_cfg"):
                r["note"] = note
            r["tests"] = next((t for label, _, t in ROWS if label == r["label"]), r["tests"])
            if r["label"].endswith("(after bqpo)"):
                r["tests"] = "GQSA ablation step 2: + BQPO"
            elif r["label"] == "gqsa W4S50":
                r["tests"] = "GQSA ablation step 3: + E2E-OQP (the headline configuration)"
            elif r["label"].startswith("magnitude-group"):
                r["tests"] = "group pruning by block magnitude, RTN"
            rows.append(r)
    rows.sort(key=_order)
    out = ROOT / "benchmarks" / "results" / "quality.json"
    out.write_text(json.dumps({**info, "rows": rows}, indent=1))
    lines = [f"Held-out: {info['heldout_tokens']} tokens of Wikipedia articles not in the calibration split, "
             f"windows of {info['window']}; calibration: {info['calibration'][0]} windows x "
             f"{info['calibration'][1]} tokens; device: {info['device']}. Bits per weight: the Linears only "
             "(embedding and lm_head are 8-bit in every row).", "",
             "| configuration | perplexity | bits / weight | sparsity | what it tests | note |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['ppl']:.2f} | {r['bits_per_weight']:.2f} | {r['sparsity']:.2f} | "
                     f"{r['tests']} | {r.get('note', '')} |")
    lines += ["", "Time (s) and peak GPU memory (MiB) of each stage:", "",
              "| configuration | prune s | bqpo s | e2e s | peak MiB, block stages | peak MiB, e2e |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("stage") in ("e2e", "prune") and r["label"].startswith("gqsa"):
            s, pk = r["seconds"], r["peak_mb"]
            lines.append(f"| {r['label']} {r.get('note', '')} | {s.get('prune', '')} | {s.get('bqpo', '')} | "
                         f"{s.get('e2e', '')} | {pk.get('blocks', '')} | {pk.get('e2e', '')} |")
    doc = ROOT / "docs" / "quality.md"
    text = doc.read_text() if doc.is_file() else "# Quality\n\n<!-- table -->\n<!-- /table -->\n"
    head, rest = text.split("<!-- table -->", 1)
    tail = rest.split("<!-- /table -->", 1)[1]
    doc.write_text(head + "<!-- table -->\n" + "\n".join(lines) + "\n<!-- /table -->" + tail)
    print("\n".join(lines))
    print(f"wrote {out} and the table in {doc}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("-o", "--out", default="out/quality_data.pt")
    a.add_argument("--calib-windows", type=int, default=128)
    a.add_argument("--calib-length", type=int, default=512)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("run")
    b.add_argument("--data", required=True)
    b.add_argument("--device", default="cuda")
    b.add_argument("--json", default="quality_rows.json")
    b.add_argument("--only", nargs="*", help="labels of ROWS (and 'fp32') to run")
    b.add_argument("--window", type=int, default=1024)
    b.add_argument("--bqpo-epochs", type=int, default=None)
    b.add_argument("--e2e-epochs", type=int, default=None)
    b.add_argument("--max-windows", type=int, default=None, help="evaluate on fewer held-out windows (smoke runs)")
    c = sub.add_parser("report")
    c.add_argument("files", nargs="+")
    args = p.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, args.calib_windows, args.calib_length, args.seed)
    elif args.cmd == "run":
        run(args.data, args.device, args.json, args.only, args.window, args.bqpo_epochs, args.e2e_epochs,
            args.max_windows)
    else:
        report(args.files)


if __name__ == "__main__":
    main()
