"""Streaming latent statistics, top-n, neighbours and the stats files, against brute-force
references computed here with dense codes and full sorts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_activation_cache

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.interpret.neighbours import decoder_neighbours
from sparsesteer.interpret.stats import latent_stats
from sparsesteer.interpret.store import load_stats, sae_tensors_sha256, save_stats
from sparsesteer.sae import SAEConfig, build
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = make_activation_cache(tmp_path_factory.mktemp("c") / "cache", n_images=300, positions=(0, 1, 2, 3, 4))
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=16, n_latents=24, k=3))
    cache = ActivationCache.open(path)
    return cache, sae


def brute(cache, sae, tokens="all"):
    view = cache.rows(None, tokens)
    x = view.read(0, view.n_rows).float()
    with torch.no_grad():
        dense = sae.encode(x).to_dense(sae.n_latents).double().numpy()
    idx = view.row_index(0, view.n_rows)
    m = len(np.unique(idx[:, 1]))
    return dense, idx, m


def top_ref(score_il, n):
    """Per latent: images sorted by (-score, image), positive scores only, first n."""
    out_img, out_val = [], []
    for j in range(score_il.shape[1]):
        s = score_il[:, j]
        order = np.lexsort((np.arange(len(s)), -s))
        order = [i for i in order if s[i] > 0][:n]
        out_img.append(order + [-1] * (n - len(order)))
        out_val.append([s[i] for i in order] + [0.0] * (n - len(order)))
    return np.array(out_img), np.array(out_val)


@pytest.mark.parametrize("batch_size", [7, 64, 4096])
def test_stats_match_brute_force(setup, batch_size):
    cache, sae = setup
    dense, idx, m = brute(cache, sae)
    stats = latent_stats(
        sae, cache.rows(None, "all"), top_n=4, n_bins=6, hist_min=0.01, hist_max=10.0, batch_size=batch_size
    )
    active = dense > 0
    assert stats.n_rows == len(dense) and stats.n_images == 300 and stats.token_positions == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(stats.fire_count, active.sum(0))
    np.testing.assert_allclose(stats.act_sum, dense.sum(0), rtol=1e-5)
    np.testing.assert_allclose(stats.act_max, dense.max(0), rtol=1e-6)
    np.testing.assert_allclose(
        stats.mean_active, np.where(active.sum(0), dense.sum(0) / np.maximum(active.sum(0), 1), 0), rtol=1e-5
    )
    # histogram: log10 bins over [0.01, 10], outside values clipped into the end bins
    edges = np.linspace(-2, 1, 7)
    for j in range(sae.n_latents):
        v = np.log10(dense[active[:, j], j])
        b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, 5)
        np.testing.assert_array_equal(stats.hist_counts[j], np.bincount(b, minlength=6))
    np.testing.assert_allclose(stats.hist_centres, 10 ** ((edges[:-1] + edges[1:]) / 2))
    assert stats.hist_counts.shape == (sae.n_latents, len(stats.hist_centres))
    # per image: tokens in view order (CLS = token 0)
    per_img = dense.reshape(300, m, -1)  # [image, token, latent]
    np.testing.assert_array_equal(stats.image_count, (per_img > 0).any(1).sum(0))
    labels = cache.labels
    for name, score in {
        "max": per_img.max(1),
        "cls": per_img[:, 0],
        "patch": per_img[:, 1:].max(1),
    }.items():
        img, val = top_ref(score, 4)
        top = stats.top[name]
        np.testing.assert_array_equal(top.images, img, err_msg=name)
        np.testing.assert_allclose(top.values, val, rtol=1e-6)
        for j in range(sae.n_latents):
            for r in range(4):
                if img[j, r] >= 0:
                    np.testing.assert_allclose(top.tokens[j, r], per_img[img[j, r], :, j], rtol=1e-6)
                    assert top.labels[j, r] == labels[img[j, r]]
                else:
                    assert top.labels[j, r] == -1 and not top.tokens[j, r].any()


def test_stats_ties_go_to_lower_image():
    """Hand-worked: identical rows on every image -> the same score everywhere -> images 0..n-1."""
    import tempfile
    from pathlib import Path

    from sparsesteer.activations.cache import CacheSettings, CacheWriter

    d = 4
    with tempfile.TemporaryDirectory() as tmp:
        s = CacheSettings(
            hooks=("h",),
            d={"h": d},
            tokens="all",
            token_positions=(0, 1),
            cls_position=0,
            n_images=9,
            dtype="float32",
            model={"id": "m"},
            dataset={"name": "unit"},
            split="train",
        )
        with CacheWriter.open(Path(tmp) / "c", s) as w:
            acts = np.tile(np.array([[1, 0, 0, 0], [0, 2, 0, 0]], np.float32), (9, 1))
            w.write_shard({"h": acts}, np.repeat(np.arange(9), 2), np.tile([0, 1], 9))
            w.finish(np.arange(9) % 3)
        sae = build(SAEConfig(arch="topk", d_in=d, n_latents=d, k=1))
        with torch.no_grad():
            sae.W_enc.copy_(torch.eye(d))
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        stats = latent_stats(sae, ActivationCache.open(Path(tmp) / "c").rows(), top_n=3, batch_size=4)
    assert stats.top["max"].images[0].tolist() == [0, 1, 2]
    assert stats.top["max"].values[1].tolist() == [2, 2, 2]
    assert stats.top["max"].tokens[1, 0].tolist() == [0, 2]
    assert stats.top["cls"].images[1].tolist() == [-1, -1, -1]  # latent 1 fires on patches only
    assert stats.fire_count.tolist() == [9, 9, 0, 0]
    assert stats.label_distribution(0) == {"0": 1, "1": 1, "2": 1}


def test_neighbours_match_full_matrix():
    torch.manual_seed(1)
    W = torch.randn(50, 8)
    W[7] = W[3] * 2  # a duplicate direction: cosine 1 with latent 3
    nb = decoder_neighbours(W, k=5, block=7)
    U = torch.nn.functional.normalize(W.double(), dim=1)
    C = (U @ U.T).numpy()
    np.fill_diagonal(C, -np.inf)
    for j in range(50):
        order = np.lexsort((np.arange(50), -C[j]))[:5]
        np.testing.assert_array_equal(nb.indices[j], order)
        np.testing.assert_allclose(nb.cosine[j], C[j, order], atol=1e-5)
    assert nb.indices[3, 0] == 7 and nb.indices[7, 0] == 3
    with pytest.raises(SparsesteerError, match="k must be"):
        decoder_neighbours(W, k=50)


def test_neighbours_ties_to_lower_index():
    W = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])
    nb = decoder_neighbours(W, k=2, block=2)
    assert nb.indices.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1]]


@pytest.mark.parametrize("block", [1, 7, 64])
def test_neighbours_with_ties_across_the_cut_match_a_full_sort(block):
    """60 latents over 6 directions: every row has exact ties at its k-th cosine (each direction is
    held by about 10 latents), resolved to the lower index as a full (cosine, index) sort of the row does."""
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(6, 8, generator=g)
    W = dirs[torch.randint(0, 6, (60,), generator=g)]  # bitwise-equal rows: exactly equal cosines
    k = 13
    nb = decoder_neighbours(W, k=k, block=block)
    U = W / W.norm(dim=1, keepdim=True)
    C = (U.double() @ U.double().T).numpy()  # equal rows give equal cosines here too
    np.fill_diagonal(C, -np.inf)
    crossing = 0
    for j in range(60):
        order = np.lexsort((np.arange(60), -C[j]))[:k]
        crossing += int((C[j] == C[j, order[-1]]).sum() > (C[j, order] == C[j, order[-1]]).sum())
        np.testing.assert_array_equal(nb.indices[j], order)
        np.testing.assert_allclose(nb.cosine[j], C[j, order], atol=1e-6)
    assert crossing > 30  # the case under test does occur


@pytest.mark.parametrize("screen", [True, False])
def test_neighbours_screened_in_bf16_are_exact(screen, monkeypatch):
    """The bf16 screen and the plain fp32 pass give the same neighbours; clusters of near-duplicate
    directions (cosines closer than the bf16 error) send their rows to the fp32 fallback."""
    import sparsesteer.interpret.neighbours as nbm

    g = torch.Generator().manual_seed(4)
    W = torch.randn(400, 24, generator=g)
    W[:60] = W[0] + 1e-3 * torch.randn(60, 24, generator=g)  # 60 latents within the bf16 error of each other
    redone = []
    full = nbm._full_rows
    monkeypatch.setattr(nbm, "_full_rows", lambda W_, rows, k: (redone.append(len(rows)), full(W_, rows, k))[1])
    nb = decoder_neighbours(W, k=10, block=64, screen=screen)
    U = torch.nn.functional.normalize(W.double(), dim=1)
    C = (U @ U.T).numpy()
    np.fill_diagonal(C, -np.inf)
    ref = np.argsort(-C, axis=1, kind="stable")[:, :10]
    ref_cos = np.take_along_axis(C, ref, 1)
    np.testing.assert_allclose(nb.cosine, ref_cos, atol=1e-6)
    # where the reference's cosines are distinct beyond fp32 rounding, the indices agree too
    clear = np.abs(np.diff(np.take_along_axis(C, np.argsort(-C, axis=1)[:, :11], 1), axis=1)).min(1) > 1e-5
    np.testing.assert_array_equal(nb.indices[clear], ref[clear])
    if screen:
        assert 0 < sum(redone) < 400  # some rows fell back, most were settled by the screen


@pytest.mark.parametrize("block", [128, 100, 450])
def test_neighbours_screen_keeps_every_row_above_its_last_candidate(block):
    """The symmetric screen (each pair once; later rows filter by their last candidate) against a dense
    bf16 product: no column outside a row's candidates beats its last one (beyond a bf16 rounding of a
    product done in another shape), and the final neighbours equal an fp64 full sort. Row 300 sits in a
    random block but close to 100 near-copies in block 0: at block 100 it and 170 others take more than
    SPILL entries from block 0 (the dense path); block 450 puts the copies and row 300 in one block."""
    import sparsesteer.interpret.neighbours as nbm

    g = torch.Generator().manual_seed(5)
    W = torch.randn(500, 32, generator=g)
    W[:100] = W[0] + 0.05 * torch.randn(100, 32, generator=g)
    W[300] = W[0] + 0.05 * torch.randn(32, generator=g)
    U = torch.nn.functional.normalize(W, dim=1)
    last, cand = nbm._screen(U.to(torch.bfloat16), 42, block)
    assert cand.shape == (500, 42) and (cand >= 0).all()
    assert not (cand == torch.arange(500)[:, None]).any()  # never itself
    assert all(len(set(r)) == 42 for r in cand.tolist())
    dense = (U.to(torch.bfloat16) @ U.to(torch.bfloat16).T).float()
    dense.fill_diagonal_(-float("inf"))
    outside = dense.scatter(1, cand, -float("inf"))
    assert (outside.max(1).values <= last + 2.0**-8).all()
    assert (torch.gather(dense, 1, cand).min(1).values >= last - 2.0**-8).all()
    assert (cand[300] < 100).all()  # its candidates: the near-copies, wherever they were taken in
    nb = decoder_neighbours(W, k=10, block=block, screen=True)
    C = (torch.nn.functional.normalize(W.double(), dim=1) @ torch.nn.functional.normalize(W.double(), dim=1).T).numpy()
    np.fill_diagonal(C, -np.inf)
    ref = np.argsort(-C, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(nb.cosine, np.take_along_axis(C, ref, 1), atol=1e-6)
    clear = np.abs(np.diff(np.take_along_axis(C, np.argsort(-C, axis=1)[:, :11], 1), axis=1)).min(1) > 1e-5
    np.testing.assert_array_equal(nb.indices[clear], ref[clear])


def test_save_load_roundtrip_and_refusals(setup, tmp_path):
    cache, sae = setup
    stats = latent_stats(sae, cache.rows(None, "all"), top_n=3)
    stats.neighbours = decoder_neighbours(sae.W_dec, k=2)
    sae_dir = sae.save(tmp_path / "sae")
    from sparsesteer.interpret.store import sae_weights_sha256

    stats.meta = {
        "sae": {"weights_sha256": sae_weights_sha256(sae_dir), "tensors_sha256": sae_tensors_sha256(sae)},
        "activations": {"settings_sha256": cache.settings_sha256},
        "dataset": {"spec": "unit", "split": "train"},
    }
    out = save_stats(stats, tmp_path / "stats")
    back = load_stats(out, sae_dir, activations=cache.path, dataset="unit")
    load_stats(out, sae)
    for f in ("fire_count", "image_count", "act_sum", "act_max", "hist_centres", "hist_counts"):
        np.testing.assert_array_equal(getattr(back, f), getattr(stats, f))
    for name in stats.top:
        for f in ("values", "images", "labels"):
            np.testing.assert_array_equal(getattr(back.top[name], f), getattr(stats.top[name], f))
        tok = stats.top[name].tokens  # stored as 0..255 of each image's largest activation
        np.testing.assert_allclose(back.top[name].tokens, tok, rtol=0, atol=tok.max() / 510 * (1 + 1e-5))
        np.testing.assert_array_equal(back.top[name].tokens.max(2), tok.max(2))  # the largest exactly
    np.testing.assert_array_equal(back.neighbours.indices, stats.neighbours.indices)
    other = build(SAEConfig(arch="topk", d_in=16, n_latents=24, k=3))
    other_dir = other.save(tmp_path / "other")
    with pytest.raises(SparsesteerError, match="different SAE: weights_sha256"):
        load_stats(out, other_dir)
    with pytest.raises(SparsesteerError, match="different SAE: tensors_sha256"):
        load_stats(out, other)
    with pytest.raises(SparsesteerError, match="dataset 'unit', not 'cifar10'"):
        load_stats(out, dataset="cifar10")
    other_cache = make_activation_cache(tmp_path / "c2", n_images=100, positions=(0, 1))
    with pytest.raises(SparsesteerError, match="different activation cache: settings_sha256"):
        load_stats(out, activations=other_cache)


def _synthetic_stats(L=512, n=10, m=50, n_images=5000, seed=0, samples=True):
    """Statistics with a real run's shapes (3 rankings, m tokens) but random contents: `max` and
    `patch` share most images (as they do when a latent's best token is a patch), `cls` does not."""
    from sparsesteer.interpret.neighbours import Neighbours
    from sparsesteer.interpret.stats import LatentStats, TopImages

    rng = np.random.default_rng(seed)
    top = {}
    base = np.stack([rng.choice(n_images, n, replace=False) for _ in range(L)])
    act = rng.random((n_images, m), dtype=np.float32) * (rng.random((n_images, m)) < 0.3)
    act[:, 1] += 0.01  # every image active on a patch
    for r, imgs in (("max", base), ("patch", base.copy()), ("cls", (base + 7) % n_images)):
        imgs[:, -2:] = -1 if r == "cls" else imgs[:, -2:]  # a few empty slots
        tok = np.where((imgs >= 0)[..., None], act[imgs], 0).astype(np.float32)
        vals = tok.max(2)
        top[r] = TopImages(vals, imgs.astype(np.int64), tok, np.where(imgs >= 0, imgs % 1000, -1))
    top["patch"].images[:, [0, 1]] = top["patch"].images[:, [1, 0]]  # another order, same images
    top["patch"].tokens[:, [0, 1]] = top["patch"].tokens[:, [1, 0]]
    top["patch"].values[:, [0, 1]] = top["patch"].values[:, [1, 0]]
    top["patch"].labels[:, [0, 1]] = top["patch"].labels[:, [1, 0]]
    stats = LatentStats(
        n_rows=n_images * m, n_images=n_images, token_positions=list(range(m)),
        fire_count=rng.integers(0, 10**6, L), image_count=rng.integers(0, 10**5, L), act_sum=rng.random(L),
        act_max=rng.random(L).astype(np.float32), hist_centres=np.logspace(-3, 3, 50),
        hist_counts=rng.integers(0, 60000, (L, 50)), top=top,
        neighbours=Neighbours(rng.integers(0, L, (L, 10)), rng.random((L, 10), dtype=np.float32)),
    )  # fmt: skip
    stats.meta = {"classes": [str(i) for i in range(1000)], "activations": {"cls_position": 0}}
    if samples:  # 4 random images in each of 4 intervals, and 4 random active images, every slot full
        from sparsesteer.interpret.stats import SampledImages

        img = rng.integers(0, n_images, (L, 4, 4))
        bounds = np.sort(rng.random((L, 5)), 1).astype(np.float32)
        stats.intervals = SampledImages(img, rng.random((L, 4, 4), dtype=np.float32), img % 1000,
                                        rng.integers(4, 10**4, (L, 4)), bounds)  # fmt: skip
        stats.random = SampledImages(
            img[:, 0], rng.random((L, 4), dtype=np.float32), img[:, 0] % 1000, stats.image_count
        )
    return stats


def test_stored_statistics_are_compact_and_read_back(tmp_path):
    """Issue 22 item 2: <= 2 KB per latent at 10 top images per ranking (50 tokens, 1,000 classes,
    10 neighbours); an image in two rankings is stored once; everything reads back (tokens to within
    half a level of 255)."""
    from safetensors.numpy import load_file

    stats = _synthetic_stats()
    L = stats.n_latents
    out = save_stats(stats, tmp_path / "s")
    size = (out / "stats.safetensors").stat().st_size
    assert size / L <= 2048, size / L
    t = load_file(str(out / "stats.safetensors"))
    assert t["examples.tokens"].dtype == np.uint8
    distinct = [len({int(i) for top in stats.top.values() for i in top.images[j] if i >= 0}) for j in range(L)]
    assert t["examples.count"].tolist() == distinct  # each image once per latent: about 18, not 28
    assert len(t["examples.tokens"]) == sum(distinct) < 0.7 * sum((top.images >= 0).sum() for top in stats.top.values())
    back = load_stats(out)
    for r, top in stats.top.items():
        np.testing.assert_array_equal(back.top[r].images, top.images)
        np.testing.assert_array_equal(back.top[r].labels, top.labels)
        np.testing.assert_array_equal(back.top[r].values, top.values)
        scale = top.tokens.max(2, keepdims=True)
        assert (np.abs(back.top[r].tokens - top.tokens) <= scale / 510 * (1 + 1e-5)).all()
    np.testing.assert_array_equal(back.hist_counts, stats.hist_counts)
    np.testing.assert_array_equal(back.neighbours.indices, stats.neighbours.indices)
    np.testing.assert_array_equal(back.neighbours.cosine, stats.neighbours.cosine)
    for name in ("intervals", "random"):  # uint16 images here (5,000), float16 values
        a, b = getattr(stats, name), getattr(back, name)
        assert t[f"{name}.images"].dtype == np.uint16 and t[f"{name}.values"].dtype == np.float16
        np.testing.assert_array_equal(b.images, a.images)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_array_equal(b.counts, a.counts)
        np.testing.assert_allclose(b.values, a.values, rtol=2**-11)
    np.testing.assert_array_equal(back.intervals.bounds, stats.intervals.bounds)
    # a slot pointing past its latent's examples (files edited consistently) is named, not an IndexError
    import json

    from safetensors.numpy import save_file

    from sparsesteer.interpret.store import meta_sha256
    from sparsesteer.utils import io

    t["top.cls.example"][3, 0] = t["examples.count"][3]
    save_file(t, str(out / "stats.safetensors"))
    meta = json.loads((out / "stats.json").read_text())
    meta["tensors_sha256"] = io.sha256_file(out / "stats.safetensors")
    meta["meta_sha256"] = meta_sha256(meta)
    (out / "stats.json").write_text(json.dumps(meta))
    with pytest.raises(SparsesteerError, match=r"top.cls.example points outside its latent's examples"):
        load_stats(out)


def test_statistics_without_samples_load_as_before(tmp_path):
    """Version 2 statistics written before the random samples (no intervals.* / random.* tensors) load,
    with `intervals` and `random` None."""
    from safetensors.numpy import load_file

    out = save_stats(_synthetic_stats(L=8, samples=False), tmp_path / "s")
    assert not [k for k in load_file(str(out / "stats.safetensors")) if k.startswith(("intervals.", "random."))]
    back = load_stats(out)
    assert back.intervals is None and back.random is None and back.top["max"].images.shape == (8, 10)


def test_statistics_of_an_older_format_are_refused_by_name(tmp_path):
    import json

    from sparsesteer.interpret.store import meta_sha256

    out = save_stats(_synthetic_stats(L=8), tmp_path / "s")
    meta = json.loads((out / "stats.json").read_text())
    meta["format_version"] = 1  # as `interpret` wrote them before the compact store
    meta["meta_sha256"] = meta_sha256(meta)
    (out / "stats.json").write_text(json.dumps(meta))
    with pytest.raises(SparsesteerError, match=r"stats.json: statistics format version 1, this sparsesteer reads"):
        load_stats(out)


def test_running_top_sort_paths_agree():
    """The packed-key stable sort (images in increasing order) and the three-key sort give the same top-n,
    including ties in value across chunks."""
    from sparsesteer.interpret.stats import _RunningTop

    rng = np.random.default_rng(3)
    L, n, m = 6, 3, 2
    tops = {True: _RunningTop(L, n, m), False: _RunningTop(L, n, m)}
    for chunk in range(4):
        imgs = np.arange(5) + 5 * chunk
        rows = rng.integers(0, 5 * m, 40)
        lat = rng.integers(0, L, 40)
        val = rng.choice([0.5, 1.0, 2.0], 40).astype(np.float32)
        keep = np.unique((rows // m) * L * 100 + lat * m + rows % m, return_index=True)[
            1
        ]  # one value per (row, latent)
        rows, lat, val = rows[keep], lat[keep], val[keep]
        keys = (rows // m) * L + lat
        o = np.argsort(keys, kind="stable")
        ks = keys[o]
        starts = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))
        for ordered, t in tops.items():
            t.update(ks[starts], np.maximum.reduceat(val[o], starts), imgs, keys, rows % m, val, ordered)
    for f in ("values", "images", "tokens"):
        np.testing.assert_array_equal(getattr(tops[True], f), getattr(tops[False], f))


def _dense_scores(cache, sae, n_images):
    """[image, latent] max activation over the image's tokens, from dense codes."""
    dense, _, m = brute(cache, sae)
    return dense.reshape(-1, m, sae.n_latents)[:n_images].max(1)


@pytest.mark.parametrize("batch_size", [64, 4096])
def test_samples_lie_in_their_intervals_and_fire(setup, batch_size):
    """Issue 22 item 4, against dense codes: every sampled image fires with the value recorded, lies in
    its interval, is drawn without repeats from it (min(k, count) of them); the intervals split the
    latent's occupied histogram bins evenly; the counts are the images per interval; random images fire."""
    cache, sae = setup
    score = _dense_scores(cache, sae, 300)
    stats = latent_stats(sae, cache.rows(None, "all"), n_bins=12, hist_min=0.01, hist_max=10.0, batch_size=batch_size)
    iv, rd = stats.intervals, stats.random
    assert iv.images.shape == (24, 4, 4) and rd.images.shape == (24, 4)
    edges = 10 ** np.linspace(-2, 1, 13)
    for j in range(24):
        s = score[:, j]
        active = np.flatnonzero(s > 0)
        assert rd.counts[j] == len(active) == stats.image_count[j]
        got = rd.images[j][rd.images[j] >= 0]
        assert len(got) == min(4, len(active)) == len(set(got.tolist())) and (s[got] > 0).all()
        np.testing.assert_allclose(rd.values[j][: len(got)], s[got], rtol=1e-5)
        bins = np.clip(np.searchsorted(edges, s[active], side="right") - 1, 0, 11)
        first, last = bins.min(), bins.max()
        n_int = min(4, last - first + 1)
        b = iv.bounds[j]
        assert np.isnan(b[n_int + 1 :]).all() and np.isfinite(b[:n_int]).all()
        want = [0.0 if e == 0 else edges[e] for e in first + (np.arange(n_int + 1) * (last - first + 1)) // n_int]
        want[-1] = np.inf if last == 11 else want[-1]
        np.testing.assert_allclose(b[: n_int + 1], want, rtol=1e-6)
        for i in range(4):
            got = iv.images[j, i][iv.images[j, i] >= 0]
            if i >= n_int:
                assert not len(got) and iv.counts[j, i] == 0
                continue
            inside = active[(s[active] >= b[i]) & (s[active] < b[i + 1])]
            assert iv.counts[j, i] == len(inside)
            assert len(got) == min(4, len(inside)) == len(set(got.tolist()))
            assert set(got.tolist()) <= set(inside.tolist())
            np.testing.assert_allclose(iv.values[j, i][: len(got)], s[got], rtol=1e-5)
            assert (np.diff(iv.values[j, i][: len(got)]) <= 0).all()  # shown highest first
        assert iv.counts[j].sum() == len(active)


def test_samples_are_the_same_for_a_seed_and_differ_across_seeds(setup):
    cache, sae = setup
    a = latent_stats(sae, cache.rows(None, "all"), batch_size=64, seed=5, progress=False)
    b = latent_stats(sae, cache.rows(None, "all"), batch_size=4096, seed=5, progress=False)
    c = latent_stats(sae, cache.rows(None, "all"), batch_size=4096, seed=6, progress=False)
    for name in ("intervals", "random"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
        assert (getattr(a, name).images != getattr(c, name).images).any()
    assert a.meta["samples"] == {"k": 4, "n_intervals": 4, "seed": 5, "method": "bottom-k hash priority"}
    assert latent_stats(sae, cache.rows(None, "all"), samples=0, progress=False).intervals is None


def test_samples_are_uniform_over_seeds(setup):
    """Over 300 seeds, each of the images a latent fires on (in one interval, and overall) is drawn
    about k / eligible of the time: within 5 standard deviations of the binomial count."""
    cache, sae = setup
    n_img = 12
    score = _dense_scores(cache, sae, n_img)
    n_active = (score > 0).sum(0)
    pos = np.where(score > 0, score, np.nan)
    spans = (np.nanmin(pos, 0) < 1) & (np.nanmax(pos, 0) >= 1)  # active on both sides of a bin edge
    j = int(np.flatnonzero((n_active >= 5) & (n_active <= 8) & spans)[0])
    eligible = np.flatnonzero(score[:, j] > 0)
    k, seeds = 2, 300
    view = cache.rows(None, "all")
    hits_r = {int(i): 0 for i in eligible}
    hits_i: dict[int, int] = {}
    kw = {"max_images": n_img, "samples": k, "n_intervals": 1, "n_bins": 4, "hist_min": 0.1, "hist_max": 10.0}
    first = latent_stats(sae, view, progress=False, **kw)
    assert first.intervals.counts[j, 0] == len(eligible)  # one interval, merged from two bins' samples
    assert (first.intervals.bounds[j, :2] < 1).tolist() == [True, False]
    for seed in range(seeds):
        st = latent_stats(sae, view, seed=seed, progress=False, **kw)
        for i in st.random.images[j]:
            hits_r[int(i)] += 1
        for i in st.intervals.images[j, 0]:
            hits_i[int(i)] = hits_i.get(int(i), 0) + 1
    p = k / len(eligible)
    lo, hi = seeds * p - 5 * np.sqrt(seeds * p * (1 - p)), seeds * p + 5 * np.sqrt(seeds * p * (1 - p))
    for hits in (hits_r, hits_i):
        assert set(hits) == set(hits_r) and sum(hits.values()) == k * seeds
        assert all(lo <= h <= hi for h in hits.values()), (hits, lo, hi)


class _ListView:
    """A row view over rows in memory whose rows (2 tokens per image, CLS first) belong to `images` in
    that order; unlike a cache (whose writer refuses it), an image may come twice."""

    def __init__(self, images: list[int], acts: np.ndarray):
        from types import SimpleNamespace

        self.acts, self.images = torch.from_numpy(acts), np.asarray(images)
        self.n_rows, self.d = len(acts), acts.shape[1]
        settings = SimpleNamespace(cls_position=0)
        self.cache = SimpleNamespace(tokens_per_image=2, settings=settings, labels=None, path="rows")

    def row_index(self, start: int, stop: int) -> np.ndarray:
        r = np.arange(start, stop)
        return np.stack([self.images[r // 2], r % 2], axis=1)

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.acts[start:stop]


def _identity_stats(images: list[int], acts: np.ndarray, **kw):
    """latent_stats of an identity TopK SAE (k=1) over `_ListView(images, acts)`."""
    d = acts.shape[1]
    sae = build(SAEConfig(arch="topk", d_in=d, n_latents=d, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return latent_stats(sae, _ListView(images, acts), progress=False, **kw)


@pytest.mark.parametrize("batch_size", [2, 4, 100])
def test_an_image_is_in_a_ranking_once(batch_size):
    """Issue 22 item 4: a view holding image 0 three times listed it up to three times in a ranking; now
    once, with its best copy's score and tokens, whether the copies share a chunk or not (batch_size 2:
    one image per chunk). A cache cannot hold an image twice (its writer refuses it) and a ranking
    scores an image once (max over its tokens), so `interpret` runs never had duplicates; a row source
    of another kind could."""
    images = [0, 1, 0, 2, 0]
    acts = np.zeros((10, 2), np.float32)  # rows: (CLS, patch) of each image in turn
    acts[:, 0] = [5, 1, 3, 0, 6, 9, 2, 0, 4, 0]  # latent 0 on image 0's copies: [5, 1], [6, 9], [4, 0]
    acts[7, 1] = 7  # latent 1 fires on image 2's patch only
    stats = _identity_stats(images, acts, top_n=4, batch_size=batch_size)
    top = stats.top["max"]
    assert top.images[0].tolist() == [0, 1, 2, -1]
    assert top.values[0].tolist() == [9, 3, 2, 0]
    assert top.tokens[0, 0].tolist() == [6, 9]  # the best copy's tokens
    assert stats.top["cls"].images[0].tolist() == [0, 1, 2, -1]
    assert stats.top["cls"].values[0].tolist() == [6, 3, 2, 0]
    assert stats.top["patch"].images[0].tolist() == [0, -1, -1, -1]
    assert stats.top["max"].images[1].tolist() == [2, -1, -1, -1]
    assert sorted(stats.random.images[0].tolist()) == [-1, 0, 1, 2]  # the random sample: once each too
