"""Shared fixtures: a tiny random LLaMA (seconds on CPU) and its compressed checkpoint."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.compress import compress

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=True,
            rms_norm_eps=1e-5, rope_theta=10000.0)


def tiny_windows(count: int = 4, length: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (count, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model, tmp_path_factory):
    """W4, G16, 50% of blocks pruned per row (group OBS + GPTQ, one shot), on random calibration tokens."""
    out = tmp_path_factory.mktemp("ck") / "w4s50"
    return compress(tiny_model, out, windows=tiny_windows(), sparsity=0.5, bits=4, group=16, stages=("prune",))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_ckpt, tmp_path_factory):
    from gqsa_compile.compiler import compile_model

    return compile_model(tiny_ckpt, tmp_path_factory.mktemp("art") / "llvm", "llvm", log=lambda *a: None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
