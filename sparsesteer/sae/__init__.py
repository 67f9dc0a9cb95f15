"""Sparse autoencoders: architectures over one base, sparse kernels, training, metrics, checkpoints.

    from sparsesteer.sae import SAEConfig, build, SparseAutoencoder
    sae = build(SAEConfig(arch="topk", k=64, expansion=4).resolved(d_in=768))
    codes = sae.encode(x)              # SparseCodes(values [B, k], indices [B, k])
    x_hat = sae.decode(codes)
    sae.save("runs/sae"); sae = SparseAutoencoder.load("runs/sae")

Names are imported lazily so that `sparsesteer --help` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..utils.lazy import lazy_exports
from .config import ARCHITECTURES, SAEConfig, TrainConfig

if TYPE_CHECKING:
    from .base import ForwardOutput, SparseAutoencoder, SparseCodes
    from .batchtopk import BatchTopKSAE
    from .jumprelu import JumpReLUSAE
    from .relu import ReLUSAE
    from .topk import TopKSAE

_LAZY = {
    "ForwardOutput": "base",
    "SparseAutoencoder": "base",
    "SparseCodes": "base",
    "BatchTopKSAE": "batchtopk",
    "JumpReLUSAE": "jumprelu",
    "ReLUSAE": "relu",
    "TopKSAE": "topk",
}


def variants() -> dict[str, type[SparseAutoencoder]]:
    """Architecture name -> SAE class, in the order of `ARCHITECTURES` (arch X lives in `sae/X.py`)."""
    import importlib

    from .base import _VARIANTS

    for arch in ARCHITECTURES:
        importlib.import_module(f"{__name__}.{arch}")
    return {arch: _VARIANTS[arch] for arch in ARCHITECTURES}


def build(cfg: SAEConfig, **kwargs: Any) -> SparseAutoencoder:
    """A freshly initialised SAE of the configured variant (cfg must be resolved)."""
    return variants()[cfg.arch](cfg, **kwargs)


_lazy = lazy_exports(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    return variants() if name == "VARIANTS" else _lazy(name)


__all__ = ["ARCHITECTURES", "SAEConfig", "TrainConfig", "build", "variants", *_LAZY]
