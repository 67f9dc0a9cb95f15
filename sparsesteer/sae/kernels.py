"""Sparse kernels: a training step costs one dense encoder matmul plus O(batch * k * d).

A TopK SAE only ever uses k of its n latents per sample, yet a naive implementation scatters the
codes into a dense [batch, n] matrix, decodes with a dense matmul and lets autograd produce dense
gradients: five [batch x n x d] matmuls per step instead of one. Here:

- `encode_select` computes the pre-activations in row chunks into a reused buffer (no [batch, n]
  tensor is kept) and keeps only the selected entries (`row_topk`: an exact grouped top-k); with
  AuxK the dead latents form one column block, and the main top-k merges the live block's top k
  with the dead block's top k_aux;
- `gather_linear` attaches autograd to those selected values; its backward touches only the
  selected (row, latent) pairs: grad W_enc and grad b_enc by `embedding_bag` over rows sorted by
  latent; the input's center (b_dec) gets -(grad b_enc) @ W_enc, O(n * d), and the [B, d] input
  gradient is only computed when the input needs one;
- `sparse_decode` is `embedding_bag` over the active decoder rows, with a sparse backward (grad
  values by `pair_dots`, grad W_dec by one bag per latent);
- the pairs are sorted by latent once per selection (`latent_order`) and the order is shared by
  every backward that reads weight rows or sums over the rows of each latent.
- AuxK while few latents are dead runs as dense matmuls over the dead block (`dense_aux`), on the
  pre-activations the encoder matmul already computed.

Sparse codes are "padded top-k" tensors `values [B, K]`, `indices [B, K]`: a slot with value 0
contributes nothing, which also represents rows with fewer than K active latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements of the pre-activation buffer held at once (x4 bytes): 256 MiB on CPU. Chunking rows
# keeps memory bounded and is faster than one huge buffer (fewer page faults, better cache use).
_CPU_BUFFER_ELEMENTS = 1 << 26
_GPU_BUFFER_ELEMENTS = 1 << 30


class Selection(NamedTuple):
    """Latents chosen by the encoder for a batch (no autograd attached yet)."""

    values: Tensor
    """[B, K] pre-activation values of the chosen latents (before any ReLU)."""
    indices: Tensor
    """[B, K] int64 latent indices."""
    aux_values: Tensor | None
    """[B, k_aux] pre-activations of the top dead latents (AuxK), or None."""
    aux_indices: Tensor | None
    """[B, k_aux] their indices, or None."""
    dead_pre: Tensor | None = None
    """[B, n_dead] pre-activations of every dead latent (`dead_pre=True`: the dense AuxK path), in
    the order of `dead_mask_n.nonzero()`, or None (in the matmul's precision)."""


def _buffer_rows(n_latents: int, batch: int, device: torch.device) -> int:
    budget = _GPU_BUFFER_ELEMENTS if device.type == "cuda" else _CPU_BUFFER_ELEMENTS
    return max(1, min(batch, budget // max(1, n_latents)))


_workspace: dict[tuple, Tensor] = {}


def _get_buffer(rows: int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reused [rows, n] scratch buffer; reallocating 100s of MB every step costs page faults."""
    key = (device, dtype)
    buf = _workspace.get(key)
    if buf is None or buf.numel() < rows * n:
        _workspace.pop(key, None)
        buf = torch.empty(rows * n, dtype=dtype, device=device)
        _workspace[key] = buf
    return buf[: rows * n].view(rows, n)


def release_workspace() -> None:
    """Free the scratch buffers (they are re-created on demand)."""
    _workspace.clear()


def _group_size(n: int, k: int) -> int:
    """Columns per group for `row_topk`: about n / (12 k), a power of two in [2, 32] (measured
    on CPU at n = 3,072 to 49,152, k = 64 and 384), or 1 (no grouping) where that is below 2."""
    s = 1
    while s < 32 and 2 * s * 12 * k <= n:
        s *= 2
    return s


def row_topk(pre_rn: Tensor, k: int, group: int | None = None) -> tuple[Tensor, Tensor]:
    """(values, column indices) of the k largest entries of each row, unsorted; exact.

    On CPU, `torch.topk` costs ~10 ns per element. Rows are scanned in groups of `group` columns
    instead: if t is the k-th largest group maximum, k groups hold an entry >= t, so no entry of
    another group (all <= t) can exceed the k-th largest entry; the final top-k runs over the
    k * group entries of the k best groups (and the < group columns left over). 1.3-1.7x faster
    at 3,072 to 49,152 columns. CUDA's top-k (a radix select) is used as it is, and so is the CPU's
    for bfloat16 (its grouped maximum is not vectorised: slower than the top-k it would save).
    """
    R, n = pre_rn.shape
    s = _group_size(n, k) if group is None else group
    if s < 2 or pre_rn.device.type != "cpu" or pre_rn.dtype not in (torch.float32, torch.float64) or n // s < k:
        return pre_rn.topk(k, dim=1, sorted=False)
    G = n // s
    m = G * s
    grouped = pre_rn[:, :m].unflatten(1, (G, s))
    _, gi = grouped.amax(2).topk(k, dim=1, sorted=False)
    cand = grouped.gather(1, gi.unsqueeze(2).expand(R, k, s)).flatten(1)
    cols = (gi.unsqueeze(2) * s + torch.arange(s, device=gi.device)).flatten(1)
    if m < n:
        cand = torch.cat([cand, pre_rn[:, m:]], 1)
        cols = torch.cat([cols, torch.arange(m, n, device=gi.device).expand(R, n - m)], 1)
    values, j = cand.topk(k, dim=1, sorted=False)
    return values, cols.gather(1, j)


@torch.no_grad()
def encode_select(
    x_bd: Tensor,
    W_enc_nd: Tensor,
    b_enc_n: Tensor,
    k: int,
    *,
    by_abs: bool = False,
    dead_mask_n: Tensor | None = None,
    k_aux: int = 0,
    dead_pre: bool = False,
) -> Selection:
    """Top-k latents of `x @ W_enc.T + b_enc` per row, without materialising [B, n].

    `by_abs` selects by |pre-activation| instead of by value. With `dead_mask_n`, also returns the
    top `k_aux` pre-activations among dead latents (for the AuxK loss), and with `dead_pre` all of
    the dead latents' pre-activations too (for `dense_aux`). Then the encoder's rows are taken live
    first, dead last, so that the dead latents' pre-activations are one contiguous column block of
    each row (a copy of W_enc, [n, d], instead of one of the [B, n_dead] pre-activations), and the
    main top-k runs over the live block only, merged with the dead block's top k_aux.
    """
    B = x_bd.shape[0]
    n = W_enc_nd.shape[0]
    device = x_bd.device
    dtype = _compute_dtype(x_bd, W_enc_nd)
    x_c = x_bd.to(dtype)
    W = W_enc_nd.to(dtype)
    b = b_enc_n.to(dtype)
    values = torch.empty(B, k, dtype=dtype, device=device)
    indices = torch.empty(B, k, dtype=torch.long, device=device)
    use_aux = dead_mask_n is not None and k_aux > 0 and bool(dead_mask_n.any())
    perm = None
    if use_aux:
        assert dead_mask_n is not None
        dead_n = dead_mask_n.nonzero().squeeze(1)
        n_live = n - dead_n.numel()
        k_aux = min(k_aux, dead_n.numel())
        perm = torch.cat([(~dead_mask_n).nonzero().squeeze(1), dead_n])
        W, b = W.index_select(0, perm), b.index_select(0, perm)
        aux_values = torch.empty(B, k_aux, dtype=dtype, device=device)
        aux_local = torch.empty(B, k_aux, dtype=torch.long, device=device)
        pre_dead = torch.empty(B, dead_n.numel(), dtype=dtype, device=device) if dead_pre else None
        # the top k of all latents are the top k of (the live latents' top k, the dead latents'
        # top k_aux) when k <= k_aux: the full-width top-k is not needed then
        merge = not by_abs and k <= k_aux and n_live >= k
    W_t = W.t()
    rows = _buffer_rows(n, B, device)
    buf = _get_buffer(rows, n, dtype, device)
    for s in range(0, B, rows):
        e = min(B, s + rows)
        pre = buf[: e - s]
        torch.addmm(b, x_c[s:e], W_t, out=pre)
        if use_aux:
            aux_values[s:e], aux_local[s:e] = row_topk(pre[:, n_live:], k_aux)
            if pre_dead is not None:
                pre_dead[s:e] = pre[:, n_live:]
            if merge:
                live_v, live_i = row_topk(pre[:, :n_live], k)
                cand_v = torch.cat([live_v, aux_values[s:e]], 1)
                cand_i = torch.cat([live_i, aux_local[s:e] + n_live], 1)
                torch.topk(cand_v, k, dim=1, sorted=False, out=(values[s:e], indices[s:e]))
                indices[s:e] = cand_i.gather(1, indices[s:e])
                continue
        if by_abs:
            _, idx = row_topk(pre.abs(), k)
            indices[s:e] = idx
            values[s:e] = pre.gather(1, idx)
        else:
            values[s:e], indices[s:e] = row_topk(pre, k)
    if perm is not None:  # columns back to latent ids
        indices = perm[indices]
    if dtype != W_enc_nd.dtype:
        # reduced-precision matmul (autocast): it chose the latents; their values are recomputed in
        # the weights' precision (O(B * k * d)), so the codes, the loss and the gradients are float32
        values = selected_preacts(x_bd, W_enc_nd, b_enc_n, indices)
    if not use_aux:
        return Selection(values, indices, None, None)
    return Selection(values, indices, aux_values, dead_n[aux_local], pre_dead)


@torch.no_grad()
def selected_preacts(x_bd: Tensor, W_nd: Tensor, b_n: Tensor, idx_bk: Tensor) -> Tensor:
    """[B, K] pre-activations x[b] . W[idx[b, j]] + b[idx[b, j]] of the selected latents only, in
    W's dtype: O(B * K * d) (`pair_dots`)."""
    return pair_dots(idx_bk, W_nd, x_bd) + b_n[idx_bk]


@torch.no_grad()
def threshold_select(x_bd: Tensor, W_enc_nd: Tensor, b_enc_n: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Latents whose pre-activation exceeds `threshold` (scalar or per latent) and 0, per row.

    Returns padded `(values [B, K], indices [B, K])` with K the largest count in the batch and
    value 0 in padding slots; pre-activations are computed in row chunks, never all at once.
    """
    B = x_bd.shape[0]
    n = W_enc_nd.shape[0]
    dtype = _compute_dtype(x_bd, W_enc_nd)
    x_c, W_t, b = x_bd.to(dtype), W_enc_nd.to(dtype).t(), b_enc_n.to(dtype)
    thr = threshold.to(dtype).clamp_min(0)
    rows = _buffer_rows(n, B, x_bd.device)
    buf = _get_buffer(rows, n, dtype, x_bd.device)
    parts: list[tuple[Tensor, Tensor]] = []
    for s in range(0, B, rows):
        e = min(B, s + rows)
        pre = buf[: e - s]
        torch.addmm(b, x_c[s:e], W_t, out=pre)
        active = pre > thr
        K = int(active.sum(1).max()) if e > s else 0
        pre.mul_(active)
        parts.append(pre.topk(K, dim=1, sorted=False))
    K = max((v.shape[1] for v, _ in parts), default=0)
    values = torch.zeros(B, K, dtype=dtype, device=x_bd.device)
    indices = torch.zeros(B, K, dtype=torch.long, device=x_bd.device)
    s = 0
    for v, i in parts:
        values[s : s + v.shape[0], : v.shape[1]] = v
        indices[s : s + v.shape[0], : v.shape[1]] = i
        s += v.shape[0]
    return values, indices


@torch.no_grad()
def dense_pre(x_bd: Tensor, W_enc_nd: Tensor, b_enc_n: Tensor) -> Tensor:
    """Dense pre-activations [B, n] (for variants that need them: ReLU, BatchTopK fallback)."""
    dtype = _compute_dtype(x_bd, W_enc_nd)
    return torch.addmm(b_enc_n.to(dtype), x_bd.to(dtype), W_enc_nd.to(dtype).t())


def _compute_dtype(x: Tensor, W: Tensor) -> torch.dtype:
    """The encoder matmul's dtype: autocast's (bf16) when it is on for this device, else W's."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return W.dtype


class LatentOrder(NamedTuple):
    """The (row, latent) pairs of a [B, K] selection grouped by latent: computed once per selection
    and shared by every backward that sums over the rows of each latent (encoder and decoder
    weight gradients) or reads each weight row once (`pair_dots`), so the sort is paid once."""

    order: Tensor
    """[B*K] positions of the flat pairs, sorted by latent."""
    offsets: Tensor
    """[n + 1] start of each latent's run in `order`."""
    rows: Tensor
    """[B*K] batch row of each sorted pair (order // K)."""
    latents: Tensor
    """[B*K] latent of each sorted pair (non-decreasing)."""


def latent_order(idx_bk: Tensor, n: int) -> LatentOrder:
    """Group the pairs of `idx_bk` by latent (a stable sort of 32-bit keys: faster than int64)."""
    cols = idx_bk.reshape(-1)
    keys = cols.to(torch.int32) if n < 2**31 else cols
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long, device=cols.device)
    torch.cumsum(torch.bincount(cols, minlength=n), 0, out=offsets[1:])
    rows = torch.div(order, max(idx_bk.shape[1], 1), rounding_mode="floor")
    return LatentOrder(order, offsets, rows, cols[order])


def per_latent_sum(lo: LatentOrder, weights_flat: Tensor, rows_bd: Tensor) -> Tensor:
    """out[j] = sum over pairs (b, j) of weights[pair] * rows_bd[b]: [n, d], one bag per latent."""
    return F.embedding_bag(
        lo.rows, rows_bd, lo.offsets, mode="sum", per_sample_weights=weights_flat[lo.order], include_last_offset=True
    )


def pair_dots(idx_bk: Tensor, W_nd: Tensor, rows_bd: Tensor, lo: LatentOrder | None = None) -> Tensor:
    """[B, K]: W[idx[b, j]] . rows_bd[b] for every pair, by embedding_bag's per-sample-weight
    gradient kernel (the gathered dot products it computes are exactly these; faster than
    gathering [B, K, d] and a bmm).

    On CPU the pairs are taken in latent order (`lo`, made here when not given), so that each
    weight row is read once and in sequence while the [B, d] rows (megabytes, in cache) are the
    ones read at random: at 49,152 latents ~3x faster than reading W's rows in each batch row's
    order, which misses the cache on every pair.
    """
    B, K = idx_bk.shape
    rows_bd = rows_bd.to(W_nd.dtype).contiguous()
    W_nd = W_nd.contiguous()
    if W_nd.device.type != "cpu":
        flat = idx_bk.reshape(-1)
        offsets = torch.arange(0, B * K, K, device=flat.device)
        offset2bag = torch.div(torch.arange(B * K, device=flat.device), K, rounding_mode="floor")
        dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            rows_bd, W_nd, flat, offsets, offset2bag, 0, -1
        )
        return dots.view(B, K)
    lo = lo if lo is not None else latent_order(idx_bk, W_nd.shape[0])
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        W_nd, rows_bd, lo.rows, lo.offsets[:-1], lo.latents, 0, -1
    )
    return torch.empty_like(dots).index_put_((lo.order,), dots).view(B, K)


class _GatherLinear(torch.autograd.Function):
    """values[b, j] = (x[b] - center) . W[idx[b, j]] + bias[idx[b, j]], given precomputed values.

    Forward returns the values already computed by the dense matmul (no recomputation). Backward
    computes gradients only for the selected pairs: O(nnz * d) work instead of O(B * n * d). The
    center (an SAE's b_dec) gets -sum_b grad x[b] = -(grad bias) @ W: O(n * d), without the
    O(nnz * d) input gradient, which is only computed when x itself needs one.
    """

    @staticmethod
    def forward(ctx, values_bk, x_bd, W_nd, b_n, idx_bk, lo, center_d, centered):  # type: ignore[override]
        x_c = _centered(x_bd, center_d, centered)
        ctx.save_for_backward(x_c, W_nd, idx_bk)
        ctx.b_dtype = b_n.dtype
        ctx.lo = lo
        return values_bk.to(W_nd.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad_bk: Tensor):  # type: ignore[override]
        x_c, W_nd, idx_bk = ctx.saved_tensors
        n, d = W_nd.shape
        need_x, need_W, need_b, need_c = (ctx.needs_input_grad[i] for i in (1, 2, 3, 6))
        grad_bk = grad_bk.to(W_nd.dtype).contiguous()
        g = grad_bk.reshape(-1)
        grad_x = grad_W = grad_b = grad_c = None
        if need_x:  # grad x[b] = sum_j g[b, j] W[idx[b, j]]
            grad_x = F.embedding_bag(idx_bk, W_nd, mode="sum", per_sample_weights=grad_bk).to(x_c.dtype)
        if need_b or need_c:
            grad_b_n = torch.zeros(n, dtype=W_nd.dtype, device=W_nd.device).index_add_(0, idx_bk.reshape(-1), g)
            if need_b:
                grad_b = grad_b_n.to(ctx.b_dtype)
            if need_c:  # -sum_b grad x[b] = -sum_j (sum_b g[b, j]) W[j]
                grad_c = -(grad_b_n @ W_nd)
        if need_W:
            lo = ctx.lo if ctx.lo is not None else latent_order(idx_bk, n)
            grad_W = per_latent_sum(lo, g, x_c.to(W_nd.dtype))
        return None, grad_x, grad_W, grad_b, None, None, grad_c, None


def _centered(x_bd: Tensor, center_d: Tensor | None, centered: Tensor | None) -> Tensor:
    """x - center, detached: the rows the weight gradients need (`centered` when the caller has
    them already: the encoder's selection is computed on the same rows)."""
    if centered is not None:
        return centered.detach()
    return x_bd.detach() if center_d is None else x_bd.detach() - center_d.detach()


def latent_rows_weighted_sum(cols: Tensor, weights: Tensor, rows_bd: Tensor, k: int, n: int) -> Tensor:
    """out[j] = sum over flat entries e with cols[e] == j of weights[e] * rows_bd[e // k].

    The transpose of a sparse decode: entries are sorted by latent so that each latent is one bag
    of `embedding_bag` over the batch rows. Memory O(nnz) + the [n, d] output.
    """
    return per_latent_sum(latent_order(cols.reshape(-1, k), n), weights, rows_bd)


def gather_linear(
    values_bk: Tensor,
    x_bd: Tensor,
    W_nd: Tensor,
    b_n: Tensor,
    idx_bk: Tensor,
    lo: LatentOrder | None = None,
    *,
    center: Tensor | None = None,
    centered: Tensor | None = None,
) -> Tensor:
    """Attach sparse autograd to precomputed selected pre-activations of `x - center` (see
    `_GatherLinear`); `lo`: the selection's `latent_order`, when already computed (else made in
    the backward); `centered`: x - center, when already computed."""
    return _GatherLinear.apply(values_bk, x_bd, W_nd, b_n, idx_bk, lo, center, centered)


class _SparseDecode(torch.autograd.Function):
    """sum_j values[b, j] W[idx[b, j]]; backward: grad values by `pair_dots`, grad W by one bag per
    latent, both over the selection's latent order."""

    @staticmethod
    def forward(ctx, values_bk, idx_bk, W_nd, lo):  # type: ignore[override]
        ctx.save_for_backward(values_bk, idx_bk, W_nd)
        ctx.lo = lo
        return F.embedding_bag(idx_bk, W_nd, mode="sum", per_sample_weights=values_bk)

    @staticmethod
    def backward(ctx, g_bd: Tensor):  # type: ignore[override]
        values_bk, idx_bk, W_nd = ctx.saved_tensors
        g_bd = g_bd.to(W_nd.dtype).contiguous()
        lo = ctx.lo if ctx.lo is not None else latent_order(idx_bk, W_nd.shape[0])
        grad_v = grad_W = None  # (pair_dots and per_latent_sum on CPU: both over the latent order)
        if ctx.needs_input_grad[0]:
            grad_v = pair_dots(idx_bk, W_nd, g_bd, lo)
        if ctx.needs_input_grad[2]:
            grad_W = per_latent_sum(lo, values_bk.reshape(-1), g_bd)
        return grad_v, None, grad_W, None


def sparse_decode(values_bk: Tensor, indices_bk: Tensor, W_dec_nd: Tensor, lo: LatentOrder | None = None) -> Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]]  ->  [B, d], touching only the active rows.

    The backward is sparse too (`_SparseDecode`; `lo`: the selection's `latent_order`, when already
    computed).
    """
    if values_bk.shape[1] == 0:
        return W_dec_nd.new_zeros(values_bk.shape[0], W_dec_nd.shape[1])
    values_bk = values_bk.to(W_dec_nd.dtype)
    if not (torch.is_grad_enabled() and (W_dec_nd.requires_grad or values_bk.requires_grad)):
        return F.embedding_bag(indices_bk, W_dec_nd, mode="sum", per_sample_weights=values_bk)
    return _SparseDecode.apply(values_bk, indices_bk, W_dec_nd, lo)


def dense_aux_is_cheaper(n_dead: int, k_aux: int) -> bool:
    """Whether AuxK over `n_dead` dead latents (k_aux per row) is cheaper as dense matmuls over the
    dead latents than as sparse gathers: a dense [B, n_dead] matmul does n_dead / k_aux times the
    arithmetic but runs ~10x faster per multiply-add than the gather kernels (which also need a
    sort of the B * k_aux pairs), so dense wins while few latents are dead relative to k_aux."""
    return n_dead <= _DENSE_AUX_RATIO * k_aux


_DENSE_AUX_RATIO = 6


class _PrecomputedLinear(torch.autograd.Function):
    """out = (x - center) @ W.T + b, given `out` already computed (the dead latents' columns of the
    encoder matmul, see `encode_select(dead_pre=True)`): the backward of a linear layer, in the
    matmul's precision, with the center's gradient as -(sum_b grad out[b]) @ W (no [B, d] input
    gradient unless x needs one)."""

    @staticmethod
    def forward(ctx, pre_bm, x_bd, W_md, b_m, center_d, centered):  # type: ignore[override]
        x_c = _centered(x_bd, center_d, centered)
        ctx.save_for_backward(x_c, W_md)
        ctx.compute_dtype = pre_bm.dtype
        ctx.b_dtype = b_m.dtype
        return pre_bm.view_as(pre_bm)

    @staticmethod
    def backward(ctx, g_bm: Tensor):  # type: ignore[override]
        x_c, W_md = ctx.saved_tensors
        need_x, need_W, need_b, need_c = (ctx.needs_input_grad[i] for i in (1, 2, 3, 4))
        g = g_bm.to(ctx.compute_dtype)
        grad_x = grad_W = grad_b = grad_c = None
        if need_x:
            grad_x = (g @ W_md.to(g.dtype)).to(x_c.dtype)
        if need_W:
            grad_W = (g.t() @ x_c.to(g.dtype)).to(W_md.dtype)
        if need_b or need_c:
            g_sum = g_bm.sum(0, dtype=W_md.dtype)
            grad_b = g_sum.to(ctx.b_dtype) if need_b else None
            grad_c = -(g_sum @ W_md) if need_c else None
        return None, grad_x, grad_W, grad_b, grad_c, None


def dense_aux(
    sel: Selection,
    dead_mask_n: Tensor,
    x_bd: Tensor,
    center_d: Tensor | None,
    W_enc_nd: Tensor,
    b_enc_n: Tensor,
    W_dec_nd: Tensor,
    *,
    centered: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """AuxK codes and reconstruction by dense matmuls over the dead latents only.

    `sel`: from `encode_select(..., dead_mask_n, k_aux, dead_pre=True)`: the dead latents'
    pre-activations of `x - center` and their top k_aux (not recomputed). The same function as the
    sparse path (the top `k_aux` ReLU'd pre-activations among dead latents, decoded by their decoder
    rows) with the same gradients: returns (values [B, k_aux], global indices [B, k_aux],
    reconstruction [B, d]).
    """
    assert sel.dead_pre is not None and sel.aux_indices is not None
    dead = dead_mask_n.nonzero().squeeze(1)
    position = torch.empty(dead_mask_n.shape[0], dtype=torch.long, device=dead.device)
    position[dead] = torch.arange(dead.numel(), device=dead.device)
    local = position[sel.aux_indices]
    pre = _PrecomputedLinear.apply(sel.dead_pre, x_bd, W_enc_nd[dead], b_enc_n[dead], center_d, centered)
    chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, local, True)
    codes = torch.relu(pre) * chosen
    recon = codes @ W_dec_nd[dead].to(codes.dtype)
    return codes.gather(1, local), sel.aux_indices, recon


def to_dense(values_bk: Tensor, indices_bk: Tensor, n_latents: int) -> Tensor:
    """Scatter padded top-k codes into a dense [B, n] matrix (for analysis, not the hot path)."""
    out = values_bk.new_zeros(values_bk.shape[0], n_latents)
    return out.scatter_add(1, indices_bk, values_bk)


def from_dense(codes_bn: Tensor) -> tuple[Tensor, Tensor]:
    """Padded sparse form of dense codes: K = max nonzeros per row; padding slots have value 0."""
    nnz = (codes_bn != 0).sum(1)
    K = int(nnz.max()) if codes_bn.shape[0] else 0
    _, indices = codes_bn.abs().topk(K, dim=1, sorted=True)
    return codes_bn.gather(1, indices), indices
