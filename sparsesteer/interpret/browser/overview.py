"""The index page's overview of an SAE: how many latents are dead or dense, how their firing
frequencies spread, and a 2-D map of their decoder directions (computed when the site is written).

    ov = overview(stats.fire_count, stats.n_rows, labels, decoder=sae.W_dec)   # -> data/overview.js, data/map.js

- dead: never active on any row; dense: active on more than `DENSE` (10%) of the rows (tokens);
- histogram: log10 firing frequency of the live latents (dead ones have no logarithm), in bins of
  `BIN` decades from the lowest live frequency's bin up to 10^0;
- map: the live latents' unit decoder directions in 2-D: UMAP (cosine metric, seeded) when the
  optional `umap-learn` package is installed (`pip install sparsesteer[umap]`), else PCA (the two
  leading principal components of the centred directions, numpy). Coordinates are stored as uint16
  over the map's bounding box (65535: not drawn, a dead latent), base64, so a 49,152-latent map is
  about 400 KB, loaded after the table. Points are coloured by the latent's label: its
  CLIP-Dissect label (`interpret --labels`), else the most common class of its top images.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import numpy as np

DENSE = 0.1
"""A latent active on more than this share of the rows (tokens) is dense."""
BIN = 0.25
"""Width of the frequency histogram's bins, in decades (log10 units)."""
LEGEND = 10
"""Labels with their own colour on the map (the most common ones); the rest are grey."""
NONE = 65535
"""uint16 marker: no coordinate (a dead latent) or no label."""


def counts(fire_count: np.ndarray, n_rows: int) -> dict[str, Any]:
    """Number of latents, of dead ones (never active) and of dense ones (frequency > DENSE)."""
    freq = np.asarray(fire_count, np.float64) / max(n_rows, 1)
    return {
        "n_latents": len(freq),
        "dead": int((np.asarray(fire_count) == 0).sum()),
        "dense": int((freq > DENSE).sum()),
        "dense_threshold": DENSE,
    }


def frequency_histogram(frequency: np.ndarray) -> dict[str, Any]:
    """Counts of the live latents' log10 frequencies in BIN-decade bins: `edges` (log10, one more than
    `counts`; a value on an edge goes to the bin above it, the last bin is closed at 0)."""
    f = np.asarray(frequency, np.float64)
    lf = np.log10(f[f > 0])
    if not len(lf):
        return {"edges": [], "counts": []}
    lo = np.floor(lf.min() / BIN) * BIN
    n = max(1, int(round(-lo / BIN)))
    edges = lo + BIN * np.arange(n + 1)
    idx = np.clip(np.floor((lf - lo) / BIN + 1e-9).astype(np.int64), 0, n - 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": np.bincount(idx, minlength=n).tolist()}


def unit_rows(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, np.float64)
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def pca_2d(X: np.ndarray) -> np.ndarray:
    """The rows of X on its two leading principal components (centred; the d x d covariance's
    eigenvectors, so 49,152 rows of width 768 cost one 768 x 768 eigendecomposition). Each axis's
    sign is fixed so that its largest-magnitude coordinate is positive (a rerun draws the same map)."""
    X = np.asarray(X, np.float64)
    Xc = X - X.mean(0)
    if len(X) < 2:
        return np.zeros((len(X), 2))
    vals, vecs = np.linalg.eigh(Xc.T @ Xc)
    comps = vecs[:, ::-1][:, :2]
    if comps.shape[1] < 2:
        comps = np.pad(comps, ((0, 0), (0, 2 - comps.shape[1])))
    Y = Xc @ comps
    flip = np.sign(Y[np.abs(Y).argmax(0), [0, 1]])
    return Y * np.where(flip == 0, 1.0, flip)


def umap_2d(X: np.ndarray) -> np.ndarray | None:
    """UMAP of the rows (cosine metric, seed 0), or None without `umap-learn` (or too few rows)."""
    try:
        import umap  # type: ignore[import-not-found]
    except ImportError:
        return None
    if len(X) < 4:
        return None
    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=0, n_neighbors=min(15, len(X) - 1))
    return np.asarray(reducer.fit_transform(np.asarray(X, np.float32)), np.float64)


def quantise(xy: np.ndarray) -> np.ndarray:
    """Coordinates as uint16 0..65534 over their bounding box (a flat axis sits in the middle)."""
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.where(hi > lo, np.rint((xy - lo) / span * (NONE - 1)), (NONE - 1) // 2)
    return q.astype(np.uint16)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<u2").tobytes()).decode()


def decoder_map(decoder: np.ndarray, live: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The map of the live latents' decoder directions (see the module docstring): method, the
    per-latent x, y and label index (base64 uint16, NONE for dead / unlabelled), the label names,
    and the LEGEND most common labels of the drawn points (label index, count)."""
    L = len(live)
    X = unit_rows(decoder)[live]
    xy = umap_2d(X)
    method = "umap" if xy is not None else "pca"
    if xy is None:
        xy = pca_2d(X)
    x = np.full(L, NONE, np.uint16)
    y = np.full(L, NONE, np.uint16)
    if len(X):
        q = quantise(xy)
        x[live], y[live] = q[:, 0], q[:, 1]
    names = sorted({s for s in labels if s})
    pos = {s: i for i, s in enumerate(names)}
    lab = np.array([pos.get(s, NONE) for s in labels], np.uint16).reshape(L)
    common = Counter(int(v) for v in lab[live] if v != NONE).most_common()
    common.sort(key=lambda t: (-t[1], t[0]))
    return {
        "method": method,
        "n_drawn": int(live.sum()),
        "x": _b64(x),
        "y": _b64(y),
        "label": _b64(lab),
        "labels": names,
        "legend": [[i, c] for i, c in common[:LEGEND]],
    }


def overview(fire_count: np.ndarray, n_rows: int) -> dict[str, Any]:
    """The summary card's numbers: `counts` and the `frequency_histogram`."""
    return {**counts(fire_count, n_rows), "hist": frequency_histogram(np.asarray(fire_count) / max(n_rows, 1))}
