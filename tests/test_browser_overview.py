"""The index page's overview (interpret/browser/overview.py): dead and dense counts, the frequency
histogram and the decoder map, each against an independent computation; the site's overview and
map data; the index rows' active-image counts and per-page summaries the filters skip pages by."""

from __future__ import annotations

import base64
import sys
import types

import numpy as np
import pytest

from sparsesteer.interpret.browser import overview as ov
from sparsesteer.interpret.browser.site import read_data, write_site


def _u16(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<u2")


def test_dead_and_dense_counts():
    n_rows = 1000
    fire = np.array([0, 0, 1, 100, 101, 999, 1000, 0, 50])  # 100/1000 = 10% is not above the threshold
    c = ov.counts(fire, n_rows)
    assert c == {"n_latents": 9, "dead": 3, "dense": 3, "dense_threshold": 0.1}


def test_frequency_histogram_counts_log10_bins():
    # log10 frequencies: -3 (x2), -2.9, -2.5, -1.01, -1, -0.1, 0; dead ones are left out
    freq = np.array([1e-3, 1e-3, 10**-2.9, 10**-2.5, 10**-1.01, 0.1, 10**-0.1, 1.0, 0.0, 0.0])
    h = ov.frequency_histogram(freq)
    assert h["edges"] == pytest.approx([-3 + 0.25 * i for i in range(13)])
    want = [0] * 12  # counted by hand: bin i holds [edge i, edge i+1), the last one closed at 0
    for lf in (-3, -3, -2.9, -2.5, -1.01, -1, -0.1, 0):
        want[min(11, int((lf + 3) // 0.25 + 1e-9))] += 1
    assert want == [3, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert h["counts"] == want
    assert ov.frequency_histogram(np.zeros(4)) == {"edges": [], "counts": []}


def test_pca_matches_numpy_svd_up_to_sign():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 12)) * np.linspace(3, 0.1, 12)
    Y = ov.pca_2d(X)
    Xc = X - X.mean(0)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    ref = U[:, :2] * S[:2]
    for a in range(2):
        sign = np.sign(Y[:, a] @ ref[:, a])
        assert sign != 0 and np.allclose(Y[:, a], sign * ref[:, a], atol=1e-9)
    # the sign is fixed: the largest-magnitude coordinate of each axis is positive
    assert all(Y[np.abs(Y[:, a]).argmax(), a] > 0 for a in range(2))


def test_decoder_map_draws_live_latents_only_with_their_labels(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # PCA even where umap-learn is installed
    rng = np.random.default_rng(1)
    W = rng.normal(size=(9, 5))
    live = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    labels = ["cat", "dog", "", "cat", "cat", "", "dog", "dog", "car"]
    m = ov.decoder_map(W, live, labels)
    assert m["method"] == "pca" and m["n_drawn"] == 7
    x, y, lab = _u16(m["x"]), _u16(m["y"]), _u16(m["label"])
    assert (x[~live] == ov.NONE).all() and (y[~live] == ov.NONE).all() and (x[live] < ov.NONE).all()
    # the coordinates are PCA of the live latents' unit directions, scaled to 0..65534 over their box
    U = W[live] / np.linalg.norm(W[live], axis=1, keepdims=True)
    ref = ov.pca_2d(U)
    for a, q in ((0, x), (1, y)):
        want = (ref[:, a] - ref[:, a].min()) / (ref[:, a].max() - ref[:, a].min()) * 65534
        assert np.abs(q[live].astype(float) - want).max() <= 0.5
    assert m["labels"] == ["car", "cat", "dog"]
    assert [m["labels"][i] if i != ov.NONE else "" for i in lab] == labels
    # legend: drawn points only (the dead "dog" latent 6 does not count), most common first
    assert m["legend"] == [[1, 3], [2, 2], [0, 1]]


def test_decoder_map_uses_umap_when_installed(monkeypatch):
    calls = {}

    class UMAP:
        def __init__(self, **kw):
            calls.update(kw)

        def fit_transform(self, X):
            calls["rows"] = len(X)
            return np.stack([np.arange(len(X)), -np.arange(len(X))], 1).astype(np.float32)

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    live = np.array([1, 0, 1, 1, 1, 1], bool)
    m = ov.decoder_map(np.eye(6), live, [""] * 6)
    assert m["method"] == "umap" and calls["rows"] == 5 and calls["metric"] == "cosine" and calls["random_state"] == 0
    assert _u16(m["x"]).tolist() == [0, ov.NONE, 16384, 32767, 49150, 65534]  # i / 4 * 65534, halves to even


def test_decoder_map_with_the_real_umap_keeps_planted_clusters_apart():
    """With umap-learn installed (the `[umap]` extra; skipped without it): 3 planted groups of 40
    near-parallel decoder directions (cosine about 0.98 within a group, about 0 between) land as 3
    groups on the map: every drawn point's nearest point on the map is in its own group, and the
    dead latents are not drawn."""
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    group = np.repeat(np.arange(3), 40)
    decoder = (
        centres[group] + 0.02 * np.linalg.norm(centres[group], axis=1, keepdims=True) * rng.normal(size=(120, 64)) / 8
    )
    live = np.ones(120, bool)
    live[::17] = False
    m = ov.decoder_map(decoder, live, [f"g{g}" for g in group])
    assert m["method"] == "umap" and m["n_drawn"] == int(live.sum())
    x, y = _u16(m["x"]).astype(float), _u16(m["y"]).astype(float)
    assert (x[~live] == ov.NONE).all() and (y[~live] == ov.NONE).all()
    xy = np.stack([x[live], y[live]], 1)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    g = group[live]
    assert (g[d.argmin(1)] == g).all()


def test_site_writes_the_overview_and_the_map(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    from test_interpret_browser import _Images, _synthetic

    stats = _synthetic(30, 20, 4, 5)
    stats.fire_count[[3, 7, 11]] = 0
    stats.image_count[[3, 7, 11]] = 0
    W = np.random.default_rng(0).normal(size=(30, 6))
    write_site(stats, tmp_path / "site", _Images(20), page_size=8, progress=False, decoder=W)
    o = read_data(tmp_path / "site", "overview")
    freq = stats.fire_count / stats.n_rows
    assert (o["n_latents"], o["dead"], o["dense"]) == (30, 3, int((freq > 0.1).sum()))
    assert sum(o["hist"]["counts"]) == 27 and o["map"] is True
    m = read_data(tmp_path / "site", "map")
    assert m["n_drawn"] == 27 and set(np.flatnonzero(_u16(m["x"]) == ov.NONE)) == {3, 7, 11}
    # every latent's label: the most common class of its top images (no CLIP-Dissect labels here)
    lab = _u16(m["label"])
    for j in range(30):
        labels = stats.top["max"].labels[j].tolist()
        best = min(set(labels), key=lambda v: (-labels.count(v), v))
        assert m["labels"][lab[j]] == f"c{best}"
    # index rows end with the active images; per page: live latents and the largest support
    meta = read_data(tmp_path / "site", "meta")
    assert meta["top_n"] == 4
    for name, o_ in meta["orders"].items():
        for p in range(o_["n_pages"]):
            rows = read_data(tmp_path / "site", f"pages/{name}-{p}")
            assert [r[7] for r in rows] == [int(stats.image_count[r[0]]) for r in rows]
            assert o_["n_live"][p] == sum(stats.fire_count[r[0]] > 0 for r in rows)
            assert o_["max_support"][p] == max(r[7] for r in rows)
    # without a decoder the card says why there is no map
    write_site(stats, tmp_path / "bare", _Images(20), progress=False)
    assert "browse --sae" in read_data(tmp_path / "bare", "overview")["map"]
    assert not (tmp_path / "bare/data/map.js").exists()
