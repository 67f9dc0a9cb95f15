"""BatchTopK SAE (Bussmann et al. 2024): the top k*B activations over the whole batch in training,
so that samples may use more or fewer than k latents; at inference a single threshold (an EMA of
each batch's smallest selected activation) makes encoding per-sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.errors import SparsesteerError
from . import kernels
from .base import SparseCodes
from .topk import TopKSAE

# Per-row candidates examined before the exact batch-wide selection. Exact whenever no row has
# all of its candidates selected; otherwise the step falls back to the dense computation.
_CANDIDATE_FACTOR = 4


class BatchTopKSAE(TopKSAE, arch="batchtopk"):
    threshold: Tensor
    """Scalar inference threshold (a buffer); -1 until the first training batch sets it."""

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.register_buffer("threshold", torch.tensor(-1.0, device=self.W_dec.device, dtype=self.W_dec.dtype))

    def _encode(self, x_bd, *, dead_mask=None, training=False):
        if not training:
            if float(self.threshold) < 0:
                raise SparsesteerError("this BatchTopK SAE has no inference threshold yet: train it first")
            x_c = (x_bd - self.b_dec).detach()
            vals, idx = kernels.threshold_select(x_c, self.W_enc, self.b_enc, self.threshold)
            pre = kernels.gather_linear(vals, x_bd, self.W_enc, self.b_enc, idx, center=self.b_dec, centered=x_c)
            return SparseCodes(torch.relu(pre) * (vals != 0), idx), None
        return self._batch_select(x_bd, dead_mask)

    def _encode_train(self, x_bd, *, dead_mask=None, training=False):
        codes, aux = self._encode(x_bd, dead_mask=dead_mask, training=training)
        aux_recon = None if aux is None else kernels.sparse_decode(aux.values, aux.indices, self.W_dec)
        return codes, aux, None, aux_recon  # the backward sorts the pairs itself

    def _batch_select(self, x_bd: Tensor, dead_mask: Tensor | None) -> tuple[SparseCodes, SparseCodes | None]:
        B, n, k = x_bd.shape[0], self.n_latents, self.cfg.k
        x_c = (x_bd - self.b_dec).detach()
        mask_n, k_aux = self._aux_request(dead_mask)
        k_cand = min(n, _CANDIDATE_FACTOR * k)
        sel = kernels.encode_select(x_c, self.W_enc, self.b_enc, k_cand, dead_mask_n=mask_n, k_aux=k_aux)
        cand_vals, cand_idx = sel.values, sel.indices
        with torch.no_grad():
            chosen = self._choose(cand_vals, k * B)
            if k_cand < n and bool(chosen.all(1).any()):
                # Some row may have more than k_cand of the batch's top entries: redo exactly.
                cand_vals = kernels.dense_pre(x_c, self.W_enc, self.b_enc)
                cand_idx = torch.arange(n, device=x_bd.device).expand(B, n)
                chosen = self._choose(cand_vals, k * B)
            K = int(chosen.sum(1).max())
            order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :K]
            idx = cand_idx.gather(1, order)
            vals = cand_vals.gather(1, order)
            keep = chosen.gather(1, order)
            selected = cand_vals[chosen]
            if selected.numel():
                batch_min = selected.min().to(self.threshold.dtype)
                if float(self.threshold) < 0:
                    self.threshold.copy_(batch_min)
                else:
                    self.threshold.mul_(self.cfg.threshold_ema).add_((1 - self.cfg.threshold_ema) * batch_min)
        pre = kernels.gather_linear(vals, x_bd, self.W_enc, self.b_enc, idx, center=self.b_dec, centered=x_c)
        codes = SparseCodes(torch.relu(pre) * keep, idx)
        aux = None
        if sel.aux_values is not None and sel.aux_indices is not None:
            aux_pre = kernels.gather_linear(
                sel.aux_values, x_bd, self.W_enc, self.b_enc, sel.aux_indices, center=self.b_dec, centered=x_c
            )
            aux = SparseCodes(torch.relu(aux_pre), sel.aux_indices)
        return codes, aux

    @staticmethod
    def _choose(cand_bk: Tensor, total: int) -> Tensor:
        """Bool mask of the `total` largest positive entries of the whole [B, K] candidate block."""
        flat = cand_bk.reshape(-1)
        top = flat.topk(min(total, flat.numel()), sorted=False).indices
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[top] = True
        chosen &= flat > 0
        return chosen.view_as(cand_bk)
