"""How well one unit (an SAE latent, a neuron) detects a binary attribute of the images: the
ground-truth scores of the testbed (issue "testbed") and of the field's planted benchmarks.

    auroc(scores_nu, y_n)              [U] area under the ROC curve of every column (ties: half)
    average_precision(scores_n, y_n)   area under the precision-recall curve (step-wise, ties grouped)
    best_threshold(scores_n, y_n)      the threshold with the best F1 (chosen on a selection split)
    precision_recall_f1(scores_n, y_n, t)   at a threshold chosen elsewhere (predict 1 where score > t)

numpy only. A unit that is 0 on most images (an SAE latent) ties there: AUROC counts each tied
positive-negative pair as half, so a unit that never fires scores exactly 0.5.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError


def _check(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    yb = np.asarray(y)
    if s.shape[0] != yb.shape[0]:
        raise SparsesteerError(f"detection: {s.shape[0]} scores but {yb.shape[0]} labels")
    if not np.isin(yb, (0, 1)).all():
        raise SparsesteerError("detection: labels must be 0 or 1")
    yb = yb.astype(bool)
    if yb.all() or not yb.any():
        raise SparsesteerError(f"detection: the labels hold one class only ({len(yb)} images): need both")
    return s, yb


def auroc(scores_nu: np.ndarray, y_n: np.ndarray) -> np.ndarray:
    """AUROC of every column of `scores_nu` [N, U] (or of a vector [N]) for labels `y_n` in {0, 1}:
    the Mann-Whitney statistic with average ranks, i.e. P(score of a positive > score of a negative)
    + 0.5 P(tie)."""
    s, y = _check(scores_nu, y_n)
    s2 = s[:, None] if s.ndim == 1 else s
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out = np.empty(s2.shape[1])
    for u in range(s2.shape[1]):
        values, inverse, counts = np.unique(s2[:, u], return_inverse=True, return_counts=True)
        top = np.cumsum(counts)
        ranks = (top - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each image
        out[u] = (ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out if s.ndim > 1 else out[:1]


def average_precision(scores_n: np.ndarray, y_n: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function over the distinct thresholds (tied
    scores enter together): sum over thresholds of (recall gain) x (precision there)."""
    s, y = _check(scores_n, y_n)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    recall = tp / y.sum()
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class Detection(NamedTuple):
    """Precision, recall and F1 of `score > threshold` against the labels."""

    threshold: float
    precision: float
    recall: float
    f1: float


def precision_recall_f1(scores_n: np.ndarray, y_n: np.ndarray, threshold: float) -> Detection:
    """Predict 1 where score > threshold; precision is 0 when nothing is predicted."""
    s, y = _check(scores_n, y_n)
    pred = s > threshold
    tp = int((pred & y).sum())
    precision = tp / int(pred.sum()) if pred.any() else 0.0
    recall = tp / int(y.sum())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Detection(float(threshold), float(precision), float(recall), float(f1))


def best_threshold(scores_n: np.ndarray, y_n: np.ndarray) -> Detection:
    """The threshold (midway between two distinct scores, or below the lowest) with the best F1
    on these images: chosen on a selection split, then applied to the test split."""
    s, y = _check(scores_n, y_n)
    values = np.unique(s)
    cuts = np.r_[values[0] - 1.0, (values[:-1] + values[1:]) / 2.0]
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    n_pred = np.searchsorted(-ss, -cuts, side="left")  # images with score > cut (-ss ascends)
    tp_prefix = np.r_[0, np.cumsum(yy)]
    tp = tp_prefix[n_pred]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        recall = tp / y.sum()
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return precision_recall_f1(s, y, float(cuts[best]))
