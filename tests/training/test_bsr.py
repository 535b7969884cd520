import numpy as np
import pytest
import torch

from training.bsr import check_config, compress_matrix, dequantize, pack, unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [8, 16, 128])
def test_pack_round_trip(bits, group, rng):
    q = rng.integers(0, 2**bits, (5, 3, group), dtype=np.uint8)
    assert np.array_equal(unpack(pack(q, bits), bits, group), q)


@pytest.mark.parametrize("bits,group,rows", [(4, 16, 1), (8, 32, 1), (3, 16, 4), (2, 8, 16), (4, 64, 8)])
def test_compress_matrix_keeps_mask_and_error_bound(bits, group, rows):
    torch.manual_seed(0)
    w = torch.randn(32, 256)
    keep = torch.rand(32 // rows, 256 // group) < 0.5
    keep[0] = False  # a row with no blocks
    keep[-1] = True  # a row with all blocks
    b = compress_matrix(w, keep, bits, group, rows)
    assert b.nnzb == int(keep.sum())
    assert np.array_equal(np.diff(b.indptr), keep.sum(1).numpy())
    d = dequantize(b)
    mask = keep.repeat_interleave(rows, 0).repeat_interleave(group, 1)
    assert torch.all(d[~mask] == 0)
    # round-to-nearest with an integer zero point: within one step of the group's range
    groups = w.reshape(32, 256 // group, group)
    step = (groups.amax(-1).clamp(min=0) - groups.amin(-1).clamp(max=0)) / (2**bits - 1)
    step = step.repeat_interleave(group, 1)
    assert torch.all((d - w).abs()[mask] <= (step * 1.01 + 1e-3)[mask])


def test_check_config_rejects():
    with pytest.raises(ValueError, match="bits"):
        check_config((16, 64), 5, 16, 1)
    with pytest.raises(ValueError, match="group"):
        check_config((16, 64), 4, 12, 1)
    with pytest.raises(ValueError, match="block height"):
        check_config((16, 64), 4, 16, 3)
    with pytest.raises(ValueError, match="tile"):
        check_config((16, 40), 4, 16, 1)
