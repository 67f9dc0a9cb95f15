"""Per-latent statistics of an SAE over an activation cache, in one streaming pass.

    stats = latent_stats(sae, cache.rows("blocks.11.resid_post", "all"), top_n=10)
    stats.frequency[j], stats.mean_active[j], stats.act_max[j]     # how often, how strongly
    stats.hist_centres, stats.hist_counts[j]                         # activation histogram
    top = stats.top["max"]                                           # top images by max over tokens
    top.images[j], top.values[j], top.tokens[j], top.labels[j]       # best first; -1 = empty slot

Rows are encoded chunk by chunk (chunks hold whole images: a view has the same m token rows per
image, image-major, which is checked on every chunk). A latent is *active* on a row when its code
is > 0. Per latent the pass keeps, in memory independent of the number of rows:
    fire_count    rows on which it is active          image_count  images on which it is active
    act_sum       sum of its activations (float64)     act_max      largest activation
    hist_counts   counts of its active values in `n_bins` log10-spaced bins over
                  [hist_min, hist_max] (values outside go to the first / last bin)
    top[ranking]  the `top_n` images with the highest score, best first (ties: lower image index),
                  with the latent's activation on each of the image's m tokens and the image's label.
Rankings: "max" (max over the view's tokens) always; when the view holds the CLS token and patch
tokens, also "cls" (the CLS activation) and "patch" (max over patch tokens). Each ranking keeps a
running top-n per latent: a chunk's (image, latent) scores below the latent's current n-th are
dropped, the rest merged with the kept ones by one sort. Memory: about
n_latents x top_n x (m + 3) x 4 bytes per ranking, plus n_latents x n_bins x 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from ..activations.cache import RowView
    from ..sae.base import SparseAutoencoder

RANKINGS = ("max", "cls", "patch")


@dataclass
class TopImages:
    """The top-n images of every latent under one ranking (best first; empty slots: image -1, value 0)."""

    values: np.ndarray
    """float32 [n_latents, top_n] score of each image."""
    images: np.ndarray
    """int64 [n_latents, top_n] image index in the cache (-1: empty slot)."""
    tokens: np.ndarray
    """float32 [n_latents, top_n, m] the latent's activation on each of the image's m tokens (view order)."""
    labels: np.ndarray
    """int64 [n_latents, top_n] label of each image (-1: unlabeled or empty slot)."""


@dataclass
class LatentStats:
    """Per-latent statistics (see the module docstring); `meta` records where they came from."""

    n_rows: int
    n_images: int
    token_positions: list[int]
    """The m token positions of each image's rows in the view (order of `TopImages.tokens`)."""
    fire_count: np.ndarray
    image_count: np.ndarray
    act_sum: np.ndarray
    act_max: np.ndarray
    hist_centres: np.ndarray
    """float64 [n_bins] geometric bin centres."""
    hist_counts: np.ndarray
    """int64 [n_latents, n_bins]."""
    top: dict[str, TopImages]
    meta: dict[str, Any] = field(default_factory=dict)
    neighbours: Any = None
    """`neighbours.Neighbours` or None."""
    lens: Any = None
    """`lens.LensWords` or None."""
    dissect: Any = None
    """`dissect.ConceptLabels` (CLIP-Dissect labels) or None."""
    probe_top: np.ndarray | None = None
    """int64 [n_latents, keep_images] each latent's best images by max over tokens, values > 0 only
    (-1: empty), when `latent_stats(keep_images=...)` asked for them: what `dissect` reads. Not saved."""

    @property
    def n_latents(self) -> int:
        return len(self.fire_count)

    @property
    def frequency(self) -> np.ndarray:
        """Fraction of rows (tokens) on which each latent is active."""
        return self.fire_count / max(self.n_rows, 1)

    @property
    def image_frequency(self) -> np.ndarray:
        """Fraction of images on which each latent is active on at least one token."""
        return self.image_count / max(self.n_images, 1)

    @property
    def mean_active(self) -> np.ndarray:
        """Mean activation over the rows where the latent is active (0 when it never is)."""
        return np.where(self.fire_count > 0, self.act_sum / np.maximum(self.fire_count, 1), 0.0)

    @property
    def mean(self) -> np.ndarray:
        """Mean activation over all rows (inactive rows count 0)."""
        return self.act_sum / max(self.n_rows, 1)

    def label_distribution(self, latent: int, ranking: str = "max") -> dict[str, int]:
        """Label -> count over the latent's top images (class names when known)."""
        top = self.top[ranking]
        classes = self.meta.get("classes")
        labs = top.labels[latent][top.images[latent] >= 0]
        out: dict[str, int] = {}
        for lab in labs.tolist():
            name = classes[lab] if classes and 0 <= lab < len(classes) else str(lab)
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


class _RunningTop:
    """Running top-n images per latent for one ranking."""

    def __init__(self, n_latents: int, top_n: int, m: int):
        self.L, self.n, self.m = n_latents, top_n, m
        self.values = np.zeros((n_latents, top_n), np.float32)
        self.images = np.full((n_latents, top_n), -1, np.int64)
        self.tokens = np.zeros((n_latents, top_n, m), np.float32)

    def update(
        self, keys: np.ndarray, scores: np.ndarray, image_ids: np.ndarray, all_keys, all_tok, all_val, ordered: bool
    ) -> None:
        """keys: sorted unique (local image * L + latent) with their scores; all_*: every active entry;
        `ordered`: every image of this chunk comes after every image seen before (then one stable sort
        by (latent, -score) breaks ties by image; otherwise a three-key sort does)."""
        lat = keys % self.L
        keep = scores >= self.values[lat, -1]
        if not keep.any():
            return
        keys, scores, lat = keys[keep], scores[keep], lat[keep]
        if len(keys) > self.n:  # at most n per latent can enter: keep the chunk's own top n
            order = np.argsort(_desc_key(lat, scores), kind="stable")  # keys are image-major: ties by image
            lat_s = lat[order]
            rank = np.arange(len(lat_s)) - np.searchsorted(lat_s, lat_s, side="left")
            sel = np.sort(order[rank < self.n])  # back in key order
            keys, scores, lat = keys[sel], scores[sel], lat[sel]
        # the latent's activation on each token of each candidate image
        pos = np.searchsorted(keys, all_keys)
        pos_c = np.minimum(pos, len(keys) - 1)
        hit = keys[pos_c] == all_keys
        cand_tok = np.zeros((len(keys), self.m), np.float32)
        cand_tok[pos_c[hit], all_tok[hit]] = all_val[hit]
        # merge with the kept entries of the touched latents: sort by (latent, -score, image)
        U = np.unique(lat)
        n = self.n
        n_old = len(U) * n
        lat_all = np.concatenate([np.repeat(U, n), lat])
        val_all = np.concatenate([self.values[U].ravel(), scores])
        img_all = np.concatenate([self.images[U].ravel(), image_ids[keys // self.L]])
        if ordered:  # kept entries (earlier images) first, then this chunk's in image order
            order = np.argsort(_desc_key(lat_all, val_all), kind="stable")
        else:
            img_key = np.where(img_all < 0, np.iinfo(np.int64).max, img_all)
            order = np.lexsort((img_key, -val_all, lat_all))
        lat_s = lat_all[order]
        rank = np.arange(len(lat_s)) - np.searchsorted(lat_s, lat_s, side="left")
        sel = rank < n
        o, r, la = order[sel], rank[sel], lat_s[sel]
        # per-token vectors: move only the slots whose entry changed (most stay where they were)
        old = o < n_old
        old_r = o % n
        moved = old & (old_r != r)
        new = ~old
        moved_tok = self.tokens.reshape(-1, self.m)[la[moved] * n + old_r[moved]]  # a copy, read before writing
        flat = self.tokens.reshape(-1, self.m)
        flat[la[moved] * n + r[moved]] = moved_tok
        flat[la[new] * n + r[new]] = cand_tok[o[new] - n_old]
        self.values[la, r] = val_all[o]
        self.images[la, r] = img_all[o]


def _desc_key(lat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """int64 keys ordering by latent, then by value descending (values are >= 0 float32, whose bit
    patterns order like the values)."""
    bits = np.ascontiguousarray(val, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (lat.astype(np.int64) << 32) | (0xFFFFFFFF - bits)


def _row_pattern(view: RowView) -> list[int]:
    """Token positions of the first image's rows (every image has the same, checked per chunk)."""
    tpi = view.cache.tokens_per_image
    idx = view.row_index(0, min(view.n_rows, tpi))
    first = idx[:, 0] == idx[0, 0]
    return idx[first, 1].tolist()


def latent_stats(
    sae: SparseAutoencoder,
    view: RowView,
    *,
    top_n: int = 10,
    n_bins: int = 50,
    hist_min: float = 1e-3,
    hist_max: float = 1e3,
    batch_size: int = 4096,
    max_images: int | None = None,
    progress: bool = True,
    desc: str = "interpret",
    keep_images: int = 0,
) -> LatentStats:
    """One pass over `view` (see the module docstring). `batch_size` rows per chunk (rounded down to
    whole images; results do not depend on it); `max_images` stops after that many images; `desc`
    labels the progress bar; `keep_images` > 0 also keeps each latent's best `keep_images` images by
    the "max" ranking without their tokens (`LatentStats.probe_top`, for CLIP-Dissect labels)."""
    import torch

    from ..utils.progress import progress as bar

    if top_n < 1 or n_bins < 1 or batch_size < 1:
        raise SparsesteerError("latent_stats: top_n, n_bins and batch_size must be >= 1")
    if not 0 < hist_min < hist_max:
        raise SparsesteerError(f"latent_stats: need 0 < hist_min < hist_max, got {hist_min}, {hist_max}")
    if view.d != sae.d_in:
        raise SparsesteerError(f"activation width {view.d} does not match the SAE's d_in={sae.d_in}")
    if view.n_rows == 0:
        raise SparsesteerError("latent_stats: the view has no rows")
    L = sae.n_latents
    pattern = _row_pattern(view)
    m = len(pattern)
    if view.n_rows % m:
        raise SparsesteerError(f"{view.n_rows} rows are not a whole number of images of {m} tokens each")
    cls_pos = view.cache.settings.cls_position
    rankings: dict[str, np.ndarray] = {"max": np.ones(m, bool)}
    if m > 1 and cls_pos in pattern:
        is_cls = np.array([p == cls_pos for p in pattern])
        rankings["cls"] = is_cls
        rankings["patch"] = ~is_cls
    tops = {name: _RunningTop(L, top_n, m) for name in rankings}
    probe = _RunningTop(L, keep_images, 1) if keep_images > 0 else None
    fire_count = np.zeros(L, np.int64)
    image_count = np.zeros(L, np.int64)
    act_sum = np.zeros(L, np.float64)
    act_max = np.zeros(L, np.float32)
    hist = np.zeros(L * n_bins, np.int64)
    lo, hi = math.log10(hist_min), math.log10(hist_max)
    edges = np.linspace(lo, hi, n_bins + 1)
    centres = 10 ** ((edges[:-1] + edges[1:]) / 2)
    labels_all = view.cache.labels
    n_rows = view.n_rows if max_images is None else min(view.n_rows, max_images * m)
    chunk = max(batch_size // m, 1) * m
    pattern_arr = np.asarray(pattern)
    device = sae.device
    last_image = -1
    with bar(total=n_rows, unit="row", desc=desc, disable=None if progress else True) as pb:
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            idx = view.row_index(start, stop)
            grid = idx.reshape(-1, m, 2)
            if not ((grid[:, :, 0] == grid[:, :1, 0]).all() and (grid[:, :, 1] == pattern_arr).all()):
                raise SparsesteerError(
                    f"{view.cache.path}: rows {start}..{stop} are not image-major with tokens {pattern[:8]} per image"
                )
            image_ids = grid[:, 0, 0]
            ordered = bool(image_ids[0] > last_image and (len(image_ids) < 2 or (np.diff(image_ids) > 0).all()))
            last_image = max(last_image, int(image_ids.max()))
            x = view.read(start, stop).to(device=device, dtype=sae.dtype)
            with torch.no_grad():
                codes = sae.encode(x)
            vals = codes.values.float().cpu().numpy()
            lats = codes.indices.cpu().numpy()
            rows, slots = np.nonzero(vals > 0)
            val = vals[rows, slots]
            lat = lats[rows, slots].astype(np.int64)
            # row-level statistics
            fire_count += np.bincount(lat, minlength=L)
            act_sum += np.bincount(lat, weights=val, minlength=L)
            np.maximum.at(act_max, lat, val)
            b = np.clip(((np.log10(val) - lo) * (n_bins / (hi - lo))).astype(np.int64), 0, n_bins - 1)
            hist += np.bincount(lat * n_bins + b, minlength=L * n_bins)
            # per (image, latent) scores
            img_local = rows // m
            tok = rows % m
            keys = img_local * L + lat
            order = np.argsort(keys, kind="stable")
            for name, mask in rankings.items():
                o = order[mask[tok[order]]]
                ks = keys[o]
                if not len(ks):
                    continue
                starts = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))
                scores = np.maximum.reduceat(val[o], starts)
                uk = ks[starts]
                if name == "max":
                    image_count += np.bincount(uk % L, minlength=L)
                    if probe is not None:  # the same scores, one "token" each: no per-token vectors kept
                        probe.update(uk, scores, image_ids, uk, np.zeros(len(uk), np.int64), scores, ordered)
                tops[name].update(uk, scores, image_ids, keys, tok, val, ordered)
            pb.update(stop - start)
    top = {}
    for name, t in tops.items():
        labs = np.full(t.images.shape, -1, np.int64)
        if labels_all is not None:
            filled = t.images >= 0
            labs[filled] = labels_all[t.images[filled]]
        top[name] = TopImages(t.values, t.images, t.tokens, labs)
    return LatentStats(
        n_rows=n_rows,
        n_images=n_rows // m,
        token_positions=pattern,
        fire_count=fire_count,
        image_count=image_count,
        act_sum=act_sum,
        act_max=act_max,
        hist_centres=centres,
        hist_counts=hist.reshape(L, n_bins),
        top=top,
        probe_top=probe.images if probe is not None else None,
    )
