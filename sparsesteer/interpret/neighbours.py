"""Neighbouring latents by decoder cosine similarity, top-k per latent, computed in blocks.

    nb = decoder_neighbours(sae.W_dec, k=10)      # nb.indices[j], nb.cosine[j]: j's k nearest, best first

Rows of W_dec [n_latents, d] are L2-normalised; each block of `block` rows is compared with all
rows ([block, n_latents] at a time, never n_latents x n_latents), the latent itself is excluded,
and the k largest cosines are kept (ties: lower latent index first, resolved only in the rows where
a tie crosses the k-th cosine, and there only among the tied columns).

The all-pairs product costs n_latents^2 x d whatever the number of rows interpreted, so on a CPU
with fast bf16 matrix products (oneDNN: AVX512-BF16, AMX; about 2.7x fp32 on this project's CPUs)
every row is first *screened* in bf16: its `k + 32` best candidates by the bf16 cosine are re-scored
in fp32. The result is exact: a column outside the candidates has a bf16 cosine at most the last
candidate's, so its fp32 cosine is at most that plus the bf16 error bound `_bf16_error(d)`; a row
whose k-th fp32 cosine is not above that is recomputed in full fp32. The screen computes each pair
once (the cosine matrix is symmetric: half the products of a row-by-row pass): one product of a block
of rows with every later row gives the block's rows their candidates by top-k, and the later rows
theirs by keeping only the entries above their current last candidate (few, once every row holds the
candidates of its own block).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    import torch

EXTRA = 32
"""Candidates beyond k kept by the bf16 screen."""
SPILL = 64
"""Entries above its last candidate that a row takes in from one block of the screen before a dense
top-k over that block's column replaces the sparse merge (bounds the merge's memory)."""


class Neighbours(NamedTuple):
    indices: np.ndarray
    """int64 [n_latents, k] nearest latents, highest cosine first."""
    cosine: np.ndarray
    """float32 [n_latents, k] their decoder cosine similarities."""


def _bf16_error(d: int) -> float:
    """Bound on |bf16 cosine - fp32 cosine| of unit vectors of width d: inputs rounded to bf16
    (2 x 2^-9 relative per product, summed under Cauchy-Schwarz), the product rounded to bf16
    (2^-9), the fp32 accumulation of both (d x 2^-24 each), and slack."""
    return 2.0**-8 + 2.0**-9 + 2.0**-16 + 4 * d * 2.0**-24


def _screen_by_default(W: torch.Tensor) -> bool:
    """bf16 screening where bf16 products are fast and accumulate in fp32: CPUs with oneDNN bf16."""
    import torch

    return (
        W.device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _sorted_top(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row by (value descending, index ascending)."""
    srt = np.lexsort((ids.numpy(), -vals.numpy()), axis=1)[:, :k]
    return np.take_along_axis(ids.numpy(), srt, 1), np.take_along_axis(vals.numpy(), srt, 1)


def _full_rows(W: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact fp32 top-k of the given rows against all rows."""
    import torch

    sims = W[rows] @ W.T
    sims[torch.arange(len(rows)), rows] = -float("inf")
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
    return _sorted_top(vals, ids, k)


def decoder_neighbours(
    W_dec: torch.Tensor | np.ndarray, k: int = 10, *, block: int = 1024, screen: bool | None = None
) -> Neighbours:
    """Top-k decoder-cosine neighbours of every latent (see the module docstring). `screen`: use the
    bf16 screen (None: where it is fast); the result is the same either way."""
    import torch

    W = torch.as_tensor(W_dec).detach().to(torch.float32)
    n, d = W.shape
    if not 1 <= k < n:
        raise SparsesteerError(f"neighbours: k must be in 1..{n - 1} for {n} latents, got {k}")
    if block < 1:
        raise SparsesteerError(f"neighbours: block must be >= 1, got {block}")
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kc = k + EXTRA
    if screen is None:
        screen = _screen_by_default(W)
    screen = screen and kc < n - 1
    err = _bf16_error(d)
    idx = np.empty((n, k), np.int64)
    cos = np.empty((n, k), np.float32)
    if not screen:
        for a in range(0, n, block):
            idx[a : a + block], cos[a : a + block] = _full_rows(W, torch.arange(a, min(a + block, n)), k)
        return Neighbours(idx, cos)
    last, cands = _screen(W.to(torch.bfloat16), kc, block)
    for a in range(0, n, block):
        b = min(a + block, n)
        rows = torch.arange(a, b)
        cand = cands[a:b]
        exact = torch.cat(  # re-scored 256 rows at a time: the gathered candidates are [rows, kc, d]
            [torch.einsum("bd,bcd->bc", W[s : min(s + 256, b)], W[cand[s - a : s - a + 256]]) for s in range(a, b, 256)]
        )
        kth = torch.topk(exact, k, dim=1).values[:, -1]
        ok = kth > last[a:b] + err  # every column outside the candidates is below the k-th
        ids, vals = _sorted_top(exact, cand, k)
        idx[a:b], cos[a:b] = ids, vals
        redo = torch.nonzero(~ok).flatten()
        if len(redo):
            idx[a + redo.numpy()], cos[a + redo.numpy()] = _full_rows(W, rows[redo], k)
    return Neighbours(idx, cos)


def _screen(Wb: torch.Tensor, kc: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the unit rows `Wb` (bf16): `kc` candidate columns (not itself) and the bf16 cosine
    of the last, such that every other column's bf16 cosine is at most that (see the module docstring)."""
    import torch

    n = Wb.shape[0]
    val = torch.full((n, kc), -float("inf"))
    ids = torch.full((n, kc), -1, dtype=torch.int64)
    for a in range(0, n, block):  # each block with itself: every row gets a real last candidate first
        b = min(a + block, n)
        if b - a > 1:
            s = Wb[a:b] @ Wb[a:b].T
            s.fill_diagonal_(-float("inf"))
            v, i = torch.topk(s, min(kc, b - a - 1), dim=1)
            val[a:b, : v.shape[1]], ids[a:b, : v.shape[1]] = v.float(), i + a
    for a in range(0, n - block, block):  # then each block with the rows after it, one product for both
        b = a + block
        P = Wb[a:b] @ Wb[b:].T  # [block, n - b]
        v, i = torch.topk(P, min(kc, n - b), dim=1)
        _merge(val, ids, torch.arange(a, b), v.float(), i + b)
        thr = val[b:, -1].to(torch.bfloat16)  # exact: the values came from bf16
        rws, cols = torch.nonzero(P > thr, as_tuple=True)  # later row b + cols takes in column a + rws
        if not len(cols):
            continue
        order = torch.argsort(cols, stable=True)
        cols, rws = cols[order], rws[order]
        counts = torch.bincount(cols, minlength=n - b)
        touched = torch.nonzero(counts).flatten()
        dense = touched[counts[touched] > SPILL]
        if len(dense):  # many entries: a top-k over the whole column instead
            v, i = torch.topk(P[:, dense].T, min(kc, block), dim=1)
            _merge(val, ids, b + dense, v.float(), i + a)
        sparse = touched[counts[touched] <= SPILL]
        if len(sparse):
            keep = counts[cols] <= SPILL
            cols, rws = cols[keep], rws[keep]
            slot = torch.full((n - b,), -1, dtype=torch.int64)
            slot[sparse] = torch.arange(len(sparse))
            start = torch.cumsum(counts[sparse], 0) - counts[sparse]
            u = slot[cols]
            pos = torch.arange(len(cols)) - start[u]
            width = int(counts[sparse].max())
            v = torch.full((len(sparse), width), -float("inf"))
            i = torch.zeros((len(sparse), width), dtype=torch.int64)
            v[u, pos] = P[rws, cols].float()
            i[u, pos] = rws + a
            _merge(val, ids, b + sparse, v, i)
    return val[:, -1].clone(), ids


def _merge(val: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, v: torch.Tensor, i: torch.Tensor) -> None:
    """Keep the kc best of each row's candidates and the new entries (v, i) of `rows`."""
    import torch

    allv = torch.cat([val[rows], v], 1)
    alli = torch.cat([ids[rows], i], 1)
    top, pos = torch.topk(allv, val.shape[1], dim=1)
    val[rows] = top
    ids[rows] = torch.gather(alli, 1, pos)
