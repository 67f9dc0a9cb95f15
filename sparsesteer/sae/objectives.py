"""Extra training objectives: loss terms beyond an architecture's own, which may keep state.

An SAE's `forward` returns its own objective (`ForwardOutput.loss`: FVU, AuxK, L1, Matryoshka).
Terms that need more than the batch, such as class labels or statistics carried across steps,
are `Objective`s: the trainer keeps a list of them per SAE (`Member.objectives`), adds
`weight * objective.loss(out, labels, x)` to the SAE's loss at every step, logs the unweighted
term under `objective.name`, and checkpoints the objective's buffers through `state_dict()`, so a
resumed run continues with the same state.

PASS (prototype alignment, the VS2 paper) is the first; ghost gradients would be the next.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..utils.errors import SparsesteerError
from .base import ForwardOutput
from .config import SAEConfig
from .losses import total_variance


class Objective(nn.Module):
    """A stateful loss term. Subclasses set `name`, keep their state in buffers, and implement `loss`."""

    name: ClassVar[str]
    """Key of the unweighted term in the logged metrics (e.g. 'pass_loss')."""
    needs_labels: ClassVar[bool] = False
    """Whether `loss` needs class labels (the trainer then requires them of the activations)."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight  # coefficient of the term in the total loss

    def loss(self, out: ForwardOutput, labels: Tensor | None, x: Tensor) -> Tensor:
        """The unweighted term for one training batch: `out` is the SAE's forward output on `x`
        ([B, d_in], as the SAE sees it), `labels` [B] int64 (-1 = unlabeled) or None. May update
        the objective's state (without gradient)."""
        raise NotImplementedError


def prototype_alignment(values_bk: Tensor, indices_bk: Tensor, prototypes_cn: Tensor, labels_b: Tensor) -> Tensor:
    """mean_i ||z_i - zbar_{class(i)}||^2 for sparse codes z and detached dense prototypes.

    Expanded as ||z||^2 - 2 z . zbar + ||zbar||^2 so that only the k active entries of z are
    touched: O(B * k), no dense [B, n] codes.
    """
    z_sq = values_bk.pow(2).sum(-1)
    cross = (values_bk * prototypes_cn[labels_b[:, None], indices_bk]).sum(-1)
    p_sq = prototypes_cn.pow(2).sum(-1)[labels_b]
    return (z_sq - 2 * cross + p_sq).mean()


class PASS(Objective):
    """PASS prototype alignment: ||z_i - zbar_class(i)||^2, with zbar a per-class EMA of the codes.

    The prototypes are detached and updated with each batch before the loss is taken (the first
    batch of a class sets its prototype). The paper's objective is ||x - x_hat||^2 + w ||z - zbar||^2;
    our reconstruction term is the FVU, i.e. the squared error divided by the batch's per-sample
    variance, so the alignment term is divided by the same number to keep the paper's ratio
    between the two.
    """

    name = "pass_loss"
    needs_labels = True

    prototypes: Tensor
    """[n_classes, n_latents] EMA of each class's mean (dense) code."""
    seen: Tensor
    """[n_classes] bool: whether a class has appeared yet."""

    def __init__(
        self, n_classes: int, n_latents: int, *, weight: float, ema: float, device: torch.device | str | None = None
    ):
        super().__init__(weight)
        self.ema = ema
        self.register_buffer("prototypes", torch.zeros(n_classes, n_latents, device=device))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool, device=device))

    def loss(self, out: ForwardOutput, labels: Tensor | None, x: Tensor) -> Tensor:
        if labels is None:
            raise SparsesteerError("PASS (--pass-weight) needs labels in every batch")
        if out.codes is None:
            raise SparsesteerError("PASS needs a topk or batchtopk SAE")
        known = labels >= 0
        if not bool(known.any()):
            return out.fvu.new_zeros(())
        values, indices, lab = out.codes.values[known], out.codes.indices[known], labels[known]
        with torch.no_grad():
            C, n = self.prototypes.shape
            sums = torch.zeros(C, n, device=values.device, dtype=values.dtype)
            sums.index_put_((lab[:, None].expand_as(indices), indices), values.detach(), accumulate=True)
            counts = torch.bincount(lab, minlength=C).to(values.dtype)
            present = counts > 0
            means = sums[present] / counts[present, None]
            fresh = ~self.seen[present]
            updated = torch.where(fresh[:, None], means, self.ema * self.prototypes[present] + (1 - self.ema) * means)
            self.prototypes[present] = updated
            self.seen |= present
        per_sample_var = total_variance(x) / x.shape[0]
        return prototype_alignment(values, indices, self.prototypes, lab) / per_sample_var.clamp_min(1e-12)


def needs_labels(cfg: SAEConfig) -> bool:
    """Whether the objectives of `cfg` need class labels."""
    return bool(cfg.pass_weight)


def build_objectives(cfg: SAEConfig, *, n_classes: int, device: torch.device | str | None = None) -> list[Objective]:
    """The extra objectives a (resolved) SAE config asks for, in a fixed order."""
    objectives: list[Objective] = []
    if cfg.pass_weight:
        objectives.append(PASS(n_classes, cfg.n_latents, weight=cfg.pass_weight, ema=cfg.pass_ema, device=device))
    return objectives


def count_classes(labels: np.ndarray | None) -> int:
    """Number of classes (max label + 1) of the activations' labels, for objectives that need them."""
    if labels is None:
        raise SparsesteerError(
            "PASS (--pass-weight) needs class labels, but these activations have none: cache a labelled "
            "dataset split (labels.npy in the cache) or pass labels with the array"
        )
    known = labels[labels >= 0]
    if known.size == 0:
        raise SparsesteerError("PASS (--pass-weight) needs class labels, but every row is unlabeled (-1)")
    return int(known.max()) + 1
