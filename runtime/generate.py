"""Token sampling and the generation loop (greedy, or temperature with nucleus / top-p)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    return int(rng.choice(keep, p=p[keep] / p[keep].sum()))


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    tokens: list = field(default_factory=list)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0


def generate(model, prompt_ids, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 0.9,
             seed: int = 0, eos_ids=(), on_token=None) -> Stats:
    """Prefill the prompt, then decode one token at a time; ``on_token(id)`` streams each new token."""
    rng = np.random.default_rng(seed)
    st = Stats(prompt_tokens=len(prompt_ids))
    max_new_tokens = min(max_new_tokens, model.max_seq_len - len(prompt_ids))
    t0 = time.perf_counter()
    logits = model.prefill(prompt_ids, last=True)
    tok = sample(logits, temperature, top_p, rng)
    st.prefill_s = time.perf_counter() - t0
    pos = len(prompt_ids)
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        st.tokens.append(tok)
        st.new_tokens += 1
        if on_token:
            on_token(tok)
        if tok in eos_ids or i == max_new_tokens - 1:
            break
        tok = sample(model.decode(tok, pos), temperature, top_p, rng)
        pos += 1
    st.decode_s = time.perf_counter() - t0
    return st
