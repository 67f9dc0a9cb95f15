"""Classification accuracy: top-k, per class, most common confusion, and a JSON + Markdown report.

`evaluate(logits, labels, classnames)` turns a run's logits into a `ClassificationResult`;
`write_result` writes it as `<stem>.json` and `<stem>.md`. Accuracies are fractions in [0, 1]
(the Markdown table shows percentages). Used by `sparsesteer zeroshot` and the steering tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..utils import report
from ..utils.errors import SparsesteerError
from ..utils.report import md_table


def _check(labels: Tensor, n: int, what: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise SparsesteerError(f"{what}: expected {n} labels as a 1-d tensor, got shape {tuple(labels.shape)}")


def topk_accuracy(logits_bc: Tensor, labels_b: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """{k: fraction of rows whose label is among the k largest logits}; k is clipped to C."""
    _check(labels_b, logits_bc.shape[0], "topk_accuracy")
    if logits_bc.shape[0] == 0:
        return {k: float("nan") for k in ks}
    kmax = min(max(ks), logits_bc.shape[1])
    top = logits_bc.topk(kmax, dim=-1).indices
    hit = top == labels_b.to(top.device)[:, None]
    return {k: hit[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(preds_b: Tensor, labels_b: Tensor, n_classes: int) -> Tensor:
    """[n_classes (true), n_classes (predicted)] counts."""
    _check(labels_b, preds_b.shape[0], "confusion_matrix")
    idx = labels_b.long().cpu() * n_classes + preds_b.long().cpu()
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes)


def per_class_accuracy(preds_b: Tensor, labels_b: Tensor, n_classes: int) -> Tensor:
    """[n_classes] fraction correct per true class; NaN for classes without samples."""
    cm = confusion_matrix(preds_b, labels_b, n_classes).double()
    n = cm.sum(dim=1)
    return torch.where(n > 0, cm.diagonal() / n.clamp(min=1), torch.full_like(n, float("nan")))


def most_confused(preds_b: Tensor, labels_b: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Per true class: the most frequent wrong prediction (-1 if none) and how often it happened.

    Ties go to the lower class index.
    """
    cm = confusion_matrix(preds_b, labels_b, n_classes)
    cm.fill_diagonal_(0)
    counts, which = cm.max(dim=1)
    return torch.where(counts > 0, which, torch.full_like(which, -1)), counts


@dataclass
class ClassAccuracy:
    """One class's row of the report."""

    name: str
    n: int
    """Images whose true label is this class."""
    accuracy: float
    """Top-1 fraction correct (NaN when n == 0)."""
    most_confused_with: str | None
    """The most frequent wrong prediction for this class, None if never wrong."""
    n_confused: int
    """How many of its images went to `most_confused_with`."""


@dataclass
class ClassificationResult:
    """A classification run: overall top-k accuracies and per-class rows, plus free-form metadata."""

    n_images: int
    topk: dict[int, float]
    per_class: list[ClassAccuracy]
    meta: dict[str, Any] = field(default_factory=dict)
    """E.g. model id, revision, dataset, split, templates: copied into the report as-is."""

    @property
    def top1(self) -> float:
        return self.topk[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["topk"] = {f"top{k}": None if math.isnan(v) else v for k, v in self.topk.items()}
        for row in d["per_class"]:
            row["accuracy"] = None if math.isnan(row["accuracy"]) else row["accuracy"]
        return {"meta": d.pop("meta"), **d}

    def to_markdown(self) -> str:
        lines = []
        if self.meta:
            lines += [f"- {k}: {v}" for k, v in self.meta.items()] + [""]
        top = md_table(
            ["images", *(f"top-{k}" for k in self.topk)],
            [[self.n_images, *(f"{100 * v:.2f}" for v in self.topk.values())]],
            align="r",
        )
        per_class = md_table(
            ["class", "n", "top-1 %", "most confused with", "n"],
            [
                [
                    r.name,
                    r.n,
                    "-" if math.isnan(r.accuracy) else f"{100 * r.accuracy:.2f}",
                    r.most_confused_with or "-",
                    r.n_confused,
                ]
                for r in self.per_class
            ],
            align="lrrlr",
        )
        return "\n".join([*lines, top, "", per_class]) + "\n"


def evaluate(
    logits_bc: Tensor,
    labels_b: Tensor,
    classnames: Sequence[str],
    *,
    ks: Sequence[int] = (1, 5),
    meta: dict[str, Any] | None = None,
) -> ClassificationResult:
    """Top-k accuracy, per-class accuracy and most common confusion from logits and labels."""
    n_classes = len(classnames)
    if logits_bc.dim() != 2 or logits_bc.shape[1] != n_classes:
        raise SparsesteerError(f"logits have shape {tuple(logits_bc.shape)}; expected [N, {n_classes}]")
    labels_b = labels_b.long().cpu()
    if labels_b.numel() and (labels_b.min() < 0 or labels_b.max() >= n_classes):
        raise SparsesteerError(f"labels must lie in 0..{n_classes - 1} (unlabelled images cannot be scored)")
    logits_bc = logits_bc.cpu()
    preds = logits_bc.argmax(dim=-1)
    acc = per_class_accuracy(preds, labels_b, n_classes)
    n = torch.bincount(labels_b, minlength=n_classes)
    which, counts = most_confused(preds, labels_b, n_classes)
    rows = [
        ClassAccuracy(
            name=str(classnames[c]),
            n=int(n[c]),
            accuracy=float(acc[c]),
            most_confused_with=str(classnames[int(which[c])]) if which[c] >= 0 else None,
            n_confused=int(counts[c]),
        )
        for c in range(n_classes)
    ]
    return ClassificationResult(int(labels_b.numel()), topk_accuracy(logits_bc, labels_b, ks), rows, dict(meta or {}))


def write_result(result: ClassificationResult, out_dir: str | os.PathLike, stem: str = "zeroshot") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `out_dir` atomically; return both paths."""
    return report.write_result(out_dir, stem, result.to_dict(), result.to_markdown())
