"""Neighbouring latents by decoder cosine similarity, top-k per latent, computed in blocks.

    nb = decoder_neighbours(sae.W_dec, k=10)      # nb.indices[j], nb.cosine[j]: j's k nearest, best first

Rows of W_dec [n_latents, d] are L2-normalised; each block of `block` rows is multiplied with all
rows ([block, n_latents] at a time, never n_latents x n_latents), the latent itself is excluded,
and the k largest cosines are kept (ties: lower latent index first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    import torch


class Neighbours(NamedTuple):
    indices: np.ndarray
    """int64 [n_latents, k] nearest latents, highest cosine first."""
    cosine: np.ndarray
    """float32 [n_latents, k] their decoder cosine similarities."""


def decoder_neighbours(W_dec: torch.Tensor | np.ndarray, k: int = 10, *, block: int = 1024) -> Neighbours:
    """Top-k decoder-cosine neighbours of every latent (see the module docstring)."""
    import torch

    W = torch.as_tensor(W_dec).detach().to(torch.float32)
    n = W.shape[0]
    if not 1 <= k < n:
        raise SparsesteerError(f"neighbours: k must be in 1..{n - 1} for {n} latents, got {k}")
    if block < 1:
        raise SparsesteerError(f"neighbours: block must be >= 1, got {block}")
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    idx = np.empty((n, k), np.int64)
    cos = np.empty((n, k), np.float32)
    for a in range(0, n, block):
        b = min(a + block, n)
        sims = W[a:b] @ W.T
        sims[torch.arange(b - a), torch.arange(a, b)] = -float("inf")
        # stable tie-break to the lower index: sort the k + margin best exactly
        vals, ids = torch.topk(sims, k, dim=1)
        thr = vals[:, -1:]
        if bool((sims == thr).sum(1).gt((vals == thr).sum(1)).any()):  # ties cross the cut: full sort
            order = np.lexsort((np.broadcast_to(np.arange(n), sims.shape), -sims.numpy()), axis=1)[:, :k]
            ids = torch.from_numpy(order)
            vals = torch.gather(sims, 1, ids)
        else:
            srt = np.lexsort((ids.numpy(), -vals.numpy()), axis=1)
            ids = torch.gather(ids, 1, torch.from_numpy(srt))
            vals = torch.gather(vals, 1, torch.from_numpy(srt))
        idx[a:b] = ids.numpy()
        cos[a:b] = vals.numpy()
    return Neighbours(idx, cos)
