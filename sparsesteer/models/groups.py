"""Accuracy by group and under typographic attack, before and after an edit.

    group_accuracy(preds, labels, groups)                 per-group, worst-group and average accuracy
    typographic_accuracy(clean, attacked, labels, typo)   clean / attacked accuracy, attack success rate
    compare_groups(base_preds, edited_preds, labels, groups)          each number as (baseline, edited, delta)
    compare_typographic(base_clean, base_attacked, clean, attacked, labels, typo)

Predictions are class indices ([N] ints) or logits ([N, C], reduced by argmax); numpy arrays or
torch tensors. Accuracies are fractions in [0, 1]. Waterbirds' groups are `group = 2 * y + place`;
"average accuracy" is the plain mean over images (`average`), `mean_of_groups` weighs every group
equally. An image's attack succeeds when the prediction on the attacked image is the class of the
rendered word; the rate counts only images whose word is a class (`typo_class >= 0`) other than
the true label. Clean and attacked predictions pair up by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_predictions(x: Any, name: str = "predictions") -> np.ndarray:
    """int64 [N] class predictions from [N] ints or [N, C] logits (argmax)."""
    a = _as_array(x)
    if a.ndim == 2:
        return a.argmax(axis=1).astype(np.int64)
    if a.ndim != 1:
        raise SparsesteerError(f"{name}: expected [N] class indices or [N, C] logits, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise SparsesteerError(f"{name}: expected integer class indices, got {a.dtype} (pass logits as [N, C])")
    return a.astype(np.int64)


def _ints(x: Any, name: str, n: int) -> np.ndarray:
    a = _as_array(x)
    if a.ndim != 1 or len(a) != n:
        raise SparsesteerError(f"{name}: expected {n} values (one per image) as a 1-d array, got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise SparsesteerError(f"{name}: expected integers, got {a.dtype}")
    return a.astype(np.int64)


def _mean(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else math.nan


class Change(NamedTuple):
    """One number before and after an edit."""

    baseline: float
    """On the unedited model."""
    edited: float
    """With the edit."""
    delta: float
    """edited - baseline."""


def _change(baseline: float, edited: float) -> Change:
    return Change(baseline=baseline, edited=edited, delta=edited - baseline)


@dataclass(frozen=True, kw_only=True)
class GroupAccuracy:
    """Accuracy per group and summaries (groups without images are left out)."""

    groups: tuple[int, ...]
    """Group ids that have images, ascending."""
    n: tuple[int, ...]
    """Images per group."""
    accuracy: tuple[float, ...]
    """Fraction correct per group."""
    worst_group: float
    """Lowest group accuracy."""
    worst_group_id: int
    """The group it belongs to (the lowest id on ties)."""
    average: float
    """Fraction correct over all images (each image weighs the same)."""
    mean_of_groups: float
    """Unweighted mean of the group accuracies."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {str(g): {"n": n, "accuracy": a} for g, n, a in zip(self.groups, self.n, self.accuracy)},
            "worst_group": self.worst_group,
            "worst_group_id": self.worst_group_id,
            "average": self.average,
            "mean_of_groups": self.mean_of_groups,
        }


def group_accuracy(preds: Any, labels: Any, groups: Any) -> GroupAccuracy:
    """Per-group accuracy, worst-group accuracy and average accuracy. Images with a negative group
    id are left out of the per-group numbers (they still count in `average`)."""
    p = as_predictions(preds)
    y = _ints(labels, "labels", len(p))
    g = _ints(groups, "groups", len(p))
    if not len(p):
        raise SparsesteerError("group_accuracy: no images")
    hit = p == y
    ids = sorted(int(v) for v in np.unique(g[g >= 0]))
    if not ids:
        raise SparsesteerError("group_accuracy: every group id is negative (no groups to score)")
    n = tuple(int((g == k).sum()) for k in ids)
    acc = tuple(_mean(hit[g == k]) for k in ids)
    worst = int(np.argmin(acc))
    return GroupAccuracy(
        groups=tuple(ids),
        n=n,
        accuracy=acc,
        worst_group=acc[worst],
        worst_group_id=ids[worst],
        average=_mean(hit),
        mean_of_groups=float(np.mean(acc)),
    )


@dataclass(frozen=True, kw_only=True)
class TypographicAccuracy:
    """Accuracy on clean and attacked images and how often the written word wins."""

    n: int
    """Image pairs (clean, attacked)."""
    clean_accuracy: float
    """Fraction of clean images classified as their true label."""
    attacked_accuracy: float
    """Fraction of attacked images classified as their true label (the field's `typo_accuracy`)."""
    attack_success_rate: float
    """Fraction of attacked images classified as the class of the rendered word, over the images
    whose word is a class other than the true label (NaN when there are none)."""
    n_attackable: int
    """Images counted in `attack_success_rate`."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def typographic_accuracy(clean_preds: Any, attacked_preds: Any, labels: Any, typo_class: Any) -> TypographicAccuracy:
    """Clean accuracy, attacked accuracy and attack success rate from paired predictions.
    `clean_preds` may be None for sets without clean images (e.g. RTA-100): clean accuracy is NaN."""
    a = as_predictions(attacked_preds, "attacked predictions")
    y = _ints(labels, "labels", len(a))
    t = _ints(typo_class, "typo_class", len(a))
    if clean_preds is None:
        clean = math.nan
    else:
        c = as_predictions(clean_preds, "clean predictions")
        if len(c) != len(a):
            raise SparsesteerError(
                f"clean and attacked predictions must pair up by image: {len(c)} clean, {len(a)} attacked"
            )
        clean = _mean(c == y)
    attackable = (t >= 0) & (t != y)
    return TypographicAccuracy(
        n=len(a),
        clean_accuracy=clean,
        attacked_accuracy=_mean(a == y),
        attack_success_rate=_mean(a[attackable] == t[attackable]),
        n_attackable=int(attackable.sum()),
    )


@dataclass(frozen=True, kw_only=True)
class GroupAccuracyChange:
    """Group accuracies of the unedited and the edited model."""

    baseline: GroupAccuracy
    edited: GroupAccuracy
    worst_group: Change
    """Worst-group accuracy (each side's own worst group)."""
    average: Change
    """Accuracy over all images."""
    mean_of_groups: Change
    """Unweighted mean of the group accuracies."""
    per_group: dict[int, Change]
    """Group id -> its accuracy before and after."""


def compare_groups(baseline_preds: Any, edited_preds: Any, labels: Any, groups: Any) -> GroupAccuracyChange:
    """`group_accuracy` of both models on the same images, with the differences."""
    b = group_accuracy(baseline_preds, labels, groups)
    e = group_accuracy(edited_preds, labels, groups)
    return GroupAccuracyChange(
        baseline=b,
        edited=e,
        worst_group=_change(b.worst_group, e.worst_group),
        average=_change(b.average, e.average),
        mean_of_groups=_change(b.mean_of_groups, e.mean_of_groups),
        per_group={g: _change(ab, ae) for g, ab, ae in zip(b.groups, b.accuracy, e.accuracy)},
    )


@dataclass(frozen=True, kw_only=True)
class TypographicChange:
    """Typographic-attack numbers of the unedited and the edited model."""

    baseline: TypographicAccuracy
    edited: TypographicAccuracy
    clean_accuracy: Change
    """Accuracy on clean images (the edit should not cost much here)."""
    attacked_accuracy: Change
    """Accuracy on attacked images (the edit should raise it)."""
    attack_success_rate: Change
    """How often the written word wins (the edit should lower it)."""


def compare_typographic(
    baseline_clean: Any, baseline_attacked: Any, edited_clean: Any, edited_attacked: Any, labels: Any, typo_class: Any
) -> TypographicChange:
    """`typographic_accuracy` of both models on the same image pairs, with the differences."""
    b = typographic_accuracy(baseline_clean, baseline_attacked, labels, typo_class)
    e = typographic_accuracy(edited_clean, edited_attacked, labels, typo_class)
    return TypographicChange(
        baseline=b,
        edited=e,
        clean_accuracy=_change(b.clean_accuracy, e.clean_accuracy),
        attacked_accuracy=_change(b.attacked_accuracy, e.attacked_accuracy),
        attack_success_rate=_change(b.attack_success_rate, e.attack_success_rate),
    )
