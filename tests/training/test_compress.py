"""The compression recipe on tiny random LLaMAs (CPU, seconds): masks, quantizer, OBS, BQPO, E2E-OQP, resume."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import tiny_windows

from training import compress as compress_mod
from training.bqpo import BQPOConfig, train_block
from training.bsr import dequantize
from training.calibration import BlockContext, embed_windows, input_hessians, run_block
from training.checkpoint import read_checkpoint
from training.compress import BLOCK_LINEARS, CompressConfig, compress, run, solve_linear
from training.e2e_oqp import E2EConfig, train_scales
from training.evaluate import load_any
from training.methods import get_method
from training.model import load_dense
from training.obs import sweep
from training.qlinear import QuantLinear


def _layer_inputs(tiny_model, count=8):
    model = load_dense(tiny_model)
    windows = tiny_windows(count)
    ctx = BlockContext.for_model(model, windows.shape[1])
    return model, ctx, embed_windows(model, windows, "cpu")


@pytest.mark.parametrize("allocation", ["row", "layer"])
@pytest.mark.parametrize("rows", [1, 4])
def test_group_masks_honour_pattern_and_sparsity(tiny_model, allocation, rows):
    model, ctx, x = _layer_inputs(tiny_model)
    hess = input_hessians(model.layers[0], x, ctx, BLOCK_LINEARS)
    cfg = CompressConfig(sparsity=0.5, rows=rows, allocation=allocation)
    for name in BLOCK_LINEARS:
        w = model.layers[0].get_submodule(name).weight.detach()
        sol, keep = solve_linear(w, hess[name], get_method("gqsa"), cfg)
        n, k = w.shape
        assert keep.shape == (n // rows, k // 16)
        assert keep.float().mean() == 0.5  # the global target, exactly
        if allocation == "row":
            assert (keep.sum(1) == keep.shape[1] // 2).all()
        # whole R x G blocks are kept or removed, and nothing outside the kept blocks survives
        expanded = keep.repeat_interleave(rows, 0).repeat_interleave(16, 1)
        assert torch.equal(sol.mask, expanded)
        assert (sol.weight[~expanded] == 0).all()


@pytest.mark.parametrize("method", ["sparsegpt-2:4", "wanda-2:4", "sparsegpt-4:8", "wanda-4:8"])
def test_nm_masks(tiny_model, method):
    model, ctx, x = _layer_inputs(tiny_model)
    hess = input_hessians(model.layers[0], x, ctx, ["mlp.down_proj"])
    m = get_method(method)
    n, mm = m.nm
    sol, _ = solve_linear(model.layers[0].mlp.down_proj.weight.detach(), hess["mlp.down_proj"], m, CompressConfig())
    per_group = sol.mask.reshape(sol.mask.shape[0], -1, mm).sum(-1)
    assert (per_group == n).all()
    assert (sol.weight[~sol.mask] == 0).all()


def test_quantizer_round_trips_through_the_checkpoint_layout(tiny_model):
    model, ctx, x = _layer_inputs(tiny_model)
    hess = input_hessians(model.layers[0], x, ctx, ["mlp.up_proj"])
    w = model.layers[0].mlp.up_proj.weight.detach()
    for bits, rows in [(4, 1), (3, 4), (2, 1), (8, 4)]:
        sol, keep = solve_linear(w, hess["mlp.up_proj"], get_method("gqsa"), CompressConfig(bits=bits, rows=rows))
        q = QuantLinear(sol.compensated, sol.scale, sol.zero, keep, bits, 16, rows)
        # the trainable form starts exactly at the solver's weights, and the stored form is the same matrix
        torch.testing.assert_close(q.quantized_weight(), sol.weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(dequantize(q.to_bsr()), sol.weight, rtol=0, atol=1e-6)
        assert int(q.integer_codes().max()) < 2**bits


def test_obs_compensation_beats_rounding_alone(tiny_model):
    model, ctx, x = _layer_inputs(tiny_model, count=16)
    name = "mlp.gate_proj"
    hess = input_hessians(model.layers[0], x, ctx, [name])[name]
    w = model.layers[0].mlp.gate_proj.weight.detach()
    inp = []
    hook = model.layers[0].mlp.gate_proj.register_forward_hook(lambda m, i, o: inp.append(i[0].reshape(-1, 64)))
    with torch.no_grad():
        run_block(model.layers[0], x, ctx)
    hook.remove()
    a = torch.cat(inp)
    err = lambda wh: ((a @ (w - wh).T) ** 2).sum().item()  # noqa: E731
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[:, :32] = False
    for kw in [dict(bits=4, mask=None), dict(bits=2, mask=None), dict(bits=4, mask=mask)]:
        assert err(sweep(w, hess, group=16, compensate=True, **kw).weight) < \
            err(sweep(w, hess, group=16, compensate=False, **kw).weight)


def test_bqpo_lowers_the_block_reconstruction_loss(tiny_model):
    model, ctx, x = _layer_inputs(tiny_model, count=8)
    block = model.layers[0]
    with torch.no_grad():
        y = run_block(block, x, ctx)
    hess = input_hessians(block, x, ctx, BLOCK_LINEARS)
    cfg = CompressConfig(sparsity=0.5, bits=3)
    for name in BLOCK_LINEARS:
        sol, keep = solve_linear(block.get_submodule(name).weight.detach(), hess[name], get_method("gqsa"), cfg)
        parent, attr = name.split(".")
        setattr(block.get_submodule(parent), attr, QuantLinear(sol.compensated, sol.scale, sol.zero, keep, 3, 16, 1))
    masks = {n: block.get_submodule(n).keep.clone() for n in BLOCK_LINEARS}
    before, after = train_block(block, x, y, ctx, BQPOConfig(epochs=4, batch=2), seed=0)
    assert after < 0.9 * before, (before, after)
    assert all(torch.equal(block.get_submodule(n).keep, masks[n]) for n in BLOCK_LINEARS)


def test_e2e_oqp_trains_scales_only(tiny_model):
    cfg = CompressConfig(sparsity=0.5, stages=("prune",))
    windows = tiny_windows(8)
    model, _, _ = run(tiny_model, cfg, windows)
    qls = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    frozen = {n: (m.integer_codes(), m.zero.detach().clone(), m.keep.clone(), m.scale.detach().clone())
              for n, m in qls.items()}
    before, after = train_scales(model, windows, E2EConfig(epochs=3, accum=2, lr=0.05), seed=0)
    assert after < before, (before, after)
    moved = 0
    for n, m in qls.items():
        codes, zero, keep, scale = frozen[n]
        assert torch.equal(m.integer_codes(), codes) and torch.equal(m.zero, zero) and torch.equal(m.keep, keep)
        moved += int(not torch.equal(m.scale, scale))
    assert moved == len(qls)


def _tensors(ckpt):
    _, meta, dense, comp = read_checkpoint(ckpt)
    out = dict(dense)
    for name, b in comp.items():
        out.update(b.tensors(name))
    return out


def test_resume_after_interruption_gives_the_same_checkpoint(tiny_model, tmp_path, monkeypatch):
    kw = dict(windows=tiny_windows(4), sparsity=0.5, bqpo=BQPOConfig(epochs=1, batch=2),
              e2e=E2EConfig(epochs=1, accum=2))
    whole = compress(tiny_model, tmp_path / "whole", **kw)
    calls = []
    real = compress_mod.train_block

    def dies_on_second_block(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(compress_mod, "train_block", dies_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        compress(tiny_model, tmp_path / "resumed", **kw)
    work = tmp_path / ".resumed.work"
    assert (work / "block_000.pt").is_file() and not (work / "block_001.pt").exists()
    assert not (tmp_path / "resumed").exists()
    calls.clear()
    monkeypatch.setattr(compress_mod, "train_block", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = compress(tiny_model, tmp_path / "resumed", **kw)
    assert len(calls) == 1  # block 0 came from the work folder
    assert not work.exists()
    a, b = _tensors(whole), _tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_changed_options_do_not_resume_silently(tiny_model, tmp_path):
    work = tmp_path / ".out.work"
    work.mkdir()
    (work / "fingerprint").write_text("something else")
    with pytest.raises(ValueError, match="other options"):
        compress(tiny_model, tmp_path / "out", windows=tiny_windows(2), stages=("prune",))


def test_baselines_write_evaluable_folders(tiny_model, tmp_path):
    out = compress(tiny_model, tmp_path / "24", windows=tiny_windows(2), method="sparsegpt-2:4")
    meta = json.loads((out / "gqsa_baseline.json").read_text())
    assert meta["bits_per_weight"] == 9.0 and meta["sparsity"] == 0.5
    model = load_any(out)
    w = model.layers[1].mlp.up_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    with pytest.raises(ValueError, match="only the prune stage"):
        compress(tiny_model, tmp_path / "x", windows=tiny_windows(2), method="wanda-2:4", stages=("prune", "bqpo"))


def test_stage_ablation_is_a_prefix(tiny_model, tmp_path):
    base = CompressConfig()
    assert base.resolved_stages() == ("prune", "bqpo", "e2e")
    assert CompressConfig(method="gptq").resolved_stages() == ("prune",)
    with pytest.raises(ValueError, match="in order"):
        dataclasses.replace(base, stages=("prune", "e2e")).resolved_stages()
