"""A LLaMA forward written to be read, exported and checked against: the reference for every stage.

gpt-fast shape: a ModelArgs dataclass, a KV cache written in place at ``input_pos``, ten-line blocks.
Module names follow Hugging Face's (minus the leading ``model.``) so HF weights load without a remap.
Any ``nn.Linear`` may be swapped for a :class:`training.bsr.BSRLinear`; the forward does not care.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class ModelError(ValueError):
    """The model folder or its config cannot be used; the message is meant for the user."""


@dataclass
class ModelArgs:
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536
    vocab_size: int = 49152
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelArgs":
        if cfg.get("model_type") != "llama":
            raise ModelError(f"not a LLaMA-family config (model_type={cfg.get('model_type')!r})")
        if cfg.get("rope_scaling") not in (None, {}) and cfg["rope_scaling"].get("rope_type", "default") != "default":
            raise ModelError(f"unsupported rope_scaling {cfg['rope_scaling']}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"unsupported activation {cfg.get('hidden_act')!r}")
        return cls(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            hidden_dim=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            max_seq_len=min(cfg.get("max_position_embeddings", 2048), 2048),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelArgs":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelError(f"{model_dir}: no config.json (not a model folder)")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_hf(cfg)


def rope_tables(args: ModelArgs, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [length, head_dim // 2], fp32: HF's rotate-half convention."""
    half = args.head_dim // 2
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [T, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class KVCache(nn.Module):
    def __init__(self, batch: int, length: int, n_kv: int, head_dim: int, dtype=torch.float32):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, length, n_kv, head_dim, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(batch, length, n_kv, head_dim, dtype=dtype), persistent=False)

    def update(self, input_pos, k, v):
        self.k[:, input_pos], self.v[:, input_pos] = k, v
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.a = a
        self.q_proj = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=False)
        self.k_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.v_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.o_proj = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        B, T, _ = x.shape
        hd = self.a.head_dim
        q = apply_rope(self.q_proj(x).view(B, T, -1, hd), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, -1, hd), cos, sin)
        v = self.v_proj(x).view(B, T, -1, hd)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(a.dim, a.hidden_dim, bias=False)
        self.up_proj = nn.Linear(a.dim, a.hidden_dim, bias=False)
        self.down_proj = nn.Linear(a.hidden_dim, a.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.self_attn, self.mlp = Attention(a), FeedForward(a)
        self.input_layernorm = RMSNorm(a.dim, a.norm_eps)
        self.post_attention_layernorm = RMSNorm(a.dim, a.norm_eps)

    def forward(self, x, cos, sin, mask, input_pos):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self.embed_tokens = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(TransformerBlock(a) for _ in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.lm_head = nn.Linear(a.dim, a.vocab_size, bias=False)
        if a.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(a, a.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_len = 0

    def setup_caches(self, batch: int, length: int | None = None):
        self.cache_len = length or self.args.max_seq_len
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch, self.cache_len, self.args.n_kv_heads, self.args.head_dim)

    def embed(self, idx):
        return self.embed_tokens(idx)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """idx [B, T] -> logits [B, T, vocab]. With caches set up, ``input_pos`` [T] places the tokens."""
        T = idx.shape[1]
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        keys = torch.arange(self.cache_len if self.cache_len else T, device=idx.device)
        mask = keys[None, :] <= input_pos[:, None]
        cos, sin = self.rope_cos[input_pos], self.rope_sin[input_pos]
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        return self.lm_head(self.norm(x))


def load_hf_state(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The HF checkpoint's tensors (single or sharded safetensors), names without the ``model.`` prefix."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ModelError(f"{model_dir}: no model.safetensors (only safetensors checkpoints are supported)")
    state = {}
    for f in files:
        try:
            state.update(load_file(d / f))
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise ModelError(f"{d / f}: cannot read weights ({e})") from None
    return {k.removeprefix("model."): v for k, v in state.items()}


def load_dense(model_dir: str | Path, dtype=torch.float32) -> Transformer:
    """Our Transformer with a Hugging Face LLaMA checkpoint's weights."""
    args = ModelArgs.from_dir(model_dir)
    state = load_hf_state(model_dir)
    if args.tie_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["embed_tokens.weight"]
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not m.startswith("rope_")]
    if missing or unexpected:
        raise ModelError(f"{model_dir}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    cos, sin = rope_tables(args, args.max_seq_len)
    model.rope_cos, model.rope_sin = cos, sin
    if args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()
