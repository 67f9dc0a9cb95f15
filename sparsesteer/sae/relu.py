"""ReLU SAE (Bricken et al. 2023; the CLIP-steering paper's vanilla SAEs): f = ReLU(W_enc (x - b_dec)
+ b_enc), dense decode, loss FVU + l1_coeff * mean_b sum_j |f_bj| (optionally weighted by
decoder row norms). Codes are dense by nature: every positive pre-activation is active and gets an
L1 gradient, so there is no sparse fast path to take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels, losses
from .base import ForwardOutput, SparseAutoencoder, SparseCodes


class ReLUSAE(SparseAutoencoder, arch="relu"):
    def _dense_codes(self, x_bd: Tensor) -> Tensor:
        return torch.relu(torch.addmm(self.b_enc, x_bd - self.b_dec, self.W_enc.t()))

    def _encode(self, x_bd, *, dead_mask=None, training=False):
        f = self._dense_codes(x_bd)
        with torch.no_grad():
            _, idx = kernels.from_dense(f)
        return SparseCodes(f.gather(1, idx), idx), None

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None) -> ForwardOutput:  # type: ignore[override]
        x_bd = self._check_input(x)
        f = self._dense_codes(x_bd)
        recon = f @ self.W_dec + self.b_dec
        fvu = losses.fvu(x_bd, recon, losses.total_variance(x_bd))
        norms = self.W_dec.norm(dim=1) if self.cfg.l1_weight_by_decoder_norm else None
        sparsity = self.cfg.l1_coeff * losses.l1(f, norms)
        with torch.no_grad():
            active = f > 0
            fire_counts = active.sum(0)
            l0 = active.sum(1).float().mean()
        zero = fvu.new_zeros(())
        return ForwardOutput(
            recon=recon,
            codes=None,
            fire_counts=fire_counts,
            l0=l0,
            fvu=fvu,
            aux_loss=zero,
            sparsity_loss=sparsity,
            matryoshka_fvu=zero,
            loss=fvu + sparsity,
        )
