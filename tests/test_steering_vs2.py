"""VS2, SAE_REC baselines, FVU gate, CLS classification and tuning, against hand computations."""

import numpy as np
import pytest
import torch

from sparsesteer.models.backbone import load_backbone
from sparsesteer.models.hook_names import final_resid
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering import vs2 as V
from sparsesteer.steering.classify import CLSClassifier
from sparsesteer.steering.tuning import grid_search, validation_split
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    s = build(SAEConfig(arch="topk", d_in=16, n_latents=64, k=6), dtype=torch.float64)
    with torch.no_grad():
        s.b_dec.normal_(0, 0.5)
        s.b_enc.normal_(0, 0.2)
    return s.eval()


def dense_codes(sae, x):
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    idx = pre.topk(6, dim=1).indices
    return torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx).relu())


def test_vs2_matches_the_paper_formula(sae):
    x = torch.randn(30, 16, dtype=torch.float64) * 3
    lam, gamma = 2.1, 1.5
    with torch.no_grad():
        c = dense_codes(sae, x)
        decode = lambda z: z @ sae.W_dec + sae.b_dec  # noqa: E731
        v = decode(gamma * c) - decode(c)
        z = x + lam * v
        ref = z * x.norm(dim=1, keepdim=True) / z.norm(dim=1, keepdim=True)
        out = V.vs2(sae, x, lam, gamma)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(out.norm(dim=1), x.norm(dim=1))
        torch.testing.assert_close(V.vs2(sae, x, lam, gamma, rescale=False), z)


def test_vs2_identities(sae):
    x = torch.randn(20, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(V.vs2(sae, x, 0.0, 1.7), x)
        torch.testing.assert_close(V.vs2(sae, x, 3.0, 1.0), x)
        # depends on lam and gamma only through lam * (gamma - 1)
        torch.testing.assert_close(V.vs2(sae, x, 2.0, 1.5), V.vs2(sae, x, 1.0, 2.0))
        mask = torch.arange(20) % 3 == 0
        out = V.vs2(sae, x, 2.0, 1.5, mask_b=mask)
        torch.testing.assert_close(out[~mask], x[~mask])
        torch.testing.assert_close(out[mask], V.vs2(sae, x[mask], 2.0, 1.5))


def test_sae_rec_baselines(sae):
    x = torch.randn(20, 16, dtype=torch.float64)
    with torch.no_grad():
        c = dense_codes(sae, x)
        torch.testing.assert_close(V.sae_rec(sae, x), c @ sae.W_dec + sae.b_dec)
        torch.testing.assert_close(V.sae_rec(sae, x, 1.5), 1.5 * c @ sae.W_dec + sae.b_dec)
        torch.testing.assert_close(V.sae_rec(sae, x, 1.0), sae.reconstruct(x))


def test_non_finite_strengths_are_refused(sae):
    x = torch.randn(4, 16, dtype=torch.float64)
    for lam, gamma in ((float("nan"), 1.5), (1.0, float("inf"))):
        with pytest.raises(SparsesteerError, match="must be a finite number"):
            V.vs2(sae, x, lam, gamma)


def test_huge_strengths_are_bounded_and_overflow_is_refused(sae):
    """Item 7: lam / gamma beyond +-1e6 are refused; within the bound a result that overflows (float16
    vectors) is refused naming lam and gamma: an infinite norm used to rescale the vector to 0 or NaN."""
    x = torch.randn(4, 16, dtype=torch.float64)
    with pytest.raises(SparsesteerError, match=r"lam 1e\+30 is out of range"):
        V.vs2(sae, x, 1e30, 1.5)
    with pytest.raises(SparsesteerError, match=r"gamma -2e\+06 is out of range"):
        V.vs2(sae, x, 1.0, -2e6)
    with torch.no_grad():
        u = V.sae_direction(sae, x).half()
    with pytest.raises(
        SparsesteerError, match=r"VS2 with lam = 1e\+06, gamma = 1000 made the results non-finite .*float16"
    ):
        V.vs2(sae, x.half(), 1e6, 1e3, u_bd=u)
    with pytest.raises(SparsesteerError, match=r"steering with lam = 1e\+06 made the results non-finite"):
        V.steer(x.half(), 1e3 * u, 1e6)


def test_fvu_gate_threshold_and_coverage(sae):
    torch.manual_seed(1)
    train = torch.randn(400, 16, dtype=torch.float64)
    gate = V.FVUGate.fit(sae, train, 0.9)
    with torch.no_grad():
        mu = train.mean(0)
        fvu = (train - sae.reconstruct(train)).pow(2).sum(1) / (train - mu).pow(2).sum(1)
    assert gate.tau == pytest.approx(float(torch.quantile(fvu, 0.9)))
    mask = gate.mask(sae, train)
    assert torch.equal(mask, fvu <= gate.tau)
    assert float(mask.double().mean()) == pytest.approx(0.9, abs=0.005)
    with pytest.raises(SparsesteerError, match="quantile"):
        V.FVUGate.fit(sae, train, 1.5)


def test_sae_must_match_the_final_cls(sae):
    with pytest.raises(SparsesteerError, match="d_in=16 but the model's CLS has width 32"):
        V.check_sae_for_cls(sae, 32, 3)
    sae.metadata = {"hook": "blocks.1.resid_post", "tokens": "cls"}
    with pytest.raises(
        SparsesteerError, match="trained on blocks.1.resid_post, but steering needs an SAE on blocks.2.resid_post"
    ):
        V.check_sae_for_cls(sae, 16, 3)
    sae.metadata = {"hook": "blocks.2.resid_post", "tokens": "patch"}
    with pytest.raises(SparsesteerError, match="'patch' tokens"):
        V.check_sae_for_cls(sae, 16, 3)
    sae.metadata = {}


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    path = tiny_clip_dir
    bb = load_backbone(str(path))
    clf = ZeroShotClassifier.build(bb, ["cat", "dog", "bird", "fish"], ["a photo of a {}."])
    return bb, clf


def test_cls_classifier_equals_the_full_model(clip):
    bb, clf = clip
    pixels = torch.randn(6, 3, bb.image_size, bb.image_size)
    last = final_resid(bb.n_blocks)
    cls = bb.run(pixels, capture=[last], tokens="cls")[last]
    logits = CLSClassifier(bb, clf).logits(cls)
    ref = clf.logits(bb.embed_images(pixels)).float()
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-4)
    # the rescale cannot change predictions: post-layernorm is scale invariant
    assert torch.equal(CLSClassifier(bb, clf).predict(cls * 3.7), logits.argmax(-1))


def test_validation_split_is_fixed_disjoint_and_never_empty():
    fit, val = validation_split(1000, 0.1, seed=0)
    assert len(val) == 100 and len(fit) == 900 and not set(fit) & set(val)
    fit2, val2 = validation_split(1000, 0.1, seed=0)
    assert np.array_equal(val, val2)
    assert not np.array_equal(val, validation_split(1000, 0.1, seed=1)[1])
    with pytest.raises(SparsesteerError, match="empty"):
        validation_split(4, 0.1)


def test_grid_search_picks_the_best_and_breaks_ties_towards_weak_steering():
    score = lambda lam, g: -abs(lam * (g - 1) - 1.0)  # noqa: E731 - best on lam (g - 1) = 1
    res = grid_search(score, [0, 1, 2, 4], [1.0, 1.25, 1.5, 2.0], split="val", n=10)
    assert (res.best_lam, res.best_gamma) == (1, 2.0)  # first of the optimal points (1, 2.0), (2, 1.5), (4, 1.25)
    flat = grid_search(lambda lam, g: 0.5, [0, 1], [1.0, 2.0], split="val", n=10)
    assert (flat.best_lam, flat.best_gamma) == (0, 1.0)  # no gain: no steering


def test_tune_vs2_is_the_grid_of_vs2_accuracies(sae):
    class Stub:  # accuracy = fraction of rows whose first coordinate is positive (labels ignored)
        def accuracy(self, x, labels):
            return float((x[:, 0] > 0).double().mean())

    x = torch.randn(40, 16, dtype=torch.float64)
    y = torch.zeros(40, dtype=torch.long)
    lams, gammas = (0.0, 1.0, 3.0), (1.0, 2.0)
    for rescale in (True, False):
        grid = V.tune_vs2(Stub(), sae, x, y, lams, gammas, rescale=rescale, split="val")
        with torch.no_grad():
            want = [[Stub().accuracy(V.vs2(sae, x, lam, g, rescale=rescale), y) for g in gammas] for lam in lams]
        assert grid.accuracy == want and grid.n == 40 and grid.split == "val"
    with pytest.raises(SparsesteerError, match="40 labels"):
        V.tune_vs2(Stub(), sae, x[:30], y, lams, gammas)


def test_heatmap_is_written(tmp_path):
    res = grid_search(lambda lam, g: lam * g / 10, [0, 1, 2], [1.0, 1.5], split="val", n=3)
    path = res.heatmap(tmp_path / "grid.png", title="test")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
