import numpy as np
import torch
from transformers import LlamaForCausalLM

from training.checkpoint import load_compressed, read_checkpoint
from training.compress import compress
from training.model import load_dense


def test_dense_matches_hugging_face(tiny_model):
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    hf = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        ref = hf(ids).logits
        ours = load_dense(tiny_model)(ids)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_round_trip(tiny_ckpt):
    args, meta, dense, comp = read_checkpoint(tiny_ckpt)
    assert meta["format_version"] == 1 and meta["bits"] == 4 and meta["group"] == 16
    assert abs(meta["sparsity"] - 0.5) < 0.01
    q = comp["layers.0.self_attn.q_proj"]
    # every block row keeps the same count (row allocation) and indices are sorted per row
    counts = np.diff(q.indptr)
    assert (counts == counts[0]).all() and counts[0] == 2
    for r in range(len(counts)):
        row = q.indices[q.indptr[r]:q.indptr[r + 1]]
        assert (np.diff(row.astype(int)) > 0).all()


def test_8bit_dense_checkpoint_is_near_the_model(tiny_model, tmp_path):
    ck = compress(tiny_model, tmp_path / "w8", method="rtn", sparsity=0.0, bits=8, group=16)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_dense(tiny_model)(ids)
        got = load_compressed(ck)(ids)
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.02, rel


def test_kv_cache_matches_full_forward(tiny_ckpt):
    model = load_compressed(tiny_ckpt)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        model.setup_caches(1, 64)
        pre = model(ids[:, :8], torch.arange(8))
        steps = [model(ids[:, i:i + 1], torch.tensor([i])) for i in range(8, 12)]
    got = torch.cat([pre] + steps, dim=1)
    assert torch.allclose(got, full, atol=1e-5)
