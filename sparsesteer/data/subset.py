"""Samples of a split: `--limit N` (class-stratified) and the experiments' group-balanced image sets,
recorded in every output under the name of the rule that drew them, so they can be replayed.

Taking the first N images of a class-sorted folder gives one class; a quick run on it misleads.
`limit_dataset(ds, n, seed)` keeps about n * (class share) images of every class (largest-remainder
rounding, ties broken by the seed), in dataset order, so a quick run sees the split's class mix.
`draw(ds, rule, n, seed, by)` draws with any rule of `RULES` over the groups of the columns `by`
(the label, attributes). A sample is a pure function of (the groups, n, seed) and is described in
`describe()["subset"]` (rule, by, n, limit, seed, of, indices_sha256), so a cache or report made on
it says so, and `replay(base, record)` draws it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError, unknown
from .datasets import ImageDataset

LABEL = ("label",)
"""The default grouping: by class label."""


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


def balanced_sample(groups: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of about n images with as many of every group as there are (round-robin over
    the groups in a seeded order, so a small group gives all it has and the others fill up); all
    images when n is None or covers them."""
    groups = np.asarray(groups)
    if n is None or n >= len(groups):
        return np.arange(len(groups), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(groups == g))) for g in np.unique(groups)]
    chosen: list[int] = []
    while len(chosen) < n:
        progressed = False
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
                progressed = True
        if not progressed:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


RULES: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "class-stratified": stratified_sample,
    "group-balanced": balanced_sample,
}
"""Every sampling rule, under the name a subset's record carries: `draw` and `replay` look it up here,
so a record always names the function that made it."""


def group_keys(ds: ImageDataset, by: Sequence[str] = LABEL) -> np.ndarray:
    """One group key per image from the columns `by` ("label" or attribute names): the column itself
    when there is one, else the rank of each image's value tuple (lexicographic: a binary attribute
    after the label groups as 2 * label + attribute does)."""
    cols = [ds.labels() if name == "label" else ds.attribute_array(name) for name in by]
    if len(cols) == 1:
        return cols[0]
    return np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def _sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices).astype("<i8").tobytes()).hexdigest()


GIVEN = "indices"
"""The rule a record names when the caller listed the rows (no sampling rule drew them: not replayable)."""


class Subset(ImageDataset):
    """Rows `indices` of a base dataset, with its classes and attributes; picklable for workers.
    `rule` (a name in RULES, or GIVEN for rows the caller listed), `by`, `seed` and `n_asked` say how
    the rows were drawn (`describe()["subset"]`)."""

    def __init__(
        self,
        base: ImageDataset,
        indices: np.ndarray,
        *,
        rule: str = GIVEN,
        seed: int,
        n_asked: int,
        by: Sequence[str] = LABEL,
    ):
        if rule != GIVEN and rule not in RULES:
            raise unknown("sampling rule", rule, tuple(RULES))
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name, self.split, self.root = base.name, base.split, base.root
        self.classes, self.attributes = base.classes, base.attributes
        self.rule, self.by = rule, tuple(by)
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

    def paired(self, other: ImageDataset) -> Subset:
        """The same rows of a dataset paired by index with the base (a typographic set's clean twin)."""
        return Subset(other, self.indices, rule=self.rule, seed=self.seed, n_asked=self.n_asked, by=self.by)

    def describe(self) -> dict[str, Any]:
        desc = self.base.describe()
        desc["subset"] = {  # "len" stays the full split's
            "rule": self.rule,
            **({"by": list(self.by)} if self.by != LABEL else {}),
            "n": len(self),
            "limit": self.n_asked,
            "seed": self.seed,
            "of": len(self.base),
            "indices_sha256": _sha256(self.indices),
        }
        return desc


def draw(ds: ImageDataset, rule: str, n: int | None, seed: int = 0, by: Sequence[str] = LABEL) -> ImageDataset:
    """`ds` itself when `n` is None or the sample covers it, else the `Subset` that `RULES[rule]` draws
    over the groups of the columns `by`."""
    if rule not in RULES:
        raise unknown("sampling rule", rule, tuple(RULES))
    if n is None:
        return ds
    indices = RULES[rule](group_keys(ds, by), n, seed)
    if len(indices) == len(ds):
        return ds
    return Subset(ds, indices, rule=rule, seed=seed, n_asked=n, by=by)


def limit_dataset(ds: ImageDataset, limit: int | None, seed: int = 0) -> ImageDataset:
    """`ds` itself when `limit` is None or covers it, else its class-stratified subset of `limit` images."""
    return draw(ds, "class-stratified", limit, seed)


def replay(base: ImageDataset, record: dict[str, Any]) -> np.ndarray:
    """The indices a subset record (`describe()["subset"]`) names, drawn again from `base` by the rule
    it names; checked against the record's count and indices_sha256. A record of rows the caller
    listed (rule GIVEN) names no sampling rule and is refused as unknown."""
    rule = record.get("rule")
    if rule not in RULES:
        raise unknown("sampling rule", str(rule), tuple(RULES))
    if record.get("of") != len(base):
        raise SparsesteerError(
            f"subset record: drawn from {record.get('of')} images, but {base.name} [{base.split}] has {len(base)}"
        )
    indices = RULES[rule](group_keys(base, record.get("by", LABEL)), record["limit"], record["seed"])
    if len(indices) != record.get("n") or _sha256(indices) != record.get("indices_sha256"):
        raise SparsesteerError(
            f"subset record: rule {rule} (limit {record['limit']}, seed {record['seed']}) draws another sample from "
            f"{base.name} [{base.split}]: its labels or attributes differ from those the record was drawn from"
        )
    return indices
