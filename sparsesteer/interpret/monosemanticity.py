"""Monosemanticity of an SAE's latents under a second backbone (`sparsesteer evaluate --suite
monosemanticity`).

For each latent, its top images by max activation over the cached rows (`stats.latent_stats`,
ranking "max"), at most `images_per_latent`, are embedded by another model (its `head` output;
DINOv2 by default). The latent's score is the activation-weighted mean pairwise cosine of those
embeddings,

    s = sum_{i<j} a_i a_j cos(e_i, e_j) / sum_{i<j} a_i a_j

(a_i: the latent's max activation on image i). The value is the mean of s over the latents that
fire (a > 0) on at least 2 images; at most `max_latents` latents (a seeded sample) are scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..sae.judge import MetricResult
from ..utils.errors import SparsesteerError
from ..utils.progress import progress


def weighted_pairwise_cosine(emb_nd: Any, weights_n: Sequence[float] | np.ndarray) -> float:
    """sum_{i<j} w_i w_j cos(e_i, e_j) / sum_{i<j} w_i w_j; NaN for fewer than 2 images (or zero weight)."""
    e = np.asarray(emb_nd, dtype=np.float64)
    w = np.asarray(weights_n, dtype=np.float64)
    if e.ndim != 2 or len(e) != len(w):
        raise SparsesteerError("weighted_pairwise_cosine: need [n, d] embeddings and n weights")
    if len(w) < 2:
        return float("nan")
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    cos = u @ u.T
    ww = np.outer(w, w)
    iu = np.triu_indices(len(w), k=1)
    den = ww[iu].sum()
    return float((ww[iu] * cos[iu]).sum() / den) if den > 0 else float("nan")


def monosemanticity_from_top(
    values_ln: np.ndarray,
    images_ln: np.ndarray,
    embed: Callable[[list[int]], np.ndarray],
    *,
    images_per_latent: int = 10,
    max_latents: int | None = 512,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> MetricResult:
    """The metric from each latent's top images (`values_ln`, `images_ln`: best first, image -1 = empty)
    and `embed(image indices) -> [n, d]` embeddings."""
    if images_per_latent < 2:
        raise SparsesteerError(f"monosemanticity: images per latent must be >= 2, got {images_per_latent}")
    vals = np.asarray(values_ln)[:, :images_per_latent]
    imgs = np.asarray(images_ln)[:, :images_per_latent]
    fired = (imgs >= 0) & (vals > 0)
    eligible = np.flatnonzero(fired.sum(1) >= 2)
    if max_latents is not None and len(eligible) > max_latents:
        rng = np.random.default_rng(seed)
        eligible = np.sort(rng.choice(eligible, size=max_latents, replace=False))
    needed = sorted({int(i) for lat in eligible for i in imgs[lat][fired[lat]]})
    emb = np.asarray(embed(needed), dtype=np.float64) if needed else np.zeros((0, 1))
    row = {img: k for k, img in enumerate(needed)}
    scores = {}
    for lat in eligible:
        sel = fired[lat]
        e = emb[[row[int(i)] for i in imgs[lat][sel]]]
        scores[int(lat)] = weighted_pairwise_cosine(e, vals[lat][sel])
    finite = [s for s in scores.values() if np.isfinite(s)]
    value = float(np.mean(finite)) if finite else float("nan")
    details: dict[str, Any] = {"n_latents_scored": len(finite), "n_images_embedded": len(needed)}
    if not finite:
        details["note"] = "no latent fires on 2 or more images"
    return MetricResult(
        "monosemanticity",
        value,
        True,
        settings={"images_per_latent": images_per_latent, "max_latents": max_latents, "seed": seed, **(settings or {})},
        data=dict(data or {}),
        details=details,
        suite="monosemanticity",
    )


def embed_images(
    backbone: Any, dataset: Any, indices: list[int], *, batch_size: int = 64, desc: str = "monosemanticity: embed"
) -> np.ndarray:
    """[n, d] `head` output of `backbone` on `dataset[indices]` (`desc` labels the progress bar)."""
    import torch

    from ..data.batches import image_batches
    from ..data.subset import Subset

    if not indices:
        return np.zeros((0, 1))
    if max(indices) >= len(dataset) or min(indices) < 0:
        raise SparsesteerError(
            f"the cache references image {max(indices)}, but {dataset!r} has {len(dataset)} images: "
            "the dataset is not the one the activations were cached from"
        )
    sub = Subset(dataset, np.asarray(indices), seed=0, n_asked=len(indices))
    out = []
    with torch.no_grad():
        batches = image_batches(sub, backbone.preprocessor, batch_size=batch_size, workers=0)
        total = -(-len(indices) // batch_size)
        for b in progress(batches, total=total, desc=desc, unit="batch"):
            out.append(backbone.embed_images(b.pixels.to(backbone.device)).double().cpu().numpy())
    return np.concatenate(out)


def monosemanticity(
    sae: Any,
    view: Any,
    dataset: Any,
    backbone: Any,
    *,
    images_per_latent: int = 10,
    max_latents: int | None = 512,
    seed: int = 0,
    batch_size: int = 4096,
    image_batch_size: int = 64,
    max_images: int | None = None,
) -> MetricResult:
    """Top images of every latent of `sae` over `view` (a cache view), embedded by `backbone`."""
    from .stats import latent_stats

    stats = latent_stats(
        sae,
        view,
        top_n=images_per_latent,
        batch_size=batch_size,
        max_images=max_images,
        desc="monosemanticity: top images",
    )
    top = stats.top["max"]
    return monosemanticity_from_top(
        top.values,
        top.images,
        lambda idx: embed_images(backbone, dataset, idx, batch_size=image_batch_size),
        images_per_latent=images_per_latent,
        max_latents=max_latents,
        seed=seed,
        settings={"backbone": getattr(backbone, "model_id", None)},
        data={"images": stats.n_images, "rows": stats.n_rows},
    )
