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
dropped, the rest merged with the kept ones by one sort. An image is in a ranking at most once: a
ranking scores each image once (its best token), and should a row source yield an image twice (a
cache's writer refuses that, a streamed view numbers images in order; a hand-made view could), the
best copy is kept with its tokens. Memory: about n_latents x top_n x (m + 3) x 4 bytes per ranking,
plus n_latents x n_bins x 8.

Beyond the top images (`samples` > 0, as Neuronpedia shows them): `intervals`, `samples` images drawn
uniformly at random among the latent's active images whose score ("max" over tokens) lies in each of
up to `n_intervals` activation intervals, and `random`, `samples` images drawn uniformly among all its
active images. Both are bottom-k (priority) samples, a form of reservoir sampling: every (image,
latent) pair gets a pseudo-random priority, a hash of (seed, image, latent), and a sample keeps the
`samples` pairs of highest priority, in a running top like the rankings'. So a rerun, another
`batch_size` or another chunk order picks the same images, and the union of two samples' sets
re-sampled by priority is a sample of the union. Intervals cannot be defined before the pass ends
relative to the latent's values (a running max moves), so the pass keeps one such sample per latent
and histogram bin (the fixed log10 bins above; memory n_latents x n_bins x samples x 16 bytes) with
the bin's image count; at the end each latent's occupied bins, first to last, are split into
`n_intervals` runs of consecutive bins of equal log width, and each interval's sample is the top
`samples` priorities of its bins' samples: exactly a uniform sample of the interval's images. (A
view that held an image twice would count each copy in its own interval; caches and streamed views
hold each image once.)
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
class SampledImages:
    """Images drawn at random among those where each latent fires (see the module docstring), highest
    value first; empty slots: image -1, value 0. `intervals` has an interval axis and `bounds`."""

    images: np.ndarray
    """int64 [n_latents, (n_intervals,) k] image index in the cache (-1: empty slot)."""
    values: np.ndarray
    """float32, same shape: the latent's max activation over the image's tokens."""
    labels: np.ndarray
    """int64, same shape: the image's label (-1: unlabeled or empty slot)."""
    counts: np.ndarray
    """int64 [n_latents(, n_intervals)] active images the sample is drawn from."""
    bounds: np.ndarray | None = None
    """float32 [n_latents, n_intervals + 1] interval edges (interval i: bounds[i] <= value < bounds[i+1];
    0 and inf at the ends of the histogram range, whose end bins hold what lies outside; NaN past the
    latent's last interval)."""


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
    intervals: SampledImages | None = None
    """Random images per activation interval (None: not computed, e.g. statistics written before them)."""
    random: SampledImages | None = None
    """Random active images (None: not computed)."""
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
        if not ordered:  # an image may come twice: keep the best copy of each (image, latent) of this chunk
            keep &= _best_copies(lat, image_ids[keys // self.L], scores)
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
        else:  # and an image kept from an earlier chunk may come again: its best copy stays
            img_key = np.where(img_all < 0, np.iinfo(np.int64).max, img_all)
            order = np.lexsort((img_key, -val_all, lat_all))
            first = _best_copies(lat_all[order], img_all[order], None)
            order = order[first | (img_all[order] < 0)]
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


def _best_copies(lat: np.ndarray, img: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """bool mask of the first entry of each (latent, image) pair when ordered by score descending
    (`scores` None: the entries already are in that order within each pair)."""
    key_order = np.lexsort((np.arange(len(lat)) if scores is None else -scores, img, lat))
    ls, im = lat[key_order], img[key_order]
    first_sorted = np.concatenate([[True], (ls[1:] != ls[:-1]) | (im[1:] != im[:-1])])
    out = np.empty(len(lat), bool)
    out[key_order] = first_sorted
    return out


def _priority(images: np.ndarray, lat: np.ndarray, salt: int) -> np.ndarray:
    """float32 pseudo-random priorities 1..2^24 of (image, latent) pairs: splitmix64 of (salt, image),
    mixed with the latent and hashed again (exact in float32, never 0, which marks an empty slot)."""

    def mix(x: np.ndarray) -> np.ndarray:
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    h = mix(images.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    h = mix(h ^ (lat.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)))
    return ((h >> np.uint64(40)) + np.uint64(1)).astype(np.float32)


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
    samples: int = 4,
    n_intervals: int = 4,
    seed: int = 0,
) -> LatentStats:
    """One pass over `view` (see the module docstring). `batch_size` rows per chunk (rounded down to
    whole images; results do not depend on it); `max_images` stops after that many images; `desc`
    labels the progress bar; `keep_images` > 0 also keeps each latent's best `keep_images` images by
    the "max" ranking without their tokens (`LatentStats.probe_top`, for CLIP-Dissect labels);
    `samples` random images per activation interval (`n_intervals` of them) and random active images
    per latent, drawn with `seed` (`samples` 0: none)."""
    import torch

    from ..utils.progress import progress as bar

    if top_n < 1 or n_bins < 1 or batch_size < 1 or n_intervals < 1:
        raise SparsesteerError("latent_stats: top_n, n_bins, batch_size and n_intervals must be >= 1")
    if samples < 0:
        raise SparsesteerError(f"latent_stats: samples must be >= 0, got {samples}")
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
    # samples: the value of each sampled image rides in the one "token" slot, its priority is the score
    by_bin = _RunningTop(L * n_bins, samples, 1) if samples else None
    rand = _RunningTop(L, samples, 1) if samples else None
    bin_images = np.zeros(L * n_bins if samples else 0, np.int64)
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
                    zero = np.zeros(len(uk), np.int64)
                    if probe is not None:  # the same scores, one "token" each: no per-token vectors kept
                        probe.update(uk, scores, image_ids, uk, zero, scores, ordered)
                    if by_bin is not None and rand is not None:
                        img, lt = image_ids[uk // L], uk % L
                        sb = np.clip(((np.log10(scores) - lo) * (n_bins / (hi - lo))).astype(np.int64), 0, n_bins - 1)
                        stream = lt * n_bins + sb
                        bin_images += np.bincount(stream, minlength=L * n_bins)
                        bk = (uk // L) * (L * n_bins) + stream  # sorted like uk
                        by_bin.update(bk, _priority(img, lt, 2 * seed), image_ids, bk, zero, scores, ordered)
                        rand.update(uk, _priority(img, lt, 2 * seed + 1), image_ids, uk, zero, scores, ordered)
                tops[name].update(uk, scores, image_ids, keys, tok, val, ordered)
            pb.update(stop - start)
    top = {}
    for name, t in tops.items():
        labs = np.full(t.images.shape, -1, np.int64)
        if labels_all is not None:
            filled = t.images >= 0
            labs[filled] = labels_all[t.images[filled]]
        top[name] = TopImages(t.values, t.images, t.tokens, labs)
    intervals = random = None
    if by_bin is not None and rand is not None:
        intervals = _interval_samples(by_bin, bin_images.reshape(L, n_bins), edges, n_intervals, labels_all)
        counts = image_count.copy()
        random = _sorted_samples(rand.images, rand.tokens[..., 0], counts, labels_all)
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
        intervals=intervals,
        random=random,
        meta={"samples": {"k": samples, "n_intervals": n_intervals, "seed": seed, "method": "bottom-k hash priority"}}
        if samples
        else {},
    )


def _sorted_samples(
    images: np.ndarray, values: np.ndarray, counts: np.ndarray, labels_all: np.ndarray | None
) -> SampledImages:
    """Samples [..., k] (filled slots first) reordered by value descending (ties: lower image), with labels."""
    filled = images >= 0
    img_key = np.where(filled, images, np.iinfo(np.int64).max)
    order = np.lexsort((img_key, -np.where(filled, values, -np.inf)), axis=-1)
    images = np.take_along_axis(images, order, -1)
    values = np.where(images >= 0, np.take_along_axis(values, order, -1), 0).astype(np.float32)
    labels = np.full(images.shape, -1, np.int64)
    if labels_all is not None:
        labels[images >= 0] = labels_all[images[images >= 0]]
    return SampledImages(images, values, labels, counts)


def _interval_samples(
    by_bin: _RunningTop, bin_images: np.ndarray, log_edges: np.ndarray, n_intervals: int, labels_all: np.ndarray | None
) -> SampledImages:
    """Each latent's intervals (its occupied bins, first to last, split into `n_intervals` runs of
    equal log width; fewer when it spans fewer bins) and their samples: the highest priorities among
    the samples of the interval's bins."""
    L, B = bin_images.shape
    k = by_bin.n
    occ = bin_images > 0
    live = np.any(occ, axis=1, keepdims=False).astype(bool)
    first = np.argmax(occ, 1)
    last = B - 1 - np.argmax(occ[:, ::-1], 1)
    span = last - first + 1
    n_int = np.where(live, np.minimum(span, n_intervals), 0)
    g = np.arange(n_intervals + 1)
    starts = first[:, None] + (g[None, :] * span[:, None]) // np.maximum(n_int, 1)[:, None]  # [L, I+1] bin edges
    valid = (g[None, :] <= n_int[:, None]) & live[:, None]
    edge_vals = 10.0**log_edges
    edge_vals[0], edge_vals[-1] = 0.0, np.inf  # the end bins hold what lies outside the range
    bounds = np.where(valid, edge_vals[np.clip(starts, 0, B)], np.nan).astype(np.float32)
    # interval of each (latent, bin): -1 outside the latent's intervals
    b = np.arange(B)
    which = (b[None, :, None] >= starts[:, None, 1:]).sum(2)  # [L, B] how many interval ends lie at or below b
    inside = (b[None, :] >= first[:, None]) & (b[None, :] <= last[:, None]) & live[:, None]
    which = np.where(inside, which, -1)
    counts = np.zeros((L, n_intervals), np.int64)
    lat_i, bin_i = np.nonzero(inside)
    np.add.at(counts, (lat_i, which[lat_i, bin_i]), bin_images[lat_i, bin_i])
    # the candidates: every kept sample of every bin, grouped by (latent, interval), best priority first
    imgs = by_bin.images.reshape(L, B, k)
    pri = by_bin.values.reshape(L, B, k)
    val = by_bin.tokens.reshape(L, B, k)
    lat_c, bin_c, slot_c = np.nonzero(imgs >= 0)
    group = lat_c * n_intervals + which[lat_c, bin_c]
    im_c = imgs[lat_c, bin_c, slot_c]
    order = np.lexsort((im_c, -pri[lat_c, bin_c, slot_c], group))
    gs = group[order]
    rank = np.arange(len(gs)) - np.searchsorted(gs, gs, side="left")
    sel = order[rank < k]
    images = np.full((L * n_intervals, k), -1, np.int64)
    values = np.zeros((L * n_intervals, k), np.float32)
    r = rank[rank < k]
    images[group[sel], r] = im_c[sel]
    values[group[sel], r] = val[lat_c[sel], bin_c[sel], slot_c[sel]]
    out = _sorted_samples(images.reshape(L, n_intervals, k), values.reshape(L, n_intervals, k), counts, labels_all)
    out.bounds = bounds
    return out
