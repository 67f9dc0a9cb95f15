"""TopK SAE (Gao et al. 2024; sparsify's rule): codes = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)).

Training uses the sparse kernels (one dense encoder matmul, everything else O(B * k * d)), the
AuxK loss against dead latents and optional Matryoshka prefix losses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels, losses
from .base import ForwardOutput, SparseAutoencoder, SparseCodes


class TopKSAE(SparseAutoencoder, arch="topk"):
    @property
    def k_aux(self) -> int:
        return min(self.cfg.aux_k or self.d_in // 2, self.n_latents)

    def _aux_request(self, dead_mask: Tensor | None) -> tuple[Tensor | None, int]:
        """(dead mask, k_aux) when AuxK applies to this batch, else (None, 0)."""
        if dead_mask is None or self.cfg.aux_coeff == 0:
            return None, 0
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return None, 0
        return dead_mask, min(self.k_aux, n_dead)

    def _activate(self, pre: Tensor) -> Tensor:
        return pre if self.cfg.select == "abs" else torch.relu(pre)

    def _encode(self, x_bd, *, dead_mask=None, training=False):
        codes, aux, _, _ = self._encode_train(x_bd, dead_mask=dead_mask, training=training)
        return codes, aux

    def _encode_train(self, x_bd, *, dead_mask=None, training=False):
        """(codes, AuxK codes, the codes' `kernels.latent_order` (shared by the encoder and decoder
        backward; None when no gradient will be taken), the AuxK reconstruction)."""
        mask, k_aux = self._aux_request(dead_mask)
        dense_aux = mask is not None and kernels.dense_aux_is_cheaper(int(mask.sum()), k_aux)
        x_c = (x_bd - self.b_dec).detach()  # computed once: the selection and every weight gradient
        sel = kernels.encode_select(
            x_c,
            self.W_enc,
            self.b_enc,
            self.cfg.k,
            by_abs=self.cfg.select == "abs",
            dead_mask_n=mask,
            k_aux=k_aux,
            dead_pre=dense_aux,
        )
        grad = training and torch.is_grad_enabled()
        lo = kernels.latent_order(sel.indices, self.n_latents) if grad else None
        pre = kernels.gather_linear(
            sel.values, x_bd, self.W_enc, self.b_enc, sel.indices, lo, center=self.b_dec, centered=x_c
        )
        codes = SparseCodes(self._activate(pre), sel.indices)
        aux, aux_recon = None, None
        if dense_aux:
            assert mask is not None
            aux_values, aux_indices, aux_recon = kernels.dense_aux(
                sel, mask, x_bd, self.b_dec, self.W_enc, self.b_enc, self.W_dec, centered=x_c
            )
            aux = SparseCodes(aux_values, aux_indices)
        elif sel.aux_values is not None and sel.aux_indices is not None:
            aux_lo = kernels.latent_order(sel.aux_indices, self.n_latents) if grad else None
            aux_pre = kernels.gather_linear(
                sel.aux_values, x_bd, self.W_enc, self.b_enc, sel.aux_indices, aux_lo, center=self.b_dec, centered=x_c
            )
            aux = SparseCodes(torch.relu(aux_pre), sel.aux_indices)
            aux_recon = kernels.sparse_decode(aux.values, aux.indices, self.W_dec, aux_lo)
        return codes, aux, lo, aux_recon

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None) -> ForwardOutput:  # type: ignore[override]
        x_bd = self._check_input(x)
        codes, aux, lo, aux_recon = self._encode_train(x_bd, dead_mask=dead_mask, training=True)
        return self._objective(x_bd, codes, aux_recon, dead_mask, lo)

    def _objective(
        self,
        x_bd: Tensor,
        codes: SparseCodes,
        aux_recon: Tensor | None,
        dead_mask: Tensor | None,
        lo: kernels.LatentOrder | None = None,
    ) -> ForwardOutput:
        recon = kernels.sparse_decode(codes.values, codes.indices, self.W_dec, lo) + self.b_dec
        tv = losses.total_variance(x_bd)
        fvu = losses.fvu(x_bd, recon, tv)
        zero = fvu.new_zeros(())
        aux_loss = zero
        if aux_recon is not None:
            assert dead_mask is not None
            aux_loss = losses.auxk(x_bd - recon, aux_recon, tv, int(dead_mask.sum()), self.k_aux)
        main = fvu
        mat = zero
        if self.cfg.matryoshka:
            prefix_fvus = [
                losses.fvu(
                    x_bd,
                    kernels.sparse_decode(codes.values * (codes.indices < m), codes.indices, self.W_dec, lo)
                    + self.b_dec,
                    tv,
                )
                for m in self.cfg.matryoshka
                if m < self.n_latents
            ]
            mat = torch.stack([*prefix_fvus, fvu]).mean()
            main = mat
        with torch.no_grad():
            active = codes.values != 0
            fire_counts = torch.bincount(codes.indices[active], minlength=self.n_latents)
            l0 = active.sum(1).float().mean()
        loss = main + self.cfg.aux_coeff * aux_loss
        return ForwardOutput(
            recon=recon,
            codes=codes,
            fire_counts=fire_counts,
            l0=l0,
            fvu=fvu,
            aux_loss=aux_loss,
            sparsity_loss=zero,
            matryoshka_fvu=mat,
            loss=loss,
        )
