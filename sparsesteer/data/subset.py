"""`--limit N`: a seeded, class-stratified sample of a split, recorded in every output.

Taking the first N images of a class-sorted folder gives one class; a quick run on it misleads.
`limit_dataset(ds, n, seed)` keeps about n * (class share) images of every class (largest-remainder
rounding, ties broken by the seed), in dataset order, so a quick run sees the split's class mix.
The sample is a pure function of (labels, n, seed) and is described in `describe()["subset"]`, so
a cache or report made on it says so and can be remade.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError
from .datasets import ImageDataset

RULE = "class-stratified"


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted int64 indices of a class-stratified sample of size min(n, len(labels)).

    Each label value (unlabeled -1 counts as one group) gets floor(n * share) images; the rest go to
    the groups with the largest fractional parts, ties in a seeded random order.
    """
    labels = np.asarray(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SparsesteerError(f"--limit must be a positive integer, got {n!r}")
    total = len(labels)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(np.int64)
    left = n - int(quota.sum())
    if left:
        tiebreak = rng.permutation(len(groups))
        order = np.lexsort((tiebreak, -(exact - quota)))  # largest remainder first, then the seeded order
        quota[order[:left]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == g), size=int(q), replace=False) for g, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class Subset(ImageDataset):
    """Rows `indices` of a base dataset, with its classes and attributes; picklable for workers."""

    def __init__(self, base: ImageDataset, indices: np.ndarray, *, seed: int, n_asked: int):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name, self.split, self.root = base.name, base.split, base.root
        self.classes, self.attributes = base.classes, base.attributes
        self.seed, self.n_asked = int(seed), int(n_asked)
        self._labels = base.labels()[self.indices]
        self._attrs = {a: base.attribute_array(a)[self.indices] for a in base.attributes}

    def _load_image(self, i: int) -> Image.Image:
        return self.base._load_image(int(self.indices[i]))

    def source(self, i: int) -> str:
        return self.base.source(int(self.indices[i]))

    def base_index(self, i: int) -> int:
        """Index of example i in the full split."""
        return int(self.indices[i])

    def describe(self) -> dict[str, Any]:
        desc = self.base.describe()
        desc["subset"] = {  # "len" stays the full split's
            "rule": RULE,
            "n": len(self),
            "limit": self.n_asked,
            "seed": self.seed,
            "of": len(self.base),
            "indices_sha256": hashlib.sha256(self.indices.astype("<i8").tobytes()).hexdigest(),
        }
        return desc


def limit_dataset(ds: ImageDataset, limit: int | None, seed: int = 0) -> ImageDataset:
    """`ds` itself when `limit` is None or covers it, else its class-stratified subset of `limit` images."""
    if limit is None:
        return ds
    indices = stratified_sample(ds.labels(), limit, seed)
    if len(indices) == len(ds):
        return ds
    return Subset(ds, indices, seed=seed, n_asked=limit)
