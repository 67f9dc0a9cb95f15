"""Neighbouring latents by decoder cosine similarity, top-k per latent, computed in blocks.

    nb = decoder_neighbours(sae.W_dec, k=10)      # nb.indices[j], nb.cosine[j]: j's k nearest, best first

Rows of W_dec [n_latents, d] are L2-normalised; each block of `block` rows is multiplied with all
rows ([block, n_latents] at a time, never n_latents x n_latents), the latent itself is excluded,
and the k largest cosines are kept (ties: lower latent index first, resolved only in the rows where
a tie crosses the k-th cosine, and there only among the tied columns).
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
        vals, ids = torch.topk(sims, k, dim=1)
        # ties at the k-th cosine go to the lower latent index: only the rows where a tie crosses the
        # cut are redone, and only among their tied columns (a full sort of the block cost 100x top-k)
        thr = vals[:, -1:]
        crossing = torch.nonzero((sims == thr).sum(1) > (vals == thr).sum(1)).flatten().tolist()
        for r in crossing:
            row, t = sims[r], thr[r, 0]
            above = torch.nonzero(row > t).flatten()
            tied = torch.nonzero(row == t).flatten()  # ascending latent index
            ids[r] = torch.cat([above, tied[: k - len(above)]])
            vals[r] = row[ids[r]]
        srt = torch.from_numpy(np.lexsort((ids.numpy(), -vals.numpy()), axis=1))  # best first, then index
        ids, vals = torch.gather(ids, 1, srt), torch.gather(vals, 1, srt)
        idx[a:b] = ids.numpy()
        cos[a:b] = vals.numpy()
    return Neighbours(idx, cos)
