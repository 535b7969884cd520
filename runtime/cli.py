"""``gqsa-run ARTIFACT --prompt "..."`` (generate) and ``gqsa-run ARTIFACT --bundle DEST`` (deploy folder)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _tokenizer(artifact: Path):
    from tokenizers import Tokenizer

    path = artifact / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{artifact}: no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    eos = set()
    cfg = artifact / "tokenizer_config.json"
    if cfg.is_file():
        name = json.loads(cfg.read_text()).get("eos_token")
        name = name.get("content") if isinstance(name, dict) else name
        if name and tok.token_to_id(name) is not None:
            eos.add(tok.token_to_id(name))
    return tok, eos


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gqsa-run", description="Run a compiled GQSA artifact with TVM's runtime "
                                "only (no torch, no compiler), or pack it into an offline deploy bundle.")
    p.add_argument("artifact", help="artifact folder from gqsa-compile")
    p.add_argument("--prompt", default="The capital of France is", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the stats (tokens/s, text) to FILE")
    p.add_argument("--bundle", metavar="DEST", help="instead of generating, pack artifact + runtime + "
                   "runtime-only TVM into DEST, runnable with plain python3 (numpy, tokenizers, a driver)")
    p.add_argument("--python", default=None, help="Python version the bundle targets (default: this one)")
    a = p.parse_args(argv)
    artifact = Path(a.artifact)
    from .model import ArtifactError

    try:
        if a.bundle:
            from .bundle import BundleError, make_bundle

            try:
                dest = make_bundle(artifact, a.bundle, a.python)
            except BundleError as e:
                raise ArtifactError(str(e)) from None
            size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
            print(f"bundle: {dest} ({size / 2**20:.1f} MiB); run: python3 {dest}/run.py --prompt \"...\"")
            return 0
        from .generate import generate
        from .model import CompiledModel

        model = CompiledModel(artifact)
        tok, eos = _tokenizer(artifact)
        ids = tok.encode(a.prompt).ids
        print(a.prompt, end="", flush=True)
        out: list[int] = []
        shown = [""]

        def stream(t):
            out.append(t)
            text = tok.decode(out)
            print(text[len(shown[0]):], end="", flush=True)
            shown[0] = text

        st = generate(model, ids, a.max_new_tokens, a.temperature, a.top_p, a.seed, eos, stream)
        print()
        print(f"[{model.manifest['target']}] prompt {st.prompt_tokens} tok: prefill {st.prefill_tps:.1f} tok/s; "
              f"generated {st.new_tokens} tok: decode {st.decode_tps:.1f} tok/s; artifact {artifact.resolve()}")
        if a.json:
            Path(a.json).write_text(json.dumps({"prompt": a.prompt, "text": shown[0], "prompt_tokens":
                                                st.prompt_tokens, "new_tokens": st.new_tokens,
                                                "prefill_tok_s": st.prefill_tps, "decode_tok_s": st.decode_tps,
                                                "target": model.manifest["target"]}, indent=1))
    except (ArtifactError, FileNotFoundError, ValueError) as e:
        print(f"gqsa-run: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
