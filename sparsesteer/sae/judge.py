"""Judging an SAE: the metric suites of `sparsesteer evaluate --suite` that need only the SAE and
activations (never the model), measured in ONE streamed pass over a cache view.

Suites (each a list of `MetricResult`: value, direction, settings, data):
- reconstruction: FVU, cosine, L0, dead/dense latents; per token type (CLS vs patch) on all-token views.
- preservation: a multinomial logistic probe trained on the original per-image activations, tested on
  held-out originals and on their reconstructions; value = accuracy(recon) / accuracy(original).
- sparse_probing: per class, latents ranked by a class-separation score (|mean in class - mean out|
  on max-pooled codes, train split), k-sparse one-vs-rest probes for each k; balanced accuracy per k,
  value = normalised area under the accuracy-vs-log(k) curve.
- localisation: Moran's I (8-neighbour weights) of each latent's activation over the patch grid of the
  images it fires on, averaged per latent; value = mean over latents, plus the fraction not localised.

Memory is bounded: the probes keep at most `max_images` per-image vectors (d for preservation,
n_latents for sparse probing); everything else is running sums. Rows are processed whole images at a
time (cache views are image-major)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..activations.loader import RowSource
from ..utils.errors import SparsesteerError, unknown
from ..utils.progress import progress
from ..utils.report import md_table
from .base import SparseAutoencoder

SUITES = ("reconstruction", "preservation", "sparse_probing", "localisation")
"""Suites measured here (SAE + activations only)."""
MODEL_SUITES = ("spliced", "monosemanticity")
"""Suites that need a model (not in this module; see docs/sae.md)."""


@dataclass
class MetricResult:
    """One measured number and what it was measured on."""

    name: str
    """Metric name, e.g. 'fvu' or 'sparse_probing_auc'."""
    value: float
    """The number (NaN when it could not be measured, with the reason in `details['note']`)."""
    higher_is_better: bool | None
    """Direction; None for descriptive numbers (L0)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Knobs that change the value."""
    data: dict[str, Any] = field(default_factory=dict)
    """What it was measured on: rows, images, source."""
    details: dict[str, Any] = field(default_factory=dict)
    """Extra numbers (per-k accuracies, per-class counts, ...)."""
    suite: str = ""
    """Suite it belongs to."""
    meaningful: bool = True
    """False when the value was measured but carries no information (e.g. % CE recovered of a hook whose
    ablation barely moves the CE), the reason in `details['note']`: JSON keeps the value, Markdown
    shows 'n/m (note)'."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["value"], float) and not math.isfinite(d["value"]):
            d["value"] = None
        return d


@dataclass
class JudgeSettings:
    """Knobs of the suites (each documented in docs/sae.md, "Judging an SAE")."""

    batch_size: int = 4096
    """Rows per batch (rounded down to whole images; does not change the metrics)."""
    max_rows: int | None = None
    """Judge only the first N rows (rounded down to whole images); None = all."""
    dense_threshold: float | None = None
    """Firing frequency above which a latent is dense; None = the SAE's own setting."""
    max_images: int = 10_000
    """Probe suites keep at most this many images (their memory bound)."""
    test_frac: float = 0.2
    """Share of the probe images held out for testing (seeded split by image)."""
    seed: int = 0
    """Seed of the train/test split."""
    probe_l2: float = 1e-3
    """L2 penalty of every probe (on standardised features)."""
    probe_steps: int = 50
    """L-BFGS iterations of the preservation probe."""
    newton_steps: int = 15
    """Newton iterations of each k-sparse probe."""
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    """k of the sparse probes (those above n_latents are dropped)."""
    min_active_patches: int = 3
    """Localisation: an image counts for a latent only if it fires on at least this many patches ..."""
    max_active_frac: float = 0.5
    """... and on at most this fraction of the patches (a latent firing everywhere says nothing)."""
    images_per_latent: int = 32
    """Localisation: at most this many (the first) qualifying images per latent."""
    localised_threshold: float = 0.1
    """A latent whose mean Moran's I is at or below this is 'not localised'."""

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.max_rows is None or self.max_rows >= 1, "max_rows", ">= 1"),
            (self.max_images >= 4, "max_images", ">= 4"),
            (0 < self.test_frac < 1, "test_frac", "in (0, 1)"),
            (self.min_active_patches >= 2, "min_active_patches", ">= 2"),
            (0 < self.max_active_frac < 1, "max_active_frac", "in (0, 1)"),
            (self.images_per_latent >= 1, "images_per_latent", ">= 1"),
            (len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "ks", "non-empty, each >= 1"),
        ]
        for ok, name, want in checks:
            if not ok:
                raise SparsesteerError(f"judge setting {name} must be {want}, got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------- math on tensors
def morans_i(grid: torch.Tensor) -> torch.Tensor:
    """Moran's I of each [..., H, W] grid with 8-neighbour (queen) binary weights:
    I = N / W * sum_ij w_ij z_i z_j / sum_i z_i^2, z = value - grid mean, W = number of ordered
    neighbour pairs. NaN for a constant grid."""
    g = grid.double()
    h, w = g.shape[-2:]
    z = g - g.mean(dim=(-2, -1), keepdim=True)
    pad = torch.nn.functional.pad(z.reshape(-1, 1, h, w), (1, 1, 1, 1)).reshape(*z.shape[:-2], h + 2, w + 2)
    nsum = torch.zeros_like(z)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                nsum += pad[..., dy : dy + h, dx : dx + w]
    n_pairs = (2 * (h * (w - 1) + w * (h - 1)) + 4 * (h - 1) * (w - 1)) if h and w else 0
    num = (z * nsum).sum(dim=(-2, -1))
    den = z.pow(2).sum(dim=(-2, -1))
    out = (h * w / max(n_pairs, 1)) * num / den
    return torch.where(den > 0, out, torch.full_like(out, float("nan")))


def _standardise(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = train.mean(0)
    sd = train.std(0, unbiased=False).clamp_min(1e-6)
    return mu, sd


def fit_softmax_probe(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, steps: int = 50
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features by full-batch L-BFGS:
    returns (mean, std, W [d, C], b [C]); predict with `softmax_predict`."""
    x = x.double()
    mu, sd = _standardise(x)
    z = (x - mu) / sd
    W = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9, history_size=10)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ W + b, y) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return mu, sd, W.detach(), b.detach()


def softmax_predict(probe: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    mu, sd, W, b = probe
    return (((x.double() - mu) / sd) @ W + b).argmax(-1)


def fit_binary_probes(
    x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, steps: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-balanced logistic regressions fitted by Newton's method, one per leading index:
    x [C, n, k] features, y [C, n] in {0, 1}. Returns (mean [C, k], std [C, k], w [C, k + 1]: bias last)."""
    x = x.double()
    y = y.double()
    mu = x.mean(1, keepdim=True)
    sd = x.std(1, unbiased=False, keepdim=True).clamp_min(1e-6)
    z = torch.cat([(x - mu) / sd, torch.ones_like(x[..., :1])], -1)
    n_pos = y.sum(1, keepdim=True).clamp_min(1)
    n_neg = (1 - y).sum(1, keepdim=True).clamp_min(1)
    s = (y / (2 * n_pos) + (1 - y) / (2 * n_neg)) * y.shape[1]  # balanced sample weights
    c, n, k1 = z.shape
    reg = torch.eye(k1, dtype=torch.float64) * (l2 * n)
    reg[-1, -1] = 1e-8
    w = torch.zeros(c, k1, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(torch.einsum("cnk,ck->cn", z, w))
        grad = torch.einsum("cnk,cn->ck", z, s * (p - y)) + (reg @ w.T).T
        hess = torch.einsum("cnk,cn,cnj->ckj", z, s * p * (1 - p), z) + reg
        w = w - torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
    return mu.squeeze(1), sd.squeeze(1), w


def binary_predict(probes: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    mu, sd, w = probes
    z = (x.double() - mu[:, None]) / sd[:, None]
    return (torch.einsum("cnk,ck->cn", z, w[:, :-1]) + w[:, -1:]) > 0


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the true-positive and true-negative rates, per leading index ([C, n] booleans)."""
    y = y.bool()
    tpr = (pred & y).sum(-1).double() / y.sum(-1).clamp_min(1)
    tnr = (~pred & ~y).sum(-1).double() / (~y).sum(-1).clamp_min(1)
    return (tpr + tnr) / 2


def normalised_auc(ks: Sequence[int], acc: Sequence[float]) -> float:
    """Area under accuracy vs log(k) (trapezoids) divided by the log(k) range: a mean accuracy level;
    the accuracy itself for a single k."""
    if len(ks) == 1:
        return float(acc[0])
    lk = np.log(np.asarray(ks, dtype=np.float64))
    a = np.asarray(acc, dtype=np.float64)
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(lk)) / (lk[-1] - lk[0]))


def split_images(n: int, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) image indices of a seeded permutation; at least one image in each."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, int(round(n * test_frac))))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def sparse_probe_scores(codes: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class-separation score [C, L]: |mean code in class - mean code outside| (codes [n, L])."""
    codes = codes.double()
    onehot = (y[None, :] == classes[:, None]).double()  # [C, n]
    n_in = onehot.sum(1, keepdim=True)
    sum_in = onehot @ codes
    mean_in = sum_in / n_in.clamp_min(1)
    mean_out = (codes.sum(0, keepdim=True) - sum_in) / (codes.shape[0] - n_in).clamp_min(1)
    return (mean_in - mean_out).abs()


def sparse_probing(
    codes: torch.Tensor,
    y: np.ndarray,
    *,
    ks: Sequence[int],
    test_frac: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    steps: int = 15,
) -> dict[str, Any]:
    """k-sparse probing on pooled codes [n, L] with labels y [n]: per class (one vs rest), the top-k
    latents by `sparse_probe_scores` on the train split, a balanced logistic probe on them, balanced
    accuracy on the test split. Returns {'ks', 'accuracy' (mean over classes per k), 'auc',
    'classes' (the classes probed: present in both splits)}."""
    n, n_lat = codes.shape
    ks = sorted({int(k) for k in ks if k <= n_lat}) or [n_lat]
    tr, te = split_images(n, test_frac, seed)
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    cls = [c for c in np.unique(y) if (y[tr] == c).any() and (y[te] == c).any() and (y[tr] != c).any()]
    if not cls:
        raise SparsesteerError("sparse probing: no class has images in both the train and the test split")
    classes = torch.tensor(cls, dtype=torch.int64)
    xtr, xte = codes[torch.from_numpy(tr)], codes[torch.from_numpy(te)]
    ytr, yte = yt[torch.from_numpy(tr)], yt[torch.from_numpy(te)]
    order = sparse_probe_scores(xtr, ytr, classes).argsort(dim=1, descending=True)
    acc = []
    for k in progress(ks, desc="sparse_probing: k-sparse probes", unit="k"):
        per_class = []
        chunk = max(1, int(2e7 // (len(tr) * (k + 1))))
        for c0 in range(0, len(cls), chunk):
            cc = classes[c0 : c0 + chunk]
            top = order[c0 : c0 + chunk, :k]  # [c, k]
            ftr = xtr[:, top].permute(1, 0, 2)  # [c, n_tr, k]
            fte = xte[:, top].permute(1, 0, 2)
            probes = fit_binary_probes(ftr, ytr[None, :] == cc[:, None], l2=l2, steps=steps)
            per_class.append(balanced_accuracy(binary_predict(probes, fte), yte[None, :] == cc[:, None]))
        acc.append(float(torch.cat(per_class).mean()))
    return {"ks": ks, "accuracy": acc, "auc": normalised_auc(ks, acc), "classes": len(cls)}


# ---------------------------------------------------------------------------- the pass
@dataclass
class _Chunk:
    x: torch.Tensor
    """[images * m, d] rows"""
    images: int
    labels: np.ndarray | None
    """[images] label per image"""


def _rows_per_image(source: RowSource, n: int) -> tuple[int, np.ndarray | None]:
    row_index = getattr(source, "row_index", None)
    if row_index is None:
        return 1, None
    first = row_index(0, min(n, 4096))
    m = int((first[:, 0] == first[0, 0]).sum())
    return m, first[:m, 1].copy()


def _chunks(
    source: RowSource, n: int, m: int, tokens: np.ndarray | None, batch_size: int, desc: str = "judge"
) -> Iterator[_Chunk]:
    step = max(1, batch_size // m) * m
    row_index = getattr(source, "row_index", None)
    for s in progress(range(0, n, step), desc=desc, unit="batch"):
        e = min(n, s + step)
        x = source.read(s, e).float()
        if row_index is not None and tokens is not None:  # `_rows_per_image` gives tokens exactly with row_index
            idx = row_index(s, e).reshape(-1, m, 2)
            if not ((idx[:, :, 0] == idx[:, :1, 0]).all() and (idx[:, :, 1] == tokens[None]).all()):
                raise SparsesteerError(
                    f"{source.describe().get('path', 'the activations')}: rows {s}..{e} are not whole images of "
                    f"{m} rows with the same tokens each: the suites need an image-major cache view"
                )
        labels = source.labels(s, e)
        yield _Chunk(x, (e - s) // m, None if labels is None else np.asarray(labels)[::m])


def _no_labels(source: RowSource, probe_suites: set[str]) -> SparsesteerError:
    return SparsesteerError(
        f"suite(s) {', '.join(sorted(probe_suites))} need labels, but "
        f"{source.describe().get('path', 'the activations')} has none: cache a labelled dataset, or drop them"
    )


@torch.no_grad()
def judge(
    sae: SparseAutoencoder,
    source: RowSource,
    *,
    suites: Sequence[str] = SUITES,
    settings: JudgeSettings | None = None,
    cls_position: int | None = None,
    patch_positions: Sequence[int] = (),
) -> list[MetricResult]:
    """Measure the given suites of `sae` on `source` (a cache view with `row_index`, or a plain row
    source whose rows are then one image each) in one streamed pass. `cls_position` / `patch_positions`
    (raster order) name the token indices of the CLS and patch tokens."""
    st = settings or JudgeSettings()
    for s in suites:
        if s in MODEL_SUITES:
            raise SparsesteerError(f"suite {s!r} needs a model and is not measured by sae.judge (see docs/sae.md)")
        if s not in SUITES:
            raise unknown("suite", s, SUITES)
    if source.d != sae.d_in:
        raise SparsesteerError(f"activation width {source.d} does not match the SAE's d_in={sae.d_in}")
    n = source.n_rows if st.max_rows is None else min(st.max_rows, source.n_rows)
    m, tokens = _rows_per_image(source, n)
    n = n // m * m
    if n == 0:
        raise SparsesteerError("judge: no whole image in the rows to judge (raise --max-rows)")
    tok = list(tokens) if tokens is not None else []
    cls_col = tok.index(cls_position) if cls_position is not None and cls_position in tok else None
    patch_cols = [tok.index(p) for p in patch_positions if p in tok]
    side = int(round(math.sqrt(len(patch_cols)))) if patch_cols else 0
    want = set(suites)
    if "localisation" in want:
        if not patch_cols:
            raise SparsesteerError(
                "suite 'localisation' needs patch tokens, but these activations have none (a CLS-only SAE or "
                "view): judge a patch or all-token SAE, or drop the suite"
            )
        if len(patch_cols) != len(patch_positions) or side * side != len(patch_cols):
            raise SparsesteerError(
                f"suite 'localisation' needs the full square patch grid; the view has {len(patch_cols)} of "
                f"{len(patch_positions)} patch tokens"
            )
    probe_suites = want & {"preservation", "sparse_probing"}
    if probe_suites and source.labels(0, min(n, 1)) is None:
        raise _no_labels(source, probe_suites)

    dev = sae.device
    sae = sae.eval()
    L, d = sae.n_latents, sae.d_in
    groups: dict[str, list[int]] = {"all": list(range(m))}
    if cls_col is not None and patch_cols:
        groups = {"all": list(range(m)), "cls": [cls_col], "patch": patch_cols}
    # running sums per token column (float64): sum x [m, d], sum ||x||^2, sum ||x - x_hat||^2, sum L0
    tok_sx = torch.zeros(m, d, dtype=torch.float64, device=dev)
    tok_sums = {k: torch.zeros(m, dtype=torch.float64, device=dev) for k in ("sx2", "err", "l0", "l0sq", "cos")}
    fire = torch.zeros(L, dtype=torch.long, device=dev)
    keep: dict[str, list[Any]] = {"x": [], "xh": [], "codes": [], "y": []}
    kept = 0
    mor_sum = torch.zeros(L, dtype=torch.float64)
    mor_n = torch.zeros(L, dtype=torch.long)
    n_images = 0
    pc = _as_slice(patch_cols)
    for ch in _chunks(source, n, m, tokens, st.batch_size, desc=f"judge: {', '.join(s for s in SUITES if s in want)}"):
        x = ch.x.to(dev)
        codes = sae.encode(x)
        xh = sae.decode(codes, like=x).float()
        x2, e2, xh2 = x.pow(2).sum(-1), (x - xh).pow(2).sum(-1), xh.pow(2).sum(-1)
        if not (torch.isfinite(x2).all() and torch.isfinite(e2).all()):
            raise SparsesteerError(f"NaN or Inf in the activations or their reconstruction near image {n_images}")
        active = codes.values != 0
        l0 = active.sum(-1).float()
        fire += torch.bincount(codes.indices[active], minlength=L)
        cos = (x * xh).sum(-1) / (x2 * xh2).sqrt().clamp_min(1e-12)
        tok_sx += x.reshape(ch.images, m, d).sum(0).double()
        for k, v in (("sx2", x2), ("err", e2), ("l0", l0), ("l0sq", l0 * l0), ("cos", cos)):
            tok_sums[k] += v.reshape(ch.images, m).double().sum(0)
        dense = None
        if "sparse_probing" in want or "localisation" in want:
            dense = codes.to_dense(L).float().reshape(ch.images, m, L)
        take = min(ch.images, st.max_images - kept)
        if probe_suites and take > 0:
            if ch.labels is None:  # not reached for a cache or array: labels of all rows or of none
                raise _no_labels(source, probe_suites)
            keep["y"].append(ch.labels[:take])
            if "preservation" in want:
                xi, xhi = x.reshape(ch.images, m, d)[:take], xh.reshape(ch.images, m, d)[:take]
                keep["x"].append((xi[:, cls_col] if cls_col is not None else xi.mean(1)).cpu())
                keep["xh"].append((xhi[:, cls_col] if cls_col is not None else xhi.mean(1)).cpu())
            if dense is not None and "sparse_probing" in want:
                keep["codes"].append(dense[:take].amax(1).cpu())
            kept += take
        if dense is not None and "localisation" in want:
            g = dense[:, pc, :]  # [images, patches, L] (a view when the patch tokens are contiguous)
            on = active.reshape(ch.images, m, -1)[:, pc]  # active patches per image, counted from the sparse codes
            lat_on = codes.indices.reshape(ch.images, m, -1)[:, pc]
            img_on = torch.arange(ch.images, device=dev)[:, None, None].expand_as(lat_on)
            key = (img_on * L + lat_on)[on]
            n_act = torch.bincount(key, minlength=ch.images * L).reshape(ch.images, L)
            ok = (n_act >= st.min_active_patches) & (n_act <= st.max_active_frac * side * side)
            ok &= (ok.long().cumsum(0) + mor_n.to(dev)[None]) <= st.images_per_latent
            if bool(ok.any()):
                img, lat = ok.nonzero(as_tuple=True)
                vals = morans_i(g[img, :, lat].reshape(-1, side, side)).cpu()
                good = torch.isfinite(vals)
                mor_sum.index_add_(0, lat.cpu()[good], vals[good])
                mor_n += torch.bincount(lat.cpu()[good], minlength=L)
        n_images += ch.images

    data = {"rows": n, "images": n_images, "rows_per_image": m, "source": source.describe()}
    out: list[MetricResult] = []
    if "reconstruction" in want:
        out += _reconstruction(
            groups, tok_sx.cpu(), {k: v.cpu() for k, v in tok_sums.items()}, fire.cpu(), sae, st, data
        )
    if "preservation" in want:
        out.append(_preservation(keep, st, data))
    if "sparse_probing" in want:
        out.append(_sparse(keep, st, data))
    if "localisation" in want:
        out += _localisation(mor_sum, mor_n, st, side, data)
    return out


def _reconstruction(groups, tok_sx, tok, fire, sae, st, data) -> list[MetricResult]:
    thr = st.dense_threshold if st.dense_threshold is not None else sae.cfg.dense_threshold
    n = data["rows"]
    freq = fire.double() / n
    per_col = data["rows"] // data["rows_per_image"]  # rows of each token column
    res = []
    for g, cols in groups.items():
        rows = per_col * len(cols)
        sx2, err = float(tok["sx2"][cols].sum()), float(tok["err"][cols].sum())
        total = sx2 - float(tok_sx[cols].sum(0).pow(2).sum()) / rows
        fvu = err / total if total > 0 else float("nan")
        tag = "" if g == "all" else f"_{g}"
        dg = {**data, "rows": rows, "tokens": g}
        res.append(MetricResult(f"fvu{tag}", fvu, False, {}, dg, {"mse": err / (rows * sae.d_in)}))
        l0 = float(tok["l0"][cols].sum()) / rows
        l0_std = math.sqrt(max(float(tok["l0sq"][cols].sum()) / rows - l0**2, 0.0))
        res.append(MetricResult(f"l0{tag}", l0, None, {}, dg, {"l0_std": l0_std}))
    res.append(MetricResult("cosine", float(tok["cos"].sum()) / n, True, {}, data))
    res.append(MetricResult("dead_frac", float((freq == 0).double().mean()), False, {}, data))
    res.append(MetricResult("dense_frac", float((freq > thr).double().mean()), False, {"dense_threshold": thr}, data))
    for r in res:
        r.suite = "reconstruction"
    return res


def _as_slice(cols: list[int]) -> slice | list[int]:
    if cols and cols == list(range(cols[0], cols[-1] + 1)):
        return slice(cols[0], cols[-1] + 1)
    return cols


def _probe_data(keep, key, data):
    y = np.concatenate(keep["y"])
    lab = y >= 0
    if lab.sum() < 4:
        raise SparsesteerError(
            f"the probe suites need labels: {int(lab.sum())} of {len(y)} images are labelled (at least 4 needed); "
            "cache a labelled dataset, or drop preservation and sparse_probing"
        )
    x = torch.cat(keep[key])[torch.from_numpy(lab)]
    return x, y[lab], {**data, "probe_images": int(lab.sum())}


def _preservation(keep, st, data) -> MetricResult:
    x, y, dd = _probe_data(keep, "x", data)
    xh = torch.cat(keep["xh"])[torch.from_numpy(np.concatenate(keep["y"]) >= 0)]
    classes, yi = np.unique(y, return_inverse=True)
    tr, te = split_images(len(y), st.test_frac, st.seed)
    yt = torch.from_numpy(yi.astype(np.int64))
    with progress(total=1, desc="preservation: probe", unit="fit") as bar:
        probe = fit_softmax_probe(x[tr], yt[tr], len(classes), l2=st.probe_l2, steps=st.probe_steps)
        bar.update()
    a_orig = float((softmax_predict(probe, x[te]) == yt[te]).double().mean())
    a_rec = float((softmax_predict(probe, xh[te]) == yt[te]).double().mean())
    ratio = a_rec / a_orig if a_orig > 0 else float("nan")
    settings = {k: getattr(st, k) for k in ("test_frac", "seed", "probe_l2", "probe_steps", "max_images")}
    details = {"accuracy_original": a_orig, "accuracy_reconstructed": a_rec, "classes": len(classes)}
    return MetricResult("preservation_ratio", ratio, True, settings, dd, details, "preservation")


def _sparse(keep, st, data) -> MetricResult:
    codes, y, dd = _probe_data(keep, "codes", data)
    r = sparse_probing(codes, y, ks=st.ks, test_frac=st.test_frac, seed=st.seed, l2=st.probe_l2, steps=st.newton_steps)
    settings = {k: getattr(st, k) for k in ("ks", "test_frac", "seed", "probe_l2", "newton_steps", "max_images")}
    settings["ks"] = list(settings["ks"])
    details = {"ks": r["ks"], "balanced_accuracy": r["accuracy"], "classes": r["classes"]}
    return MetricResult("sparse_probing_auc", r["auc"], True, settings, dd, details, "sparse_probing")


def _localisation(mor_sum, mor_n, st, side, data) -> list[MetricResult]:
    settings = {
        k: getattr(st, k) for k in ("min_active_patches", "max_active_frac", "images_per_latent", "localised_threshold")
    }
    settings["grid"] = [side, side]
    measured = mor_n > 0
    n_lat = int(measured.sum())
    per = mor_sum[measured] / mor_n[measured]
    dd = {**data, "latents_measured": n_lat, "latents": int(mor_n.numel())}
    note = {} if n_lat else {"note": "no latent qualified on any image (see min_active_patches, max_active_frac)"}
    mean = float(per.mean()) if n_lat else float("nan")
    frac = float((per <= st.localised_threshold).double().mean()) if n_lat else float("nan")
    return [
        MetricResult("morans_i", mean, True, settings, dd, dict(note), "localisation"),
        MetricResult("not_localised_frac", frac, False, settings, dd, dict(note), "localisation"),
    ]


# ---------------------------------------------------------------------------- report
def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def _cell(r: MetricResult) -> str:
    return _fmt(r.value) if r.meaningful else f"n/m ({r.details.get('note', 'not meaningful')})"


def comparison_markdown(results: dict[str, list[MetricResult]], title: str = "SAE evaluation") -> str:
    """One table: a row per metric (with its direction), a column per SAE."""
    names = list(results)
    order: list[tuple[str, str]] = []
    by: dict[str, dict[str, MetricResult]] = {}
    for sae_name, rs in results.items():
        for r in rs:
            if (r.suite, r.name) not in order:
                order.append((r.suite, r.name))
            by.setdefault(r.name, {})[sae_name] = r
    arrow = {True: "higher", False: "lower", None: "-"}
    rows = []
    for suite, name in order:
        some = next(iter(by[name].values()))
        cells = [_cell(by[name][s]) if s in by[name] else "" for s in names]
        rows.append([suite, name, arrow[some.higher_is_better], *cells])
    table = md_table(["suite", "metric", "better", *names], rows, "lll" + "r" * len(names))
    return f"## {title}\n\n{table}\n"
