"""Initialisation statistics from a data sample."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(points_nd: Tensor, *, iters: int = 200, tol: float = 1e-6) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows (Weiszfeld's algorithm, in
    float64). Robust to outliers, unlike the mean: the usual b_dec initialisation of SAEs."""
    x = points_nd.to(torch.float64)
    y = x.mean(0)
    for _ in range(iters):
        dist = (x - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        y_next = (w[:, None] * x).sum(0) / w.sum()
        moved = float((y_next - y).norm())
        y = y_next
        if moved <= tol * max(1.0, float(y.norm())):
            break
    return y.to(points_nd.dtype)
