"""CLIP-Dissect labels (Oikarinen & Weng, ICLR 2023): a vocabulary word for every latent, at any block
and token type, from the images the latent fires on and the model's own text tower (no language model).

    stats = latent_stats(sae, view, keep_images=100)          # each latent's 100 best images, same pass
    labels = dissect_labels(stats.probe_top, backbone, dataset, load_vocab("cifar100"), k=5)
    labels.words[labels.indices[j, 0]], labels.scores[j, 0]      # latent j's label and its SoftWPMI

Inputs, over a probe set of images (the images the statistics pass read):
    A [n_images, L]   each latent's activation on each image, max over the image's rows (the ranking
                      "max" of `stats.latent_stats`); only each latent's top `n_top` images are needed
                      (`latent_stats(keep_images=n_top)` keeps them in the same pass).
    P [n_images, M]   cosine of each image's embedding (the model's vision tower and projection: `head`)
                      with each concept's text embedding (its text tower, template "{}", through the
                      zero-shot classifier and its on-disk cache, as the concept lens does).
SoftWPMI, the paper's similarity function (its defaults: a = 10, lambda = 1, n_top = 100, q from 0.998
to 0.97):
    p(t_m | x_i)     = softmax over concepts of a * P[i]
    B_k              the top n_top images of latent k; the image of rank r (0-based) belongs to it with
                     probability q_r = p_start - (p_start - p_end) * r / n_top (linearly decreasing)
    log p(t_m | B_k) = sum_r log(1 - q_r (1 - p(t_m | x_r)))   the expected product of p(t_m | x) over
                                                                 the soft set (an absent image gives 1)
    log p(t_m)       = log mean_j p(t_m | B_j)                   the mean over the latents
    score(k, m)      = log p(t_m | B_k) - lambda * log p(t_m)
A latent's label is its best-scoring concept; with lambda = 1 a score is at most log(number of latents
in the mean), reached by the latent whose set is the likeliest for that concept.
Departures from the paper, because SAE latents are sparse where its neurons are dense:
  - B_k holds only images on which the latent fires (A > 0): a latent active on n_k < n_top images has
    a set of n_k (filling it with images the latent ignores would label those images).
  - Sets of different sizes are not compared: a product over n images shrinks with n, so a mean over
    all latents would be led by the smallest sets (a latent firing on one image would score highest for
    every concept). p(t_m) for a set of n images is the mean over the latents j whose set has at least
    n images of p(t_m | first n images of B_j); when every set is full (the paper's case) this is the
    paper's p(t_m). A set larger than every other is cut to the second-largest size (it has no peers).
  - A latent that never fires has no set, no label (index -1, score NaN) and no part in any mean.
Scores rank the concepts of one latent; between latents they compare like for like only at equal set
sizes (a larger set is stronger evidence).

Memory: the L x M scores are never held. Two passes over blocks of latents (the first accumulates
the means p_n(t_m) for every set size n, by logsumexp, in n_top x M floats; the second scores and keeps
the best `k` concepts), each holding about `block` x M floats; the cost is about 3 x L x n_top x M
exponentials and multiply-adds, plus one forward pass of the model over the images that are in some
latent's set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..data.vocab import Vocabulary
from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    import torch

    from ..models.backbone import Backbone

TEMPERATURE = 10.0
"""a: the softmax over concepts reads a * cosine."""
LAMBDA = 1.0
"""Weight of the concept's prior log p(t_m)."""
P_START, P_END = 0.998, 0.97
"""Inclusion probability of the best image, and where the linear decrease heads over n_top ranks."""
TEMPLATE = "{}"
"""Text prompt of a concept (the paper embeds the bare word)."""


class ConceptLabels(NamedTuple):
    """The best concepts of every latent."""

    indices: np.ndarray
    """int64 [L, k] indices into `words`, best score first; -1 for a latent with no label (never fires)."""
    scores: np.ndarray
    """float32 [L, k] their SoftWPMI; NaN where there is no label."""
    words: tuple[str, ...]
    """The vocabulary."""


def top_images(acts_nl: np.ndarray, n_top: int) -> np.ndarray:
    """int64 [L, n_top] each latent's images by activation (A [n_images, L]), highest first (ties: lower
    image index), only images where it is > 0; -1 fills the rest."""
    a = np.asarray(acts_nl, dtype=np.float64)
    order = np.argsort(-a, axis=0, kind="stable")[:n_top].T  # [L, n_top]
    top = np.take_along_axis(a.T, order, axis=1)
    out = np.where(top > 0, order, -1).astype(np.int64)
    if out.shape[1] < n_top:
        out = np.pad(out, ((0, 0), (0, n_top - out.shape[1])), constant_values=-1)
    return out


def inclusion(n_top: int, p_start: float = P_START, p_end: float = P_END) -> np.ndarray:
    """float64 [n_top] q_r: the probability that the image of rank r belongs to a latent's set."""
    return p_start - (p_start - p_end) * np.arange(n_top) / n_top


def soft_wpmi(
    top_lk: np.ndarray,
    sims_nm: np.ndarray | torch.Tensor,
    *,
    k: int,
    temperature: float = TEMPERATURE,
    lam: float = LAMBDA,
    p_start: float = P_START,
    p_end: float = P_END,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best concepts of every latent and their SoftWPMI (see the module docstring):
    (indices int64 [L, k], scores float32 [L, k]; -1 / NaN for latents with no image).

    top_lk: [L, n_top] image indices into the rows of `sims_nm`, best first, -1 = empty slot.
    sims_nm: [n_images, M] image-concept cosines. block: latents per block (default: about 2^24 floats)."""
    import torch

    sims = torch.as_tensor(np.asarray(sims_nm), dtype=torch.float32)
    top = np.asarray(top_lk, dtype=np.int64)
    if sims.ndim != 2 or top.ndim != 2:
        raise SparsesteerError("soft_wpmi: need image-concept similarities [n_images, M] and top images [L, n_top]")
    L, n_top = top.shape
    M = sims.shape[1]
    if not 1 <= k <= M:
        raise SparsesteerError(f"CLIP-Dissect: k must be in 1..{M} (the vocabulary size), got {k}")
    if top.max(initial=-1) >= sims.shape[0]:
        raise SparsesteerError(f"soft_wpmi: image {int(top.max())} has no row in the {sims.shape[0]} similarities")
    if top.size and ((top[:, 1:] >= 0) & (top[:, :-1] < 0)).any():
        raise SparsesteerError("soft_wpmi: empty slots (-1) must come after a latent's images")
    # log(1 - q_r (1 - p)) for every image and rank would be n x n_top x M; gathered per block instead
    probs = torch.softmax(temperature * sims, dim=1)
    q = torch.as_tensor(inclusion(n_top, p_start, p_end), dtype=torch.float32)
    sizes = (top >= 0).sum(1)
    live = np.flatnonzero(sizes > 0)
    if len(live) > 1:  # a set larger than every other set has no peers of its size: cut to the runner-up
        sizes = np.minimum(sizes, np.sort(sizes[live])[-2])
    block = block or max(1, (1 << 24) // max(M, 1))
    live = live[
        np.argsort(-sizes[live], kind="stable")
    ]  # largest sets first: in a block, a rank's latents are a prefix
    wanted = np.zeros(int(sizes.max(initial=0)), bool)
    wanted[sizes[live] - 1] = True  # the set sizes whose mean p_n(t_m) some latent needs

    def log_p_given_set(lat: np.ndarray, lse: torch.Tensor | None = None) -> torch.Tensor:
        """[len(lat), M] log p(t_m | B_k) of latents `lat` (live, sets largest first); with `lse` [n, M],
        also add log sum_k p(t_m | first r+1 images of B_k) to lse[r] over the latents whose set reaches
        r+1 images (for the wanted r)."""
        idx = torch.as_tensor(top[lat])
        n = sizes[lat]
        acc = torch.zeros(len(lat), M)
        for r in range(int(n[0])):
            c = int((n > r).sum())
            acc[:c] += probs[idx[:c, r]].sub_(1).mul_(q[r]).log1p_()  # log(1 - q_r (1 - p))
            if lse is not None and wanted[r]:
                lse[r] = torch.logaddexp(lse[r], torch.logsumexp(acc[:c], dim=0))
        return acc

    indices = np.full((L, k), -1, np.int64)
    scores = np.full((L, k), np.nan, np.float32)
    if not len(live):
        return indices, scores
    blocks = [live[a : a + block] for a in range(0, len(live), block)]
    n_max = len(wanted)
    lse = torch.full((n_max, M), -torch.inf)
    for lat in blocks:
        log_p_given_set(lat, lse)
    peers = np.array([(sizes >= n).sum() for n in range(1, n_max + 1)], np.float64)  # latents with >= n images
    log_prior = lse - torch.as_tensor(np.log(peers), dtype=torch.float32)[:, None]  # [n, M] log p_n(t_m)
    for lat in blocks:
        prior = log_prior[torch.as_tensor(sizes[lat] - 1)]
        v, i = torch.topk(log_p_given_set(lat) - lam * prior, k, dim=1)
        indices[lat] = i.numpy()
        scores[lat] = v.numpy()
    return indices, scores


def image_concept_similarity(
    backbone: Backbone,
    dataset: Any,
    images: Sequence[int] | np.ndarray,
    words: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    image_batch_size: int = 64,
) -> np.ndarray:
    """float32 [len(images), M] cosine of each image's `head` embedding with each word's text embedding."""
    from ..models.zeroshot import ZeroShotClassifier, require_text_tower
    from .monosemanticity import embed_images

    require_text_tower(backbone)
    text = ZeroShotClassifier.build(backbone, tuple(words), (TEMPLATE,), cache_dir=cache_dir).weights.double().numpy()
    emb = embed_images(backbone, dataset, [int(i) for i in images], batch_size=image_batch_size, desc="labels: embed")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return (emb @ text.T).astype(np.float32)


def dissect_labels(
    top_lk: np.ndarray,
    backbone: Backbone,
    dataset: Any,
    vocab: Vocabulary | Sequence[str],
    *,
    k: int,
    cache_dir: str | os.PathLike | None = None,
    image_batch_size: int = 64,
    **wpmi: Any,
) -> ConceptLabels:
    """Labels of every latent from its top images `top_lk` ([L, n_top] indices into `dataset`, best
    first, -1 = empty), embedded by `backbone` (a model with a text tower); `wpmi`: `soft_wpmi`'s settings.
    Only the images in some latent's set are embedded."""
    words = vocab.concepts if isinstance(vocab, Vocabulary) else tuple(vocab)
    if not 1 <= k <= len(words):
        raise SparsesteerError(f"CLIP-Dissect: k must be in 1..{len(words)} (the vocabulary size), got {k}")
    top = np.asarray(top_lk, dtype=np.int64)
    used = np.unique(top[top >= 0])
    if not len(used):  # no latent fires: nothing to embed, no labels
        return ConceptLabels(np.full((len(top), k), -1, np.int64), np.full((len(top), k), np.nan, np.float32), words)
    sims = image_concept_similarity(
        backbone, dataset, used, words, cache_dir=cache_dir, image_batch_size=image_batch_size
    )
    local = np.where(top >= 0, np.searchsorted(used, top), -1)  # dataset index -> row of `sims`
    indices, scores = soft_wpmi(local, sims, k=k, **wpmi)
    return ConceptLabels(indices, scores, words)
