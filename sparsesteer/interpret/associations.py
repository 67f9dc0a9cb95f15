"""Which SAE latents (or raw neurons) go with an image attribute: scores per unit, in one pass.

    assoc = latent_associations(cache.rows("blocks.7.resid_post", "patch"), sae, blond, attribute="Blond_Hair")
    scores = assoc.scores("max")                    # group 1 vs group 0 of the per-image max
    top = scores.top(10, by="cohens_d", sign="positive")
    top.units                                       # the 10 latents most associated with blond hair
    neuron_associations(view, blond).scores("mean").top(10, by="cohens_d")   # the neuron baseline

Inputs: a `RowView` of an activation cache (any hook, any token selection) and one group id per
image of the cache (`groups[image index]`: a binary attribute, or group ids such as Waterbirds'
`2 * y + place`; negative ids leave an image out). Rows are encoded by the SAE chunk by chunk and
reduced per image over its tokens in the view, by max and by mean (a latent inactive on a token
counts 0 there; with one token per image, e.g. CLS, both reductions are the token's value).

Per group and unit the pass keeps running sums over images (count, sum, sum of squares, number of
images on which the unit fires), float64; memory is O(groups x units), independent of the
dataset, and only the rows of the image that straddles a chunk boundary are carried over. A latent
fires on an image when it is active (non-zero) on at least one of its tokens; a neuron when it is
positive on at least one. Neuron sums are taken around a per-unit shift (the first chunk's mean)
so that dimensions with a large mean keep their variance.

Scores of a contrast P vs N (groups `positive` vs `negative`, default 1 vs every other group),
per unit, with x the reduced value of an image:
    mean_diff         mean_P(x) - mean_N(x)
    cohens_d          mean_diff / s_pooled, s_pooled^2 = ((n_P - 1) var_P + (n_N - 1) var_N) / (n_P + n_N - 2)
                      (unbiased variances; +-inf when s_pooled = 0 but the means differ, 0 when both are 0)
    point_biserial    Pearson correlation of x with the 0/1 indicator of P over the images of P and N:
                      mean_diff / s * sqrt(n_P n_N) / n with s the population std over them (0 when s = 0)
    firing_rate_diff  fraction of P's images on which the unit fires - the same for N
Selection: `top(n, by=score, sign=positive|negative|absolute)`, highest first, NaN last, ties to
the lower unit index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..utils.errors import SparsesteerError, unknown

if TYPE_CHECKING:
    import torch

    from ..activations.cache import RowView
    from ..sae.base import SparseAutoencoder, SparseCodes

Score = Literal["mean_diff", "cohens_d", "point_biserial", "firing_rate_diff"]
SCORES: tuple[str, ...] = ("mean_diff", "cohens_d", "point_biserial", "firing_rate_diff")
Sign = Literal["positive", "negative", "absolute"]
SIGNS: tuple[str, ...] = ("positive", "negative", "absolute")
Reduction = Literal["max", "mean"]
REDUCTIONS: tuple[str, ...] = ("max", "mean")
Unit = Literal["latent", "neuron"]


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True, kw_only=True)
class Selection:
    """The top units under one score."""

    units: np.ndarray
    """int64 [n] unit indices (latents or neurons), best first."""
    values: np.ndarray
    """float64 [n] their scores (signed, as computed)."""
    by: str
    """The score ranked by."""
    sign: str
    """positive (largest first), negative (most negative first) or absolute (largest magnitude first)."""
    unit: str
    """'latent' or 'neuron'."""
    reduce: str
    """The per-image reduction the scores were computed on."""


@dataclass(frozen=True, kw_only=True)
class AssociationScores:
    """Scores of every unit for one contrast of groups (arrays are float64 [n_units])."""

    unit: str
    """'latent' or 'neuron'."""
    reduce: str
    """Per-image reduction over tokens: 'max' or 'mean'."""
    positive: tuple[int, ...]
    """Group ids on the positive side."""
    negative: tuple[int, ...]
    """Group ids on the negative side."""
    n_positive: int
    """Images on the positive side."""
    n_negative: int
    """Images on the negative side."""
    mean_positive: np.ndarray
    """Mean reduced activation over the positive images."""
    mean_negative: np.ndarray
    """Mean reduced activation over the negative images."""
    mean_diff: np.ndarray
    """mean_positive - mean_negative."""
    cohens_d: np.ndarray
    """mean_diff over the pooled standard deviation."""
    point_biserial: np.ndarray
    """Correlation of the activation with membership of the positive side."""
    firing_rate_positive: np.ndarray
    """Fraction of positive images on which the unit fires."""
    firing_rate_negative: np.ndarray
    """Fraction of negative images on which the unit fires."""
    firing_rate_diff: np.ndarray
    """firing_rate_positive - firing_rate_negative."""
    context: dict[str, Any] = field(default_factory=dict)
    """Where the rows came from (dataset, split, hook, tokens, attribute)."""

    @property
    def n_units(self) -> int:
        return len(self.mean_diff)

    def score(self, by: str) -> np.ndarray:
        """The array of score `by` (one of SCORES)."""
        if by not in SCORES:
            raise unknown("association score", by, SCORES)
        return getattr(self, by)

    def top(self, n: int, *, by: str = "mean_diff", sign: str = "positive") -> Selection:
        """The `n` units ranked first by score `by` in direction `sign`."""
        return select_top(self, n, by=by, sign=sign)


def select_top(scores: AssociationScores, n: int, *, by: str = "mean_diff", sign: str = "positive") -> Selection:
    """Top-n units of `scores` by one score and sign (NaN last, ties to the lower index)."""
    values = scores.score(by)
    if sign not in SIGNS:
        raise unknown("sign", sign, SIGNS)
    whole = "SAE's" if scores.unit == "latent" else "activation's"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SparsesteerError(f"n must be a positive integer, got {n!r}")
    if n > scores.n_units:
        raise SparsesteerError(f"n={n} is larger than the {whole} {scores.n_units} {scores.unit}s")
    key = values if sign == "positive" else -values if sign == "negative" else np.abs(values)
    key = np.where(np.isnan(key), -np.inf, key)
    order = np.argsort(-key, kind="stable")[:n]
    # -inf keys (NaN or -inf scores) tie with each other; stable sort keeps them in index order
    return Selection(
        units=order.astype(np.int64),
        values=values[order].astype(np.float64),
        by=by,
        sign=sign,
        unit=scores.unit,
        reduce=scores.reduce,
    )


@dataclass(frozen=True, kw_only=True)
class GroupStats:
    """Running sums over images per group and unit for one per-image reduction."""

    unit: str
    """'latent' or 'neuron'."""
    reduce: str
    """'max' or 'mean'."""
    count: np.ndarray
    """int64 [G] images per group id 0..G-1."""
    sum: np.ndarray
    """float64 [G, n_units] sum over the group's images of (x - shift)."""
    sumsq: np.ndarray
    """float64 [G, n_units] sum of (x - shift)^2."""
    fired: np.ndarray
    """int64 [G, n_units] images on which the unit fires."""
    shift: np.ndarray
    """float64 [n_units] the shift the sums are taken around (0 for latents)."""
    context: dict[str, Any] = field(default_factory=dict)
    """Where the rows came from (dataset, split, hook, tokens, attribute)."""

    def _side(self, ids: tuple[int, ...]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        rows = list(ids)
        return int(self.count[rows].sum()), self.sum[rows].sum(0), self.sumsq[rows].sum(0), self.fired[rows].sum(0)

    def scores(
        self, positive: int | Sequence[int] = 1, negative: int | Sequence[int] | None = None
    ) -> AssociationScores:
        """Scores of the contrast `positive` vs `negative` (default: every other group id)."""
        G = len(self.count)
        pos = _ids(positive, "positive")
        neg = tuple(g for g in range(G) if g not in pos) if negative is None else _ids(negative, "negative")
        both = set(pos) & set(neg)
        if both:
            raise SparsesteerError(f"group(s) {sorted(both)} are on both sides of the contrast")
        for side, ids in (("positive", pos), ("negative", neg)):
            bad = [g for g in ids if not 0 <= g < G]
            if bad:
                raise SparsesteerError(f"{side} group {bad[0]} does not exist: group ids run from 0 to {G - 1}")
            if not ids or not self.count[list(ids)].sum():
                label = "group " + ", ".join(map(str, ids)) if ids else "no group"
                raise _empty_group_error(f"the {side} side ({label})", self.count, self.context)
        nP, SP, QP, FP = self._side(pos)
        nN, SN, QN, FN = self._side(neg)
        mP, mN = SP / nP, SN / nN
        diff = mP - mN
        ssP = np.maximum(QP - SP * mP, 0.0)  # sums of squared deviations
        ssN = np.maximum(QN - SN * mN, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            pooled = np.sqrt((ssP + ssN) / (nP + nN - 2)) if nP + nN > 2 else np.full_like(diff, np.nan)
            d = np.where(pooled > 0, diff / pooled, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
            d = np.where(np.isnan(pooled), np.nan, d)
            n = nP + nN
            S, Q = SP + SN, QP + QN
            s = np.sqrt(np.maximum(Q - S * S / n, 0.0) / n)
            r = np.where(s > 0, diff / s * math.sqrt(nP * nN) / n, 0.0)
        r = np.clip(r, -1.0, 1.0)
        fP, fN = FP / nP, FN / nN
        return AssociationScores(
            unit=self.unit,
            reduce=self.reduce,
            positive=pos,
            negative=neg,
            n_positive=nP,
            n_negative=nN,
            mean_positive=self.shift + mP,
            mean_negative=self.shift + mN,
            mean_diff=diff,
            cohens_d=d,
            point_biserial=r,
            firing_rate_positive=fP,
            firing_rate_negative=fN,
            firing_rate_diff=fP - fN,
            context=dict(self.context),
        )


def _ids(value: int | Sequence[int], side: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise SparsesteerError(f"{side} groups must be integer group ids, got {value!r}")
    return tuple(sorted({int(v) for v in items}))


def _where(context: dict[str, Any]) -> str:
    dataset, split = context.get("dataset"), context.get("split")
    if dataset is None and split is None:
        return "these activations"
    return f"{dataset or 'the dataset'} [{split or '?'}]"


def _empty_group_error(which: str, count: np.ndarray, context: dict[str, Any]) -> SparsesteerError:
    attribute = context.get("attribute")
    what = f"attribute {attribute!r}" if attribute else "group labels"
    counts = ", ".join(f"group {g}: {int(c)}" for g, c in enumerate(count))
    return SparsesteerError(
        f"{what}: {which} has no images in {_where(context)} (images per group: {counts}); an association "
        "needs images on both sides: pick another split, attribute or contrast"
    )


@dataclass(frozen=True, kw_only=True)
class Associations:
    """The result of one pass: `GroupStats` per reduction; score any contrast of groups from it."""

    unit: str
    """'latent' or 'neuron'."""
    n_units: int
    """Latents of the SAE, or the activation width for neurons."""
    stats: dict[str, GroupStats]
    """Reduction ('max', 'mean') -> running sums."""
    n_images: int
    """Images seen (with a group id >= 0)."""
    context: dict[str, Any] = field(default_factory=dict)
    """Where the rows came from (dataset, split, hook, tokens, attribute)."""

    def scores(
        self, reduce: str = "max", positive: int | Sequence[int] = 1, negative: int | Sequence[int] | None = None
    ) -> AssociationScores:
        """Scores on the per-image `reduce` of group(s) `positive` vs `negative` (default: the others)."""
        if reduce not in self.stats:
            raise unknown("reduction", reduce, list(self.stats))
        return self.stats[reduce].scores(positive, negative)

    def top(
        self,
        n: int,
        *,
        by: str = "mean_diff",
        sign: str = "positive",
        reduce: str = "max",
        positive: int | Sequence[int] = 1,
        negative: int | Sequence[int] | None = None,
    ) -> Selection:
        """`scores(reduce, positive, negative).top(n, by=by, sign=sign)`."""
        return self.scores(reduce, positive, negative).top(n, by=by, sign=sign)


# ------------------------------------------------------------------------------------ the pass
def check_groups(groups: Any, n_images: int, context: dict[str, Any]) -> np.ndarray:
    """int64 [n_images] group ids (bools become 0/1); at least two groups must have images."""
    g = np.asarray(groups.detach().cpu() if hasattr(groups, "detach") else groups)
    where = context.get("path") or _where(context)
    if g.ndim != 1 or len(g) != n_images:
        raise SparsesteerError(
            f"group labels: expected one per image of the cache ({n_images} images in {where}), "
            f"got {g.shape[0] if g.ndim else 'a scalar'}{'' if g.ndim <= 1 else f' (shape {g.shape})'}"
        )
    if g.size and not (np.issubdtype(g.dtype, np.integer) or g.dtype == bool):
        raise SparsesteerError(f"group labels must be integers or booleans, got {g.dtype}")
    g = g.astype(np.int64)
    count = np.bincount(g[g >= 0], minlength=2)
    if (count > 0).sum() < 2:
        empty = [k for k in range(len(count)) if count[k] == 0]
        raise _empty_group_error(f"group {empty[0]}", count, context)
    return g


class AssociationAccumulator:
    """The running sums of one pass; feed it whole images (rows of an image in one call, images in
    increasing order) with `add_codes` (SAE latents) or `add_dense` (neurons), then `result()`."""

    def __init__(
        self,
        n_units: int,
        groups: np.ndarray,
        *,
        unit: Unit = "latent",
        reductions: Sequence[str] = REDUCTIONS,
        context: dict[str, Any] | None = None,
    ) -> None:
        for r in reductions:
            if r not in REDUCTIONS:
                raise unknown("reduction", r, REDUCTIONS)
        if not reductions:
            raise SparsesteerError("reductions: give at least one of max, mean")
        self.n_units = int(n_units)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.G = int(self.groups.max()) + 1 if self.groups.size else 0
        self.unit = unit
        self.reductions = tuple(dict.fromkeys(reductions))
        self.context = dict(context or {})
        self._sums: dict[str, list[torch.Tensor]] | None = None
        self._fired: torch.Tensor | None = None
        self._count = np.zeros(self.G, dtype=np.int64)
        self._shift: torch.Tensor | None = None
        self._last_image = -1

    def _init(self, device: torch.device) -> None:
        import torch

        size = self.G * self.n_units
        self._sums = {
            r: [torch.zeros(size, dtype=torch.float64, device=device) for _ in range(2)] for r in self.reductions
        }
        self._fired = torch.zeros(size, dtype=torch.int64, device=device)

    def _images(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local image of each row, global id of each local image, rows per local image)."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if image_ids.size and (np.any(np.diff(image_ids) < 0) or image_ids[0] <= self._last_image):
            raise SparsesteerError(
                "rows must come image by image, in increasing image order and each image in one call "
                f"(an activation cache's rows do); got image {int(image_ids[0])} after image {self._last_image}"
            )
        if image_ids.size and (image_ids.min() < 0 or image_ids.max() >= len(self.groups)):
            raise SparsesteerError(f"image index {int(image_ids.max())} is outside the {len(self.groups)} group labels")
        uniq, local, per_image = np.unique(image_ids, return_inverse=True, return_counts=True)
        if image_ids.size:
            self._last_image = int(image_ids[-1])
        return local, uniq, per_image

    def add_codes(self, codes: SparseCodes, image_ids: np.ndarray) -> None:
        """Rows' SAE codes (values/indices [R, K], padding = 0) and each row's image index."""
        import torch

        K = codes.values.shape[-1]
        values, indices = codes.values.reshape(-1, K), codes.indices.reshape(-1, K)
        if values.shape[0] != len(image_ids):
            raise SparsesteerError(f"{values.shape[0]} rows of codes but {len(image_ids)} image indices")
        local, uniq, per_image = self._images(image_ids)
        if not len(uniq):
            return
        device = values.device
        if self._sums is None:
            self._init(device)
        n = self.n_units
        vals = values.detach().to(torch.float64).reshape(-1)
        keys = (torch.as_tensor(local, device=device)[:, None] * n + indices.to(device)).reshape(-1)
        active = vals != 0
        vals, keys = vals[active], keys[active]
        entries, inverse = torch.unique(keys, return_inverse=True)  # (image, latent) pairs that fired
        img = entries // n
        latent = entries % n
        tokens = torch.as_tensor(per_image, device=device, dtype=torch.float64)[img]
        group = torch.as_tensor(self.groups[uniq], device=device)[img]
        keep = group >= 0
        flat = (group * n + latent)[keep]
        reduced: dict[str, torch.Tensor] = {}
        if "max" in self.reductions:
            top = torch.zeros(len(entries), dtype=torch.float64, device=device)
            top = top.scatter_reduce(0, inverse, vals, reduce="amax", include_self=False)
            n_active = torch.bincount(inverse, minlength=len(entries)).to(torch.float64)
            reduced["max"] = torch.where(n_active < tokens, top.clamp_min(0.0), top)  # inactive tokens count 0
        if "mean" in self.reductions:
            total = torch.zeros(len(entries), dtype=torch.float64, device=device).index_add_(0, inverse, vals)
            reduced["mean"] = total / tokens
        assert self._sums is not None and self._fired is not None
        for r, x in reduced.items():
            x = x[keep]
            self._sums[r][0].index_add_(0, flat, x)
            self._sums[r][1].index_add_(0, flat, x * x)
        self._fired.index_add_(0, flat, torch.ones_like(flat))
        self._count += np.bincount(self.groups[uniq][self.groups[uniq] >= 0], minlength=self.G)[: self.G]

    def add_dense(self, acts: torch.Tensor, image_ids: np.ndarray) -> None:
        """Rows' activations [R, n_units] (neurons) and each row's image index."""
        import torch

        acts = acts.detach().reshape(-1, acts.shape[-1])
        if acts.shape[1] != self.n_units:
            raise SparsesteerError(f"activations have width {acts.shape[1]}, expected {self.n_units}")
        if acts.shape[0] != len(image_ids):
            raise SparsesteerError(f"{acts.shape[0]} rows of activations but {len(image_ids)} image indices")
        local, uniq, per_image = self._images(image_ids)
        if not len(uniq):
            return
        device = acts.device
        if self._sums is None:
            self._init(device)
        x = acts.to(torch.float64)
        B, n = len(uniq), self.n_units
        index = torch.as_tensor(local, device=device)[:, None].expand(-1, n)
        top = torch.full((B, n), -torch.inf, dtype=torch.float64, device=device).scatter_reduce(
            0, index, x, reduce="amax", include_self=True
        )
        total = torch.zeros((B, n), dtype=torch.float64, device=device).index_add_(0, index[:, 0], x)
        mean = total / torch.as_tensor(per_image, device=device, dtype=torch.float64)[:, None]
        if self._shift is None:
            self._shift = mean.mean(0)
        group = torch.as_tensor(self.groups[uniq], device=device)
        keep = group >= 0
        g = group[keep]
        assert self._sums is not None and self._fired is not None
        for r, v in (("max", top), ("mean", mean)):
            if r not in self.reductions:
                continue
            v = v[keep] - self._shift
            self._sums[r][0].view(self.G, n).index_add_(0, g, v)
            self._sums[r][1].view(self.G, n).index_add_(0, g, v * v)
        self._fired.view(self.G, n).index_add_(0, g, (top[keep] > 0).to(torch.int64))
        self._count += np.bincount(self.groups[uniq][self.groups[uniq] >= 0], minlength=self.G)[: self.G]

    def result(self) -> Associations:
        """The sums so far as `Associations`."""
        G, n = self.G, self.n_units
        if self._sums is None:
            zeros = np.zeros((G, n))
            sums = {r: (zeros, zeros) for r in self.reductions}
            fired = np.zeros((G, n), dtype=np.int64)
        else:
            assert self._fired is not None
            sums = {r: tuple(t.cpu().numpy().reshape(G, n) for t in s) for r, s in self._sums.items()}  # type: ignore[misc]
            fired = self._fired.cpu().numpy().reshape(G, n)
        shift = np.zeros(n) if self._shift is None else self._shift.cpu().numpy().astype(np.float64)
        stats = {
            r: GroupStats(
                unit=self.unit,
                reduce=r,
                count=self._count.copy(),
                sum=s,
                sumsq=q,
                fired=fired,
                shift=shift,
                context=dict(self.context),
            )
            for r, (s, q) in sums.items()
        }
        return Associations(
            unit=self.unit, n_units=n, stats=stats, n_images=int(self._count.sum()), context=dict(self.context)
        )


def _context(view: RowView, attribute: str | None) -> dict[str, Any]:
    desc = view.describe() if hasattr(view, "describe") else {}
    keys = ("path", "hook", "tokens", "dataset", "split", "model")
    return {**{k: desc.get(k) for k in keys if k in desc}, **({"attribute": attribute} if attribute else {})}


def _n_images(view: RowView) -> int:
    cache = getattr(view, "cache", None)
    if cache is None or not hasattr(view, "row_index"):
        raise SparsesteerError("associations need a RowView of an activation cache (rows with their image index)")
    return int(cache.n_images)


def _stream(view: RowView, batch_rows: int, consume: Any) -> None:
    """Read the view in chunks of about `batch_rows` rows and pass whole images to `consume(x, image_ids)`;
    the rows of the image cut by a chunk boundary are carried over to the next chunk."""
    import torch

    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise SparsesteerError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    from ..utils.progress import progress

    carry_x: torch.Tensor | None = None
    carry_img = np.zeros(0, dtype=np.int64)
    n_rows = view.n_rows
    with progress(total=n_rows, desc="associations", unit="row") as bar:
        for start in range(0, n_rows, batch_rows):
            stop = min(start + batch_rows, n_rows)
            x = view.read(start, stop)
            img = view.row_index(start, stop)[:, 0]
            if carry_x is not None:
                x, img = torch.cat([carry_x, x]), np.concatenate([carry_img, img])
            if stop < n_rows:
                cut = int(np.searchsorted(img, img[-1], side="left")) if np.all(np.diff(img) >= 0) else len(img)
                carry_x, carry_img = x[cut:], img[cut:]
                x, img = x[:cut], img[:cut]
            else:
                carry_x, carry_img = None, carry_img[:0]
            if len(img):
                consume(x, img)
            bar.update(stop - start)


def latent_associations(
    view: RowView,
    sae: SparseAutoencoder,
    groups: Any,
    *,
    reductions: Sequence[str] = REDUCTIONS,
    batch_rows: int = 8192,
    attribute: str | None = None,
) -> Associations:
    """Stream the view's rows through `sae.encode` and keep per-group sums of every latent's
    per-image max and mean. `groups`: int [cache images] group id per image (bools allowed;
    negative = left out). `attribute` names the labels in messages and in the result's context."""
    import torch

    context = _context(view, attribute)
    n_images = _n_images(view)
    if view.d != sae.d_in:
        raise SparsesteerError(f"{context.get('path')}: rows have width {view.d} but the SAE's d_in is {sae.d_in}")
    g = check_groups(groups, n_images, context)
    acc = AssociationAccumulator(sae.n_latents, g, unit="latent", reductions=reductions, context=context)

    def consume(x: torch.Tensor, img: np.ndarray) -> None:
        with torch.no_grad():  # not inference_mode: the kernels keep buffers across calls
            acc.add_codes(sae.encode(x.to(sae.device)), img)

    _stream(view, batch_rows, consume)
    return acc.result()


def neuron_associations(
    view: RowView,
    groups: Any,
    *,
    reductions: Sequence[str] = REDUCTIONS,
    batch_rows: int = 8192,
    attribute: str | None = None,
    device: str | None = None,
) -> Associations:
    """The same scores for the raw activation dimensions (a neuron-ablation baseline ranks its
    neurons exactly as the SAE's latents are ranked)."""

    context = _context(view, attribute)
    g = check_groups(groups, _n_images(view), context)
    acc = AssociationAccumulator(view.d, g, unit="neuron", reductions=reductions, context=context)

    def consume(x: torch.Tensor, img: np.ndarray) -> None:
        acc.add_dense(x.to(device) if device else x, img)

    _stream(view, batch_rows, consume)
    return acc.result()
