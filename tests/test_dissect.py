"""CLIP-Dissect labels (interpret/dissect.py): SoftWPMI against a float64 hand computation, a planted
case whose right label is known, `interpret --labels` end to end on a tiny CLIP (statistics, browser
data), and the shipped testbed labelling class-tied latents with their CIFAR-10 class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_folder_dataset

from sparsesteer.cli import main
from sparsesteer.interpret.dissect import P_END, P_START, inclusion, soft_wpmi, top_images
from sparsesteer.interpret.store import load_stats
from sparsesteer.sae import SAEConfig, build


def _reference(acts_nl: np.ndarray, sims_nm: np.ndarray, n_top: int, a: float = 10.0, lam: float = 1.0) -> np.ndarray:
    """SoftWPMI [L, M] written out from its definition (dissect.py's docstring) in float64 loops; NaN rows:
    latents that never fire."""
    n, L = acts_nl.shape
    M = sims_nm.shape[1]
    e = np.exp(a * sims_nm - (a * sims_nm).max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)  # p(t_m | x_i)
    ranked = [sorted((i for i in range(n) if acts_nl[i, k] > 0), key=lambda i: (-acts_nl[i, k], i))[:n_top]
              for k in range(L)]  # fmt: skip
    sizes = sorted(len(s) for s in ranked if s)
    cap = sizes[-2] if len(sizes) > 1 else sizes[-1]  # a set larger than all others: cut to the runner-up
    ranked = [s[:cap] for s in ranked]

    def log_p_set(k: int, m: int, size: int) -> float:  # log p(t_m | first `size` images of B_k)
        total = 0.0
        for r, i in enumerate(ranked[k][:size]):
            q = P_START - (P_START - P_END) * r / n_top
            total += np.log(1 - q * (1 - p[i, m]))
        return total

    out = np.full((L, M), np.nan)
    for k in range(L):
        size = len(ranked[k])
        if not size:
            continue
        peers = [j for j in range(L) if len(ranked[j]) >= size]
        for m in range(M):
            prior = np.log(np.mean([np.exp(log_p_set(j, m, size)) for j in peers]))
            out[k, m] = log_p_set(k, m, size) - lam * prior
    return out


@pytest.mark.parametrize("n_top", [4, 5])
def test_soft_wpmi_matches_a_float64_hand_computation(n_top):
    """6 images, 3 concepts; latents active on 5, 4 and 2 images and one dead: sets of different sizes
    (n_top 4: 4, 4, 2; n_top 5: 5 cut to 4, 4, 2)."""
    acts = np.array(
        [[0.9, 0.0, 0.3, 0], [0.2, 0.5, 0, 0], [0.0, 0.7, 0, 0], [0.4, 0.0, 0, 0], [0.6, 0.1, 0, 0], [0.3, 0.2, 0.8, 0]]
    )
    sims = np.array(
        [[0.30, 0.10, 0.05], [0.25, 0.20, 0.10], [0.05, 0.32, 0.12], [0.28, 0.08, 0.15], [0.22, 0.11, 0.30], [0.1, 0.1, 0.2]]
    )  # fmt: skip
    ref = _reference(acts, sims, n_top)
    top = top_images(acts, n_top)
    want = [[0, 4, 3, 5, 1], [2, 1, 5, 4, -1], [5, 0, -1, -1, -1], [-1] * 5]
    np.testing.assert_array_equal(top, np.array(want)[:, :n_top])
    idx, score = soft_wpmi(top, sims, k=3)
    np.testing.assert_array_equal(idx[:3], np.argsort(-ref[:3], axis=1))
    np.testing.assert_allclose(score[:3], np.sort(ref[:3], axis=1)[:, ::-1], rtol=1e-5, atol=1e-5)
    assert (idx[3] == -1).all() and np.isnan(score[3]).all()  # dead: no label, and in no mean
    # blocks of one latent give the same answer (the two passes over blocks)
    idx1, score1 = soft_wpmi(top, sims, k=2, block=1)
    np.testing.assert_array_equal(idx1, idx[:, :2])
    np.testing.assert_allclose(score1, score[:, :2], rtol=1e-6)


def test_inclusion_probabilities_decrease_linearly():
    np.testing.assert_allclose(inclusion(4), [0.998, 0.991, 0.984, 0.977])


def test_a_latent_on_one_image_is_not_the_best_for_every_concept():
    """Small sets are compared with small sets: a latent firing on a single image does not get the top
    score for every concept (with one mean over all sets it would: its product has one factor)."""
    rng = np.random.default_rng(1)
    sims = 0.2 + 0.05 * rng.standard_normal((40, 3))
    acts = rng.uniform(0.1, 1, (40, 6))
    acts[1:, 5] = 0  # latent 5 fires on image 0 only
    idx, score = soft_wpmi(top_images(acts, 10), sims, k=3)
    # one mean over all sets gave it log(6) - 0.001 for all three (measured); sets of one image as peers:
    assert score[5, 0] < np.log(6) - 1 and score[5, 0] - score[5, 2] > 0.3  # 0.21, 0.03, -0.24


def test_planted_group_latent_gets_its_concept_and_a_latent_firing_everywhere_is_not_confident():
    """Concept j is most similar to the images of group j; latent 0 fires only on group 2, latent 1 on
    every image (random strength), latents 2-4 on groups 0, 1, 3."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 30)
    n = len(groups)
    sims = 0.2 + 0.02 * rng.standard_normal((n, 4))
    sims[np.arange(n), groups] += 0.1
    acts = np.zeros((n, 5))
    acts[:, 0] = np.where(groups == 2, rng.uniform(0.5, 1.0, n), 0)
    acts[:, 1] = rng.uniform(0.1, 1.0, n)
    for lat, g in ((2, 0), (3, 1), (4, 3)):
        acts[:, lat] = np.where(groups == g, rng.uniform(0.5, 1.0, n), 0)
    idx, score = soft_wpmi(top_images(acts, 20), sims, k=2)
    assert idx[0, 0] == 2 and [idx[2, 0], idx[3, 0], idx[4, 0]] == [0, 1, 3]
    # the group latent is the best latent for its concept: the most SoftWPMI allows, log(live latents)
    assert score[0, 0] == pytest.approx(np.log(5), abs=1e-3)
    assert score[1, 0] < score[0, 0] - 5  # firing everywhere: far from a confident label
    # and its best concept is hardly better than its second (no concept stands out)
    assert score[0, 0] - score[0, 1] > 5 * (score[1, 0] - score[1, 1])


def test_latent_stats_keeps_the_top_images_that_dissect_reads(tiny_clip_dir, tmp_path):
    """latent_stats(keep_images=n).probe_top = each latent's best images by max over tokens."""
    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.interpret.stats import latent_stats

    data = make_folder_dataset(tmp_path / "images", (3, 3, 3), split="train")
    cache = tmp_path / "cache"
    args = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train"]
    assert main([*args, "--hook", "blocks.0.resid_post", "--tokens", "all", "--out", str(cache), "--workers", "0"]) == 0
    torch.manual_seed(1)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=24, k=4))
    view = ActivationCache.open(cache).rows()
    stats = latent_stats(sae, view, top_n=2, batch_size=17 * 2, keep_images=5, progress=False)
    x = view.read(0, view.n_rows)
    with torch.no_grad():
        dense = sae.encode_dense(x).numpy().reshape(9, 17, 24).max(1)  # [images, latents], max over tokens
    np.testing.assert_array_equal(stats.probe_top, top_images(dense, 5))
    assert latent_stats(sae, view, top_n=2, progress=False).probe_top is None  # not asked: not kept


@pytest.fixture(scope="module")
def labelled(tiny_clip_dir, tmp_path_factory):
    """`interpret --labels` on a block-1 all-token SAE of a tiny CLIP, then `browse`."""
    tmp = tmp_path_factory.mktemp("dissect")
    data = make_folder_dataset(tmp / "images", (3, 3, 2), split="train")
    cache, hook = tmp / "cache", "blocks.1.resid_post"
    args = ["cache", "--model", str(tiny_clip_dir), "--dataset", f"folder:{data}", "--split", "train"]
    assert main([*args, "--hook", hook, "--tokens", "all", "--out", str(cache), "--workers", "0"]) == 0
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=32, n_latents=40, k=3))
    sae_dir = sae.save(tmp / "sae", hook=hook, tokens="all")
    words = tmp / "words.txt"
    words.write_text("cat\ndog\ncar\ntree\nboat\n")
    out = tmp / "stats"
    rc = main(
        [
            "interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(out), "--top-n", "3",
            "--labels", str(words), "--labels-k", "3", "--labels-images", "4", "--text-cache", str(tmp / "text"),
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert rc == 0
    site = tmp / "site"
    assert main(["browse", "--stats", str(out), "--sae", str(sae_dir), "--out", str(site)]) == 0
    return tmp, cache, sae, out, site


def test_interpret_labels_match_a_direct_computation(labelled, tiny_clip_dir):
    """The stored labels are SoftWPMI of the cache's images (max over their tokens) embedded by the
    cache's model, with the words' text embeddings."""
    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.data import open_dataset
    from sparsesteer.interpret.dissect import image_concept_similarity
    from sparsesteer.models.backbone import load_backbone

    tmp, cache, sae, out, _ = labelled
    stats = load_stats(out)
    meta = json.loads((out / "stats.json").read_text())
    assert meta["dissect"]["words"] == ["cat", "dog", "car", "tree", "boat"] and meta["dissect"]["top_images"] == 4
    assert stats.dissect.indices.shape == (40, 3)
    view = ActivationCache.open(cache).rows()
    with torch.no_grad():
        dense = sae.encode_dense(view.read(0, view.n_rows)).numpy().reshape(8, 17, 40).max(1)
    ds = open_dataset(f"folder:{tmp / 'images'}", "train")
    sims = image_concept_similarity(load_backbone(str(tiny_clip_dir)), ds, range(8), stats.dissect.words)
    idx, score = soft_wpmi(top_images(dense, 4), sims, k=3)
    np.testing.assert_array_equal(stats.dissect.indices, idx)
    np.testing.assert_allclose(stats.dissect.scores, score, rtol=1e-4, atol=1e-4)
    dead = stats.fire_count == 0
    assert (stats.dissect.indices[dead] == -1).all() and (stats.dissect.indices[~dead] >= 0).all()


def test_labels_are_on_the_browser_pages_and_found_by_search(labelled):
    from sparsesteer.interpret.browser.site import read_data

    _, _, _, out, site = labelled
    stats = load_stats(out)
    meta = read_data(site, "meta")
    assert meta["dissect"] is True
    j = int(np.argmax(stats.fire_count))
    label = stats.dissect.words[int(stats.dissect.indices[j, 0])]
    rows = {r[0]: r for p in range(meta["orders"]["id"]["n_pages"]) for r in read_data(site, f"pages/id-{p}")}
    assert rows[j][5] == label and rows[j][6] == pytest.approx(float(stats.dissect.scores[j, 0]), rel=1e-2)
    rec = read_data(site, f"latents/{j // meta['chunk_size']}")[j % meta["chunk_size"]]
    assert rec["dissect"][0][0] == label and len(rec["dissect"]) == 3
    words = read_data(site, "words")
    w = words.index(label)
    found = read_data(site, f"words/{w // meta['word_groups']}")[str(w)]
    labelled_by_it = [int(i) for i in np.flatnonzero(stats.dissect.indices[:, 0] == stats.dissect.indices[j, 0])]
    assert set(labelled_by_it) <= set(found) and j in found
    assert all("word label" in (site / "assets" / f).read_text() for f in ("index.js",))


def test_interpret_without_labels_keeps_its_files(labelled, tmp_path):
    """No --labels: no labels computed or stored (and such statistics load as before)."""
    tmp, cache, _, _, _ = labelled
    out = tmp_path / "plain"
    args = ["interpret", "--sae", str(tmp / "sae"), "--activations", str(cache), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    meta = json.loads((out / "stats.json").read_text())
    assert "dissect" not in meta and load_stats(out).dissect is None


TESTBED_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_testbed_latents_tied_to_a_class_get_its_name(tmp_path):
    """On the shipped testbed CLIP and 200 shipped CIFAR-10 test images: an SAE at block 3 (CLS) whose
    latent c reads the class-c mean-difference direction (firing on about 15% of the images) plus
    random latents; with the 10 class names as the vocabulary, at least 8 class latents are labelled
    with their class (measured: all but cat and dog, which swap by 0.01), every one has it among its
    best two, and each outscores every random latent."""
    from sparsesteer.data import limit_dataset, open_dataset
    from sparsesteer.data.batches import image_batches
    from sparsesteer.models import testbed as tb_model
    from sparsesteer.models.backbone import load_backbone

    if not (tb_model.shipped_dir() / "card.json").is_file():
        pytest.skip("no trained testbed in this checkout")
    hook, n = "blocks.3.resid_post", 200
    bb = load_backbone("testbed")
    ds = limit_dataset(open_dataset("cifar10-sample", "test"), n, 0)
    xs, ys = [], []
    for b in image_batches(ds, bb.preprocessor, batch_size=100, workers=0):
        with torch.no_grad():
            xs.append(bb.run(b.pixels, [hook])[hook][:, 0].float())
        ys.append(b.labels)
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    rows, bias = [], []
    for c in range(10):
        d = x[y == c].mean(0) - x[y != c].mean(0)
        d = d / d.norm()
        rows.append(d)
        bias.append(-float((x @ d).quantile(0.85)))
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="relu", d_in=x.shape[1], n_latents=16))
    with torch.no_grad():
        rnd = torch.randn(6, x.shape[1])
        sae.W_enc.copy_(torch.cat([torch.stack(rows), rnd / rnd.norm(dim=1, keepdim=True)]))
        sae.b_enc.copy_(torch.tensor(bias + [0.0] * 6))
        sae.b_dec.zero_()
        sae.W_dec.copy_(sae.W_enc)
    sae_dir = sae.save(tmp_path / "sae", hook=hook, tokens="cls")
    out = tmp_path / "stats"
    rc = main(
        ["interpret", "--sae", str(sae_dir), "--model", "testbed", "--dataset", "cifar10-sample", "--split", "test",
         "--limit", str(n), "--tokens", "cls", "--labels", "classes", "--labels-images", "20", "--neighbours", "0",
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    stats = load_stats(out)
    assert stats.dissect.words == TESTBED_CLASSES
    best = stats.dissect.indices[:10, 0]
    # the testbed itself tells cats from dogs poorly (zero-shot top-1 about 0.5): those two may swap
    assert (best == np.arange(10)).sum() >= 8, [stats.dissect.words[i] for i in best]
    assert all(c in stats.dissect.indices[c, :2] for c in range(10))
    live = stats.fire_count[10:] > 0
    assert stats.dissect.scores[:10, 0].min() > np.nanmax(np.where(live, stats.dissect.scores[10:, 0], np.nan))


def test_labels_in_a_real_browser(labelled):
    """Headless Chromium (skips without Playwright or Chromium, as tests/test_interpret_browser_chromium.py):
    the index has the label column and finds a latent by its label; the latent page shows the label."""
    from test_interpret_browser_chromium import _chromium

    exe = _chromium()
    from playwright.sync_api import sync_playwright

    _, _, _, out, site = labelled
    stats = load_stats(out)
    j = int(np.argmax(stats.fire_count))
    label = stats.dissect.words[int(stats.dissect.indices[j, 0])]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto((site / "index.html").as_uri() + "#order=id&page=0")
        pg.wait_for_function("document.body.dataset.ready === '1'")
        assert pg.inner_text("#latents thead tr th:last-child") == "label (score)"
        cell = f"#latents tbody tr[data-latent='{j}'] td.label"
        assert pg.inner_text(cell).startswith(label + " (")
        pg.fill("#q", label)
        pg.wait_for_function("document.querySelector('#pageinfo').textContent === 'search'")
        assert j in [
            int(x) for x in pg.eval_on_selector_all("#latents tbody tr", "rs => rs.map(r => r.dataset.latent)")
        ]
        pg.goto((site / "latent.html").as_uri() + f"#{j}")
        pg.wait_for_function(f"document.body.dataset.ready === '{j}'")
        assert f"label (CLIP-Dissect){label} (" in pg.inner_text("#facts").replace("\n", "")
        assert pg.eval_on_selector_all("#dissect li", "ls => ls.length") == 3
        browser.close()
    assert errors == []
