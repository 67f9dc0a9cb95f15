"""Sparse kernels: a training step costs one dense encoder matmul plus O(batch * k * d).

A TopK SAE only ever uses k of its n latents per sample, yet a naive implementation scatters the
codes into a dense [batch, n] matrix, decodes with a dense matmul and lets autograd produce dense
gradients: five [batch x n x d] matmuls per step instead of one. Here:

- `encode_select` computes the pre-activations in row chunks into a reused buffer (no [batch, n]
  tensor is kept) and keeps only the selected entries;
- `gather_linear` attaches autograd to those selected values; its backward touches only the
  selected (row, latent) pairs: grad W_enc and grad b_enc by `embedding_bag` over rows sorted by
  latent, grad x by `embedding_bag` over the latents of each row;
- `sparse_decode` is `embedding_bag` over the active decoder rows, with a sparse backward;
- the weight gradients of both sum over the rows that chose each latent: the pairs are sorted by
  latent once per selection (`latent_order`) and the order is shared.

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
) -> Selection:
    """Top-k latents of `x @ W_enc.T + b_enc` per row, without materialising [B, n].

    `by_abs` selects by |pre-activation| instead of by value. With `dead_mask_n`, also returns the
    top `k_aux` pre-activations among dead latents (for the AuxK loss).
    """
    B = x_bd.shape[0]
    n = W_enc_nd.shape[0]
    device = x_bd.device
    dtype = _compute_dtype(x_bd, W_enc_nd)
    x_c = x_bd.to(dtype)
    W_t = W_enc_nd.to(dtype).t()
    b = b_enc_n.to(dtype)
    values = torch.empty(B, k, dtype=dtype, device=device)
    indices = torch.empty(B, k, dtype=torch.long, device=device)
    use_aux = dead_mask_n is not None and k_aux > 0 and bool(dead_mask_n.any())
    if use_aux:
        dead_n = dead_mask_n.nonzero().squeeze(1)  # top-k over the dead columns only
        k_aux = min(k_aux, dead_n.numel())
        aux_values = torch.empty(B, k_aux, dtype=dtype, device=device)
        aux_indices = torch.empty(B, k_aux, dtype=torch.long, device=device)
    rows = _buffer_rows(n, B, device)
    buf = _get_buffer(rows, n, dtype, device)
    for s in range(0, B, rows):
        e = min(B, s + rows)
        pre = buf[: e - s]
        torch.addmm(b, x_c[s:e], W_t, out=pre)
        if by_abs:
            _, idx = pre.abs().topk(k, dim=1, sorted=False)
            indices[s:e] = idx
            values[s:e] = pre.gather(1, idx)
        else:
            torch.topk(pre, k, dim=1, sorted=False, out=(values[s:e], indices[s:e]))
        if use_aux:
            local = aux_indices[s:e]
            torch.topk(pre.index_select(1, dead_n), k_aux, dim=1, sorted=False, out=(aux_values[s:e], local))
            aux_indices[s:e] = dead_n[local]
    if dtype != W_enc_nd.dtype:
        # reduced-precision matmul (autocast): it chose the latents; their values are recomputed in
        # the weights' precision (O(B * k * d)), so the codes, the loss and the gradients are float32
        values = selected_preacts(x_bd, W_enc_nd, b_enc_n, indices)
    if not use_aux:
        return Selection(values, indices, None, None)
    return Selection(values, indices, aux_values, aux_indices)


@torch.no_grad()
def selected_preacts(x_bd: Tensor, W_nd: Tensor, b_n: Tensor, idx_bk: Tensor) -> Tensor:
    """[B, K] pre-activations x[b] . W[idx[b, j]] + b[idx[b, j]] of the selected latents only, in
    W's dtype: O(B * K * d), by embedding_bag's per-sample-weight gradient kernel (the gathered
    dot products it computes are exactly these; faster than gathering [B, K, d] and a bmm)."""
    B, K = idx_bk.shape
    flat = idx_bk.reshape(-1)
    offsets = torch.arange(0, B * K, K, device=flat.device)
    offset2bag = torch.div(torch.arange(B * K, device=flat.device), K, rounding_mode="floor")
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        x_bd.to(W_nd.dtype).contiguous(), W_nd, flat, offsets, offset2bag, 0, -1
    )
    return dots.view(B, K) + b_n[idx_bk]


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
    weight gradients), so the sort is paid once."""

    order: Tensor
    """[B*K] positions of the flat pairs, sorted by latent."""
    offsets: Tensor
    """[n + 1] start of each latent's run in `order`."""
    rows: Tensor
    """[B*K] batch row of each sorted pair (order // K)."""


def latent_order(idx_bk: Tensor, n: int) -> LatentOrder:
    """Group the pairs of `idx_bk` by latent (a stable sort of 32-bit keys: faster than int64)."""
    cols = idx_bk.reshape(-1)
    keys = cols.to(torch.int32) if n < 2**31 else cols
    order = torch.argsort(keys, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long, device=cols.device)
    torch.cumsum(torch.bincount(cols, minlength=n), 0, out=offsets[1:])
    rows = torch.div(order, max(idx_bk.shape[1], 1), rounding_mode="floor")
    return LatentOrder(order, offsets, rows)


def per_latent_sum(lo: LatentOrder, weights_flat: Tensor, rows_bd: Tensor) -> Tensor:
    """out[j] = sum over pairs (b, j) of weights[pair] * rows_bd[b]: [n, d], one bag per latent."""
    return F.embedding_bag(
        lo.rows, rows_bd, lo.offsets, mode="sum", per_sample_weights=weights_flat[lo.order], include_last_offset=True
    )


class _GatherLinear(torch.autograd.Function):
    """values[b, j] = x[b] . W[idx[b, j]] + bias[idx[b, j]], given precomputed values.

    Forward returns the values already computed by the dense matmul (no recomputation). Backward
    computes gradients only for the selected pairs: O(nnz * d) work instead of O(B * n * d).
    """

    @staticmethod
    def forward(ctx, values_bk, x_bd, W_nd, b_n, idx_bk, lo):  # type: ignore[override]
        ctx.save_for_backward(x_bd, W_nd, idx_bk)
        ctx.b_dtype = b_n.dtype
        ctx.lo = lo
        return values_bk.to(W_nd.dtype, copy=True)

    @staticmethod
    def backward(ctx, grad_bk: Tensor):  # type: ignore[override]
        x_bd, W_nd, idx_bk = ctx.saved_tensors
        n, d = W_nd.shape
        grad_bk = grad_bk.to(W_nd.dtype).contiguous()
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            # grad x[b] = sum_j g[b, j] W[idx[b, j]]
            grad_x = F.embedding_bag(idx_bk, W_nd, mode="sum", per_sample_weights=grad_bk).to(x_bd.dtype)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            cols = idx_bk.reshape(-1)
            g = grad_bk.reshape(-1)
            if ctx.needs_input_grad[3]:
                grad_b = torch.zeros(n, dtype=W_nd.dtype, device=W_nd.device).index_add_(0, cols, g).to(ctx.b_dtype)
            if ctx.needs_input_grad[2]:
                lo = ctx.lo if ctx.lo is not None else latent_order(idx_bk, n)
                grad_W = per_latent_sum(lo, g, x_bd.to(W_nd.dtype))
        return None, grad_x, grad_W, grad_b, None, None


def latent_rows_weighted_sum(cols: Tensor, weights: Tensor, rows_bd: Tensor, k: int, n: int) -> Tensor:
    """out[j] = sum over flat entries e with cols[e] == j of weights[e] * rows_bd[e // k].

    The transpose of a sparse decode: entries are sorted by latent so that each latent is one bag
    of `embedding_bag` over the batch rows. Memory O(nnz) + the [n, d] output.
    """
    return per_latent_sum(latent_order(cols.reshape(-1, k), n), weights, rows_bd)


def gather_linear(
    values_bk: Tensor, x_bd: Tensor, W_nd: Tensor, b_n: Tensor, idx_bk: Tensor, lo: LatentOrder | None = None
) -> Tensor:
    """Attach sparse autograd to precomputed selected pre-activations (see `_GatherLinear`); `lo`:
    the selection's `latent_order`, when already computed (else made in the backward)."""
    return _GatherLinear.apply(values_bk, x_bd, W_nd, b_n, idx_bk, lo)


class _DecoderGrad(torch.autograd.Function):
    """Identity on the decoded output; its backward adds the decoder's gradient, one bag per latent
    over the selection's latent order (embedding_bag's own backward for the weight sorts again)."""

    @staticmethod
    def forward(ctx, recon_bd, W_nd, values_bk, idx_bk, lo):  # type: ignore[override]
        ctx.save_for_backward(values_bk, idx_bk)
        ctx.n = W_nd.shape[0]
        ctx.lo = lo
        return recon_bd.view_as(recon_bd)

    @staticmethod
    def backward(ctx, g_bd: Tensor):  # type: ignore[override]
        values_bk, idx_bk = ctx.saved_tensors
        grad_W = None
        if ctx.needs_input_grad[1]:
            lo = ctx.lo if ctx.lo is not None else latent_order(idx_bk, ctx.n)
            grad_W = per_latent_sum(lo, values_bk.reshape(-1), g_bd.contiguous())
        return g_bd, grad_W, None, None, None


def sparse_decode(values_bk: Tensor, indices_bk: Tensor, W_dec_nd: Tensor, lo: LatentOrder | None = None) -> Tensor:
    """sum_j values[b, j] * W_dec[indices[b, j]]  ->  [B, d], touching only the active rows.

    The backward is sparse too: grad values by gathered dot products, grad W_dec by one bag per
    active latent (`lo`: the selection's `latent_order`, when already computed).
    """
    if values_bk.shape[1] == 0:
        return W_dec_nd.new_zeros(values_bk.shape[0], W_dec_nd.shape[1])
    values_bk = values_bk.to(W_dec_nd.dtype)
    if not (torch.is_grad_enabled() and W_dec_nd.requires_grad):
        return F.embedding_bag(indices_bk, W_dec_nd, mode="sum", per_sample_weights=values_bk)
    # grad values: embedding_bag's own (gathered dots); grad W_dec: one bag per latent, shared order
    recon = F.embedding_bag(indices_bk, W_dec_nd.detach(), mode="sum", per_sample_weights=values_bk)
    return _DecoderGrad.apply(recon, W_dec_nd, values_bk.detach(), indices_bk, lo)


def dense_aux_is_cheaper(n_dead: int, k_aux: int) -> bool:
    """Whether AuxK over `n_dead` dead latents (k_aux per row) is cheaper as dense matmuls over the
    dead latents than as sparse gathers: a dense [B, n_dead] matmul does n_dead / k_aux times the
    arithmetic but runs ~10x faster per multiply-add than the gather kernels (which also need a
    sort of the B * k_aux pairs), so dense wins while few latents are dead relative to k_aux."""
    return n_dead <= _DENSE_AUX_RATIO * k_aux


_DENSE_AUX_RATIO = 6


def dense_aux(
    x_c_bd: Tensor, W_enc_nd: Tensor, b_enc_n: Tensor, W_dec_nd: Tensor, dead_mask_n: Tensor, k_aux: int
) -> tuple[Tensor, Tensor, Tensor]:
    """AuxK codes and reconstruction by dense matmuls over the dead latents only.

    The same function as the sparse path (the top `k_aux` ReLU'd pre-activations among dead latents,
    decoded by their decoder rows) with the same gradients (autograd through the matmuls): returns
    (values [B, k_aux], global indices [B, k_aux], reconstruction [B, d]).
    """
    dead = dead_mask_n.nonzero().squeeze(1)
    pre = F.linear(x_c_bd, W_enc_nd[dead], b_enc_n[dead])  # [B, n_dead]
    _, local = pre.detach().topk(k_aux, dim=1, sorted=False)
    chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, local, True)
    codes = torch.relu(pre) * chosen
    recon = codes @ W_dec_nd[dead]
    return codes.gather(1, local), dead[local], recon


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
