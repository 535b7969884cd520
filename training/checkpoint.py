"""GQSA checkpoint format v1 (docs/format.md): a Hugging Face folder whose Linears are BSR int-k.

    config.json, tokenizer files      copied from the source model
    gqsa.json                         format name and version, bits, G, R, sparsity, per-layer stats
    model.safetensors                 dense tensors under their HF names (without ``model.``),
                                      each compressed Linear as <name>.{indptr,indices,qweight,scales,zeros}
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from runtime.files import writing_dir

from .bsr import BSREmbedding, BSRLinear, BSRWeight
from .model import ModelArgs, ModelError, Transformer, rope_tables

FORMAT = "gqsa"
FORMAT_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def copy_tokenizer(src: str | Path, dst: Path) -> None:
    """The tokenizer files the source folder has, into ``dst`` (checkpoints, HF folders and artifacts)."""
    for f in TOKENIZER_FILES:
        if (Path(src) / f).is_file():
            shutil.copy(Path(src) / f, dst / f)


def linear_names(args: ModelArgs) -> list[str]:
    per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    return [f"layers.{i}.{p}" for i in range(args.n_layers) for p in per_layer]


def write_checkpoint(out_dir: str | Path, source_dir: str | Path, dense: dict[str, torch.Tensor],
                     compressed: dict[str, BSRWeight], meta: dict) -> Path:
    """Write atomically (runtime.files.writing_dir): never a half-written checkpoint."""
    from safetensors.numpy import save_file

    with writing_dir(out_dir) as tmp:
        tensors = {k: v.detach().cpu().numpy() for k, v in dense.items()}
        layers = {}
        for name, b in compressed.items():
            tensors.update(b.tensors(name))
            layers[name] = {"shape": list(b.shape), "bits": b.bits, "group": b.group, "rows": b.rows,
                            "kept_blocks": b.nnzb, "density": round(b.density, 6), "bytes": b.nbytes()}
        save_file(tensors, str(tmp / "model.safetensors"))
        shutil.copy(Path(source_dir) / "config.json", tmp / "config.json")
        copy_tokenizer(source_dir, tmp)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "layers": layers}
        (tmp / "gqsa.json").write_text(json.dumps(meta, indent=1))
    return Path(out_dir)


def read_meta(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / "gqsa.json"
    if not path.is_file():
        raise ModelError(f"{ckpt_dir}: no gqsa.json (not a GQSA checkpoint; run gqsa-compress first)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: corrupt JSON ({e.msg})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: unsupported format {meta.get('format')} v{meta.get('format_version')}")
    return meta


def read_checkpoint(ckpt_dir: str | Path) -> tuple[ModelArgs, dict, dict[str, np.ndarray], dict[str, BSRWeight]]:
    """(args, meta, dense tensors, compressed weights) as numpy."""
    from safetensors.numpy import load_file

    meta = read_meta(ckpt_dir)
    args = ModelArgs.from_dir(ckpt_dir)
    try:
        tensors = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    except Exception as e:
        raise ModelError(f"{ckpt_dir}/model.safetensors: cannot read ({e})") from None
    compressed = {}
    for name, info in meta["layers"].items():
        try:
            compressed[name] = BSRWeight.from_tensors(tensors, name, info["shape"], info["bits"],
                                                      info["group"], info["rows"])
        except KeyError as e:
            raise ModelError(f"{ckpt_dir}: tensor {e} missing from model.safetensors") from None
        for t in BSRWeight.TENSORS:
            tensors.pop(f"{name}.{t}")
    return args, meta, tensors, compressed


def load_compressed(ckpt_dir: str | Path) -> Transformer:
    """The torch reference: our Transformer running the checkpoint's BSR weights (dequantized once)."""
    args, meta, dense, compressed = read_checkpoint(ckpt_dir)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu")
    for name, b in compressed.items():
        if name == "embed_tokens":
            model.embed_tokens = BSREmbedding(BSRLinear(b))
        else:
            parent, attr = name.rsplit(".", 1) if "." in name else ("", name)
            setattr(model.get_submodule(parent) if parent else model, attr, BSRLinear(b))
    state = {k: torch.from_numpy(v).float() for k, v in dense.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = args.tie_embeddings and "lm_head" not in compressed
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"{ckpt_dir}: tensors do not match the config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    cos, sin = rope_tables(args, args.max_seq_len)
    model.rope_cos, model.rope_sin = cos, sin
    if tied:
        model.lm_head = model.embed_tokens.linear if "embed_tokens" in compressed else model.lm_head
        if "embed_tokens" not in compressed:
            model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def write_dense(out_dir: str | Path, source_dir: str | Path, model: Transformer, meta: dict) -> Path:
    """A plain Hugging Face LLaMA folder (fp16 safetensors, ``model.`` names) for results that BSR cannot hold
    (N:M and unstructured baselines); ``gqsa_baseline.json`` records how it was made. Written atomically."""
    from safetensors.torch import save_file

    with writing_dir(out_dir) as tmp:
        state = {}
        for k, v in model.state_dict().items():
            if k.startswith("rope_") or (model.args.tie_embeddings and k == "lm_head.weight"):
                continue
            state[k if k.startswith("lm_head") else f"model.{k}"] = v.detach().half().contiguous()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = json.loads((Path(source_dir) / "config.json").read_text())
        cfg["torch_dtype"] = "float16"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        copy_tokenizer(source_dir, tmp)
        (tmp / "gqsa_baseline.json").write_text(json.dumps(meta, indent=1))
    return Path(out_dir)
