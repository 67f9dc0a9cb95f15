"""Per-token-type SAE metrics (`sae.metrics.token_metrics`) against manual counts over a cache view."""

import numpy as np
import pytest
import torch
from helpers import make_activation_cache

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.sae import SAEConfig, build
from sparsesteer.sae.base import SparseCodes
from sparsesteer.sae.metrics import evaluate, l0_by_token, token_metrics

POSITIONS = (0, 1, 2, 3, 4)  # CLS + a 2 x 2 patch grid


def _sae(seed=0):
    torch.manual_seed(seed)
    sae = build(SAEConfig(arch="topk", k=6, n_latents=24, d_in=16)).eval()
    with torch.no_grad():  # negative biases: ReLU leaves some of the top 6 at zero, so L0 varies per row
        sae.b_enc.copy_(torch.linspace(-2.5, 0.5, 24))
    return sae


def test_l0_by_token_hand_worked():
    codes = SparseCodes(
        values=torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [1.0, 1.0, 1.0]]),
        indices=torch.tensor([[0, 1, 2], [0, 1, 2], [3, 4, 5], [0, 1, 2]]),
    )
    sums, rows = l0_by_token(codes, torch.tensor([0, 2, 2, 1]), 4)
    assert sums.tolist() == [2.0, 3.0, 2.0, 0.0]  # token 2: rows of L0 0 and 2
    assert rows.tolist() == [1, 1, 2, 0]


@pytest.mark.parametrize("tokens", ["all", "patch", "cls"])
def test_token_metrics_match_a_manual_count(tmp_path, tokens):
    cache = ActivationCache.open(make_activation_cache(tmp_path / "c", n_images=200, positions=POSITIONS))
    view = cache.rows("blocks.2.resid_post", tokens)
    sae = _sae()
    res = token_metrics(sae, view, cls_position=0, patch_positions=[1, 2, 3, 4], batch_size=37)

    # manual: dense codes row by row, counted per token index
    x = view.read_all().x
    tok = view.row_index(0, view.n_rows)[:, 1]
    with torch.no_grad():
        dense = sae.encode_dense(x).numpy()
    l0 = (dense != 0).sum(1)
    assert len(set(l0.tolist())) > 1  # the case exercises varying L0
    present = sorted(set(tok.tolist()))
    assert res.positions == present
    for p, got, n in zip(res.positions, res.l0_by_position, res.rows_by_position):
        assert n == (tok == p).sum() == 200
        assert got == pytest.approx(l0[tok == p].mean())
    is_patch = tok >= 1
    if tokens == "cls":
        assert res.l0_patch is None and res.alive_patch is None and res.patch_grid() is None
    else:
        assert res.l0_patch == pytest.approx(l0[is_patch].mean())
        assert res.alive_patch == pytest.approx((dense[is_patch] != 0).any(0).mean())
        grid = res.patch_grid()  # row-major: position 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right
        expect = [[l0[tok == 1].mean(), l0[tok == 2].mean()], [l0[tok == 3].mean(), l0[tok == 4].mean()]]
        np.testing.assert_allclose(grid, expect)
    if tokens == "patch":
        assert res.l0_cls is None and res.alive_cls is None
    else:
        assert res.l0_cls == pytest.approx(l0[tok == 0].mean())
        assert res.alive_cls == pytest.approx((dense[tok == 0] != 0).any(0).mean())
    assert res.l0_mean == pytest.approx(l0.mean())
    assert res.alive_frac == pytest.approx((dense != 0).any(0).mean())
    # reconstruction metrics agree with the whole-source evaluation
    ev = evaluate(sae, view, batch_size=64)
    assert res.fvu == pytest.approx(ev.fvu, rel=1e-9) and res.cosine == pytest.approx(ev.cosine, rel=1e-9)
    assert res.explained_variance == pytest.approx(1 - ev.fvu, rel=1e-9)


def test_patch_grid_is_none_when_patches_are_not_square(tmp_path):
    cache = ActivationCache.open(make_activation_cache(tmp_path / "c", n_images=100, positions=(0, 1, 2, 3)))
    res = token_metrics(_sae(), cache.rows("blocks.2.resid_post"), cls_position=0, patch_positions=[1, 2, 3])
    assert res.l0_patch is not None and res.patch_grid() is None


def test_token_metrics_needs_a_cache_view():
    with pytest.raises(Exception, match="needs a cache view"):
        from sparsesteer.activations.loader import TensorSource

        token_metrics(_sae(), TensorSource(torch.randn(10, 16)), cls_position=0, patch_positions=[1])
