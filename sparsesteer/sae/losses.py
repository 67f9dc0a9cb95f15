"""Loss terms as plain functions of tensors (the SAE variants combine them; stateful terms such as
PASS are objects in `objectives.py`)."""

from __future__ import annotations

import torch
from torch import Tensor


def total_variance(x_bd: Tensor) -> Tensor:
    """sum ||x_b - mean(x)||^2 over the batch: the FVU denominator."""
    return (x_bd - x_bd.mean(0)).pow(2).sum()


def fvu(x_bd: Tensor, recon_bd: Tensor, total_var: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return (recon_bd - x_bd).pow(2).sum() / total_var.clamp_min(torch.finfo(x_bd.dtype).tiny)


def auxk(residual_bd: Tensor, aux_recon_bd: Tensor, total_var: Tensor, n_dead: int, k_aux: int) -> Tensor:
    """AuxK (Gao et al. 2024): dead latents learn to predict the (detached) residual of the live
    ones; scaled down while few latents are dead."""
    scale = min(n_dead / max(k_aux, 1), 1.0)
    return scale * fvu(residual_bd.detach(), aux_recon_bd, total_var)


def l1(codes_bn: Tensor, decoder_norms_n: Tensor | None = None) -> Tensor:
    """mean over the batch of sum_j |f_j| (times ||W_dec_j|| when given)."""
    a = codes_bn.abs()
    if decoder_norms_n is not None:
        a = a * decoder_norms_n
    return a.sum(-1).mean()
