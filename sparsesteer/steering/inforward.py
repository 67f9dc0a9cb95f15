"""Steering inside the forward pass, through the backbone's interventions.

SAE_REC^A replaces the CLS token of every block's output by its SAE reconstruction; multi-layer
VS2 steers the CLS of the last n blocks, each with the SAE of its block. Both change what later
blocks see, so they need model forwards (unlike final-layer VS2, which runs on cached vectors).
Both are SAE edits (`steering/edits.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..models.hook_names import hook_name
from ..models.hooks import Intervention
from ..sae.base import SparseAutoencoder
from ..utils.errors import SparsesteerError
from . import edits
from .edits import check_finite

if TYPE_CHECKING:
    from ..data.datasets import ImageDataset
    from ..models.backbone import Backbone
    from ..models.zeroshot import ZeroShotClassifier


def reconstruct_cls(block: int, sae: SparseAutoencoder) -> Intervention:
    """Replace block `block`'s output CLS by its SAE reconstruction (the error term dropped)."""
    return edits.reconstruct(hook_name(block), sae, tokens="cls")


def vs2_cls(block: int, sae: SparseAutoencoder, lam: float, gamma: float, *, rescale: bool = True) -> Intervention:
    """VS2 on block `block`'s output CLS: every code scaled by 1 + lam (gamma - 1), i.e.
    x + lam (gamma - 1) W_dec^T f, then rescaled to ||x||."""
    check_finite(lam=lam, gamma=gamma)
    return edits.scale_latents(hook_name(block), sae, None, 1.0 + lam * (gamma - 1.0), tokens="cls", rescale=rescale)


def sae_rec_all(saes: Mapping[int, SparseAutoencoder]) -> list[Intervention]:
    """SAE_REC^A: every block's CLS reconstructed by that block's SAE."""
    return [reconstruct_cls(b, sae) for b, sae in sorted(saes.items())]


def vs2_last_blocks(
    saes: Mapping[int, SparseAutoencoder], n_blocks: int, last: int, lam: float, gamma: float, *, rescale: bool = True
) -> list[Intervention]:
    """VS2 on the CLS of the last `last` blocks (each with its own SAE), in forward order."""
    blocks = list(range(n_blocks - last, n_blocks))
    missing = [b for b in blocks if b not in saes]
    if missing:
        raise SparsesteerError(f"multi-layer steering over the last {last} blocks needs SAEs for blocks {missing}")
    return [vs2_cls(b, saes[b], lam, gamma, rescale=rescale) for b in blocks]


@torch.no_grad()
def classify_dataset(
    backbone: Backbone,
    classifier: ZeroShotClassifier,
    dataset: ImageDataset,
    interventions: Sequence[Intervention],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    stop: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Zero-shot logits [N, C] and labels [N] of a dataset split with interventions applied."""
    from ..data.batches import image_batches
    from ..models.zeroshot import classify

    batches = image_batches(dataset, backbone.preprocessor, batch_size=batch_size, workers=workers, stop=stop)
    pairs = ((torch.as_tensor(b.pixels), b.labels) for b in batches)
    n = len(dataset) if stop is None else stop
    return classify(backbone, classifier, pairs, interventions=interventions, total=-(-n // batch_size))
