"""Sparse autoencoders: architectures over one base, sparse kernels, training, metrics, checkpoints.

    from sparsesteer.sae import SAEConfig, build, SparseAutoencoder
    sae = build(SAEConfig(arch="topk", k=64, expansion=4).resolved(d_in=768))
    codes = sae.encode(x)              # SparseCodes(values [B, k], indices [B, k])
    x_hat = sae.decode(codes)
    sae.save("runs/sae"); sae = SparseAutoencoder.load("runs/sae")
"""

from __future__ import annotations

from .base import ForwardOutput, SparseAutoencoder, SparseCodes
from .batchtopk import BatchTopKSAE
from .config import ARCHITECTURES, SAEConfig
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import TopKSAE

VARIANTS: dict[str, type[SparseAutoencoder]] = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "relu": ReLUSAE,
    "jumprelu": JumpReLUSAE,
}


def build(cfg: SAEConfig, **kwargs) -> SparseAutoencoder:
    """A freshly initialised SAE of the configured variant (cfg must be resolved)."""
    return VARIANTS[cfg.arch](cfg, **kwargs)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKSAE",
    "ForwardOutput",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEConfig",
    "SparseAutoencoder",
    "SparseCodes",
    "TopKSAE",
    "VARIANTS",
    "build",
]
