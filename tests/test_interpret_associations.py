"""Latent/neuron <-> attribute association scores against a float64 numpy reference computed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter
from sparsesteer.interpret.associations import (
    SCORES,
    AssociationAccumulator,
    latent_associations,
    neuron_associations,
)
from sparsesteer.sae import SAEConfig, build
from sparsesteer.utils.errors import SparsesteerError

HOOK = "blocks.1.resid_post"


def write_cache(path, acts_itd: np.ndarray, *, images_per_shard=7, skipped=(), split="test"):
    """A cache of acts [n_images, tokens, d] (tokens 0..T-1, CLS at 0); images in `skipped` get no rows."""
    n, T, d = acts_itd.shape
    s = CacheSettings(
        hooks=(HOOK,),
        d={HOOK: d},
        tokens="all",
        token_positions=tuple(range(T)),
        cls_position=0,
        n_images=n,
        dtype="float32",
        model={"id": "unit", "revision": "r", "arch": "clip"},
        dataset={"name": "toyset"},
        split=split,
    )
    with CacheWriter.open(path, s) as w:
        for first in range(0, n, images_per_shard):
            last = min(first + images_per_shard, n)
            images = [i for i in range(first, last) if i not in skipped]
            for i in range(first, last):
                if i in skipped:
                    w.add_skipped(i, f"img{i}", "unreadable")
            img = np.repeat(images, T).astype(np.int64)
            tok = np.tile(np.arange(T), len(images))
            w.write_shard({HOOK: acts_itd[images].reshape(-1, d)}, img, tok, n_images=last - first)
        w.finish(np.zeros(n, dtype=np.int64))
    return ActivationCache.open(path)


def make_sae(arch, d, n, *, k=3, select="relu", seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = SAEConfig(arch=arch, d_in=d, n_latents=n, k=k, select=select)
    sae = build(cfg, dtype=dtype)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_(0, 0.1)
    return sae


def reference(values_itn: np.ndarray, present: np.ndarray, groups: np.ndarray, fires_itn: np.ndarray, pos, neg):
    """Scores computed the plain way: reduce per image, then numpy means/variances/correlation."""
    out = {}
    keep = present & (groups >= 0)
    for reduce in ("max", "mean"):
        x = values_itn.max(1) if reduce == "max" else values_itn.mean(1)
        fired = fires_itn.any(1)
        P = keep & np.isin(groups, pos)
        N = keep & np.isin(groups, neg)
        xp, xn = x[P], x[N]
        diff = xp.mean(0) - xn.mean(0)
        nP, nN = len(xp), len(xn)
        pooled = np.sqrt(((nP - 1) * xp.var(0, ddof=1) + (nN - 1) * xn.var(0, ddof=1)) / (nP + nN - 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(pooled > 0, diff / pooled, 0.0)
        both = np.concatenate([xp, xn])
        ind = np.r_[np.ones(nP), np.zeros(nN)]
        r = np.array(
            [np.corrcoef(both[:, j], ind)[0, 1] if both[:, j].std() > 0 else 0.0 for j in range(both.shape[1])]
        )
        out[reduce] = {
            "mean_diff": diff,
            "cohens_d": d,
            "point_biserial": r,
            "firing_rate_diff": fired[P].mean(0) - fired[N].mean(0),
            "mean_positive": xp.mean(0),
            "n": (nP, nN),
        }
    return out


def _dense_codes(sae, acts_itd):
    n, T, d = acts_itd.shape
    with torch.no_grad():
        return sae.encode_dense(torch.from_numpy(acts_itd.reshape(-1, d))).double().numpy().reshape(n, T, -1)


@pytest.mark.parametrize(("arch", "select"), [("topk", "relu"), ("topk", "abs"), ("relu", "relu")])
def test_scores_match_a_float64_reference(tmp_path, arch, select):
    rng = np.random.default_rng(1)
    n_img, T, d, n_lat = 41, 5, 6, 12
    acts = rng.normal(size=(n_img, T, d)).astype(np.float32)
    skipped = {3, 20}
    cache = write_cache(tmp_path / "c", acts, images_per_shard=6, skipped=skipped)
    groups = rng.integers(0, 3, n_img)
    groups[[5, 9]] = -1  # left out
    sae = make_sae(arch, d, n_lat, select=select)
    present = np.array([i not in skipped for i in range(n_img)])

    for tokens, sl in (("all", slice(0, T)), ("patch", slice(1, T)), ("cls", slice(0, 1)), ([1, 3], [1, 3])):
        view = cache.rows(HOOK, tokens)
        assoc = latent_associations(view, sae, groups, batch_rows=7, attribute="colour")
        codes = _dense_codes(sae, acts)[:, sl]
        for pos, neg in ((1, None), ((0, 2), 1)):
            negs = [g for g in range(3) if g not in np.atleast_1d(pos)] if neg is None else np.atleast_1d(neg)
            ref = reference(codes, present, groups, codes != 0, np.atleast_1d(pos), negs)
            for reduce in ("max", "mean"):
                got = assoc.scores(reduce, pos, neg)
                assert (got.n_positive, got.n_negative) == ref[reduce]["n"]
                np.testing.assert_allclose(got.mean_positive, ref[reduce]["mean_positive"], rtol=1e-6, atol=1e-9)
                for score in SCORES:
                    np.testing.assert_allclose(
                        got.score(score), ref[reduce][score], rtol=1e-6, atol=1e-9, err_msg=f"{tokens} {reduce} {score}"
                    )
        assert assoc.n_images == int((present & (groups >= 0)).sum())
        assert assoc.context["split"] == "test" and assoc.context["attribute"] == "colour"


def test_neuron_scores_match_the_reference_also_with_a_large_offset(tmp_path):
    rng = np.random.default_rng(2)
    n_img, T, d = 30, 4, 5
    acts = rng.normal(size=(n_img, T, d))
    acts[..., 2] += 300.0  # a "massive activation" dimension: the shifted sums keep its variance
    acts[..., 2] *= 0.01
    acts[..., 2] += 1000.0
    acts = acts.astype(np.float32)
    cache = write_cache(tmp_path / "c", acts, images_per_shard=4)
    groups = (rng.random(n_img) < 0.4).astype(bool)
    view = cache.rows(HOOK, "patch")
    assoc = neuron_associations(view, groups, batch_rows=5)
    x = acts[:, 1:].astype(np.float64)
    ref = reference(x, np.ones(n_img, bool), groups.astype(np.int64), x > 0, [1], [0])
    for reduce in ("max", "mean"):
        got = assoc.scores(reduce)
        for score in SCORES:
            np.testing.assert_allclose(got.score(score), ref[reduce][score], rtol=1e-5, atol=1e-8, err_msg=score)
    assert assoc.unit == "neuron" and assoc.n_units == d


def test_a_planted_latent_ranks_first_under_every_score(tmp_path):
    rng = np.random.default_rng(3)
    n_img, T, d, n_lat, planted = 60, 6, 8, 24, 17
    groups = np.r_[np.ones(30), np.zeros(30)].astype(np.int64)
    rng.shuffle(groups)
    acts = rng.normal(size=(n_img, T, d))
    acts[..., 0] = -1.0  # the planted direction is off everywhere ...
    on = rng.random((n_img, T)) < 0.5
    on[:, 1] = True
    acts[..., 0] = np.where(on & (groups[:, None] == 1), 2.0 + rng.random((n_img, T)), -1.0)  # ... but in group 1
    cache = write_cache(tmp_path / "c", acts.astype(np.float32))
    sae = make_sae("relu", d, n_lat)
    with torch.no_grad():
        W = torch.randn(n_lat, d)
        W[:, 0] = 0.0  # other latents ignore the planted direction
        W[planted] = 0.0
        W[planted, 0] = 1.0
        sae.W_enc.copy_(W)
        sae.b_dec.zero_()
        sae.b_enc.fill_(0.1)
        sae.b_enc[planted] = 0.0
    assoc = latent_associations(cache.rows(HOOK, "patch"), sae, groups, batch_rows=11)
    for reduce in ("max", "mean"):
        for score in SCORES:
            for sign in ("positive", "absolute"):
                top = assoc.top(3, by=score, sign=sign, reduce=reduce)
                assert top.units[0] == planted, (reduce, score, sign, top)
            # the contrast the other way round puts it first among the negative scores
            assert assoc.top(1, by=score, sign="negative", reduce=reduce, positive=0, negative=1).units[0] == planted
    s = assoc.scores("max")
    assert s.firing_rate_diff[planted] == 1.0 and s.cohens_d[planted] > 3
    top = s.top(5, by="mean_diff")
    assert list(top.values) == sorted(top.values, reverse=True) and top.unit == "latent" and top.reduce == "max"


def test_streaming_in_chunks_equals_one_pass_and_the_accumulator(tmp_path):
    rng = np.random.default_rng(4)
    n_img, T, d = 23, 7, 5
    acts = rng.normal(size=(n_img, T, d)).astype(np.float32)
    cache = write_cache(tmp_path / "c", acts, images_per_shard=5)
    groups = rng.integers(0, 2, n_img)
    sae = make_sae("topk", d, 10, dtype=torch.float64)  # float64 codes: batch size cannot change them
    view = cache.rows(HOOK, "all")
    whole = latent_associations(view, sae, groups, batch_rows=view.n_rows)
    for batch in (1, 3, T, 2 * T + 1, 50):
        part = latent_associations(view, sae, groups, batch_rows=batch)
        for reduce in ("max", "mean"):
            a, b = whole.stats[reduce], part.stats[reduce]
            np.testing.assert_array_equal(a.count, b.count)
            np.testing.assert_array_equal(a.fired, b.fired)
            np.testing.assert_allclose(a.sum, b.sum, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(a.sumsq, b.sumsq, rtol=1e-12, atol=1e-12)
    # the accumulator fed by hand, two images at a time, gives the same sums
    acc = AssociationAccumulator(10, groups)
    x = torch.from_numpy(acts.reshape(-1, d)).double()
    img = np.repeat(np.arange(n_img), T)
    with torch.no_grad():
        for first in range(0, n_img, 2):
            rows = slice(first * T, min(first + 2, n_img) * T)
            acc.add_codes(sae.encode(x[rows]), img[rows])
    np.testing.assert_allclose(acc.result().stats["mean"].sum, whole.stats["mean"].sum, rtol=1e-12)
    with pytest.raises(SparsesteerError, match="increasing image order"):
        acc.add_codes(sae.encode(x[:T]), img[:T])


def test_bad_inputs_are_named(tmp_path):
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(12, 3, 4)).astype(np.float32)
    cache = write_cache(tmp_path / "c", acts, split="valid")
    view = cache.rows(HOOK, "all")
    sae = make_sae("topk", 4, 8)

    with pytest.raises(SparsesteerError, match=r"attribute 'Blond_Hair': group 0 has no images in toyset \[valid\]"):
        latent_associations(view, sae, np.ones(12, dtype=np.int64), attribute="Blond_Hair")
    with pytest.raises(SparsesteerError, match=r"group 1 has no images in toyset \[valid\]"):
        latent_associations(view, sae, np.zeros(12, dtype=bool))
    with pytest.raises(SparsesteerError, match=r"expected one per image of the cache \(12 images"):
        latent_associations(view, sae, np.zeros(11, dtype=np.int64))
    with pytest.raises(SparsesteerError, match="width 4 but the SAE's d_in is 6"):
        latent_associations(view, make_sae("topk", 6, 8), rng.integers(0, 2, 12))

    groups = np.r_[
        np.zeros(6),
        np.ones(6),
    ].astype(np.int64)
    groups[:3] = 2
    assoc = latent_associations(view, sae, groups, attribute="place")
    with pytest.raises(SparsesteerError, match="n=9 is larger than the SAE's 8 latents"):
        assoc.top(9)
    assert len(assoc.top(8).units) == 8
    with pytest.raises(SparsesteerError, match="unknown association score 'cohen'"):
        assoc.top(2, by="cohen")
    with pytest.raises(SparsesteerError, match="unknown sign"):
        assoc.top(2, sign="both")
    with pytest.raises(SparsesteerError, match="group 3 does not exist"):
        assoc.scores("max", positive=3)
    with pytest.raises(SparsesteerError, match="on both sides"):
        assoc.scores("max", positive=1, negative=(0, 1))
    # a contrast whose side has no images among those with rows (group 2 = the skipped image) names
    # the side, the group and the split
    other = write_cache(tmp_path / "skip", acts, split="valid", skipped={4})
    groups = np.r_[np.zeros(6), np.ones(6)].astype(np.int64)
    groups[4] = 2
    part = latent_associations(other.rows(HOOK, "all"), sae, groups, attribute="place")
    with pytest.raises(
        SparsesteerError, match=r"'place': the positive side \(group 2\) has no images in toyset \[valid\]"
    ):
        part.scores("max", positive=2, negative=0)
    with pytest.raises(SparsesteerError, match="n=13 is larger than the activation's 4 neurons"):
        neuron_associations(view, groups).top(13)
