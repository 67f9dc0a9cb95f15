"""JumpReLU SAE, inference only: f_j = ReLU(pre_j) * (pre_j > threshold_j).

Published SAEs (SAELens `jumprelu`, and BatchTopK SAEs exported with a threshold) use this rule;
it lets them run here. Training JumpReLU SAEs is not supported.
"""

from __future__ import annotations

import torch

from ..utils.errors import SparsesteerError
from . import kernels
from .base import SparseAutoencoder, SparseCodes


class JumpReLUSAE(SparseAutoencoder, arch="jumprelu"):
    trainable = False

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.register_buffer("threshold", torch.zeros(cfg.n_latents, device=self.W_dec.device, dtype=self.W_dec.dtype))

    def _encode(self, x_bd, *, dead_mask=None, training=False):
        x_c = (x_bd - self.b_dec).detach()
        vals, idx = kernels.threshold_select(x_c, self.W_enc, self.b_enc, self.threshold.expand(self.n_latents))
        pre = kernels.gather_linear(vals, x_bd, self.W_enc, self.b_enc, idx, center=self.b_dec, centered=x_c)
        return SparseCodes(torch.relu(pre) * (vals != 0), idx), None

    def forward(self, x, *, dead_mask=None):  # type: ignore[override]
        raise SparsesteerError("JumpReLU SAEs are inference-only here; train topk, batchtopk or relu instead")
