"""THE primitive of SAE-based interventions: x' = x + W_dec^T (f' - f), with f = encode(x) and f'
the edited code.

Every SAE steering rule is one edit of the code f:

- set f_j := s, zero f_j (suppression), scale f_j by a factor, add s to f_j (= add s times the
  decoder direction W_dec[j], Neuronpedia-style);
- VS2 in the forward pass: f' = (1 + lam (gamma - 1)) f, then the norm-preserving rescale
  (`rescale=True`);
- SAE_REC (`reconstruct`): the spliced SAE, x' = decode(f') with the error term x - decode(f) dropped.

With the error term kept (`keep_error=True`, the default) only the change of the code enters:
x' = x + decode(f') - decode(f) = x + W_dec^T (f' - f), the decoder bias cancelling. The delta
f' - f is exactly zero for every latent the edit leaves alone, so an edit that changes nothing
returns x exactly, and zeroing latent j returns x - f_j W_dec[j].

Edits see dense codes [rows, n_latents] (the exact, simplest form: `f[:, j] = s`), built chunk by
chunk of rows so that memory stays bounded; the decoder product costs what the encoder already does.
A saved SAE takes raw activations (a training-time input scale is folded into its weights, see
`SparseAutoencoder.fold_input_scale`), so no normalisation is applied here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..models.hook_names import HookPoint, Tokens
from ..models.hooks import Intervention
from ..sae.base import SparseAutoencoder
from ..utils.errors import SparsesteerError
from .settings import check_steer_value

CodeEdit = Callable[[Tensor], Tensor]
"""edit_fn(f) -> f': dense codes [rows, n_latents] -> edited codes of the same shape. It receives its own
copy of f, so it may modify it in place and return it."""

Latents = int | Sequence[int] | Tensor
"""One latent index, or several."""

_DENSE_BUDGET = 1 << 24  # elements of dense codes per chunk of rows (64 MiB in float32)


def check_finite(**values: float) -> None:
    """Steering strengths must be finite numbers within +-MAX_STEER (`settings.check_steer_value`): NaN, inf
    or an overflowing value would silently poison every prediction."""
    for name, v in values.items():
        check_steer_value(name, v)


def check_finite_result(t: Tensor, what: str, before: Tensor | None = None) -> Tensor:
    """`t` itself when every value is finite; else a one-line error saying that `what` (an edit, naming its
    value) overflowed. A value within the bound can still overflow a float16 model or an SAE with huge
    decoder rows, and NaN would otherwise flow into every score with exit status 0. `before`: the same
    quantity without the edit, to tell an overflow from inputs that were already non-finite."""
    if bool(torch.isfinite(t).all()):
        return t
    if before is not None and not bool(torch.isfinite(before).all()):
        raise SparsesteerError(f"the values are non-finite even without the edit ({what}): check the model and inputs")
    raise SparsesteerError(
        f"{what} made the results non-finite (an overflow in {str(t.dtype).removeprefix('torch.')}): use a smaller value"
    )


def latent_indices(sae: SparseAutoencoder, latents: Latents) -> Tensor:
    """`latents` as a sorted 1-D int64 tensor without repeats, every index checked against the SAE's
    n_latents."""
    try:
        t = torch.as_tensor(latents)
    except (TypeError, ValueError, RuntimeError):
        raise SparsesteerError(f"latents must be integer indices (one or a list), got {latents!r}") from None
    if t.numel() == 0:
        raise SparsesteerError("no latent to edit: give at least one latent index")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex or t.ndim > 1:
        raise SparsesteerError(f"latents must be integer indices (one or a list), got {latents!r}")
    t = t.reshape(-1).long()
    bad = t[(t < 0) | (t >= sae.n_latents)]
    if bad.numel():
        raise SparsesteerError(
            f"latent indices {bad.tolist()} out of range: the SAE has n_latents={sae.n_latents} "
            f"(valid 0..{sae.n_latents - 1})"
        )
    return t.unique()


def _rescale(z: Tensor, x: Tensor) -> Tensor:
    """z rescaled to the norm of x, row by row (VS2's norm-preserving step)."""
    return z * (x.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def apply_edit(
    sae: SparseAutoencoder,
    x: Tensor,
    edit_fn: CodeEdit | None,
    *,
    keep_error: bool = True,
    rescale: bool = False,
) -> Tensor:
    """x' for activations x [..., d_in] (same shape and dtype as x).

    keep_error: x' = x + W_dec^T (edit_fn(f) - f); else x' = decode(edit_fn(f)) (the spliced SAE).
    `edit_fn=None` leaves the code alone: x itself, or decode(encode(x)) without the error term.
    rescale: give each x' the norm of its x (applied after the edit)."""
    shape = x.shape
    if x.ndim < 1 or shape[-1] != sae.d_in:
        raise SparsesteerError(f"activation width {tuple(shape)[-1:]} does not match the SAE's d_in={sae.d_in}")
    x_rd = x.reshape(-1, sae.d_in)
    compute = torch.promote_types(x.dtype, sae.dtype)
    if edit_fn is None:
        out = x_rd.to(compute) if keep_error else sae.reconstruct(x_rd.to(sae.dtype))
    else:
        step = max(1, _DENSE_BUDGET // sae.n_latents)
        parts = [_edit_rows(sae, x_rd[s : s + step], edit_fn, keep_error, compute) for s in range(0, len(x_rd), step)]
        out = torch.cat(parts) if parts else x_rd.to(compute)
    if rescale:
        out = _rescale(out, x_rd.to(out.dtype))
    return out.to(x.dtype).reshape(shape)


def _edit_rows(
    sae: SparseAutoencoder, x_rd: Tensor, edit_fn: CodeEdit, keep_error: bool, compute: torch.dtype
) -> Tensor:
    x_dev = x_rd.to(sae.device)
    f = sae.encode_dense(x_dev)
    f_new = edit_fn(f.clone())
    if not isinstance(f_new, Tensor) or f_new.shape != f.shape:
        got = tuple(f_new.shape) if isinstance(f_new, Tensor) else type(f_new).__name__
        raise SparsesteerError(f"the code edit returned {got}; expected dense codes of shape {tuple(f.shape)}")
    f_new = f_new.to(f.dtype)
    if not keep_error:
        return sae.decode(f_new, like=x_dev).to(x_rd.device, compute)
    delta = sae.decode(f_new - f, bias=False, like=x_dev)  # exactly 0 where the edit changed no latent
    return x_rd.to(compute) + delta.to(x_rd.device, compute)


def sae_edit(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    edit_fn: CodeEdit | None,
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
    rescale: bool = False,
    check_hook: bool = True,
) -> Intervention:
    """An intervention at `hook` that replaces the selected tokens' activations x by `apply_edit`:
    x + W_dec^T (edit_fn(f) - f) (error term kept), or decode(edit_fn(f)) (`keep_error=False`).

    The SAE must read `hook` (checked against the hook recorded in its metadata, when there is one);
    `check_hook=False` skips that check (for callers that ran their own check under --allow-mismatch)."""
    if not isinstance(sae, SparseAutoencoder):
        raise SparsesteerError(f"sae_edit(hook, sae, edit_fn): expected an SAE, got {type(sae).__name__}")
    name = str(HookPoint.parse(hook))
    trained_on = sae.metadata.get("hook")
    if check_hook and trained_on is not None and trained_on != name:
        raise SparsesteerError(f"the SAE was trained on {trained_on}, but the edit is at {name}")

    def fn(acts_btd: Tensor, positions_t: Tensor) -> Tensor:
        return apply_edit(sae, acts_btd, edit_fn, keep_error=keep_error, rescale=rescale)

    return Intervention(name, fn, tokens)


# ---------------------------------------------------------------------------- the common edits
def set_latents(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    latents: Latents,
    value: float,
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
) -> Intervention:
    """f_j := value for each latent j (active or not)."""
    check_finite(value=value)
    idx = latent_indices(sae, latents)

    def edit(f: Tensor) -> Tensor:
        f[:, idx.to(f.device)] = value
        return f

    return sae_edit(hook, sae, edit, tokens=tokens, keep_error=keep_error)


def add_latents(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    latents: Latents,
    strength: float,
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
) -> Intervention:
    """f_j += strength, i.e. x + strength * W_dec[j] for each latent j."""
    check_finite(strength=strength)
    idx = latent_indices(sae, latents)

    def edit(f: Tensor) -> Tensor:
        f[:, idx.to(f.device)] += strength
        return f

    return sae_edit(hook, sae, edit, tokens=tokens, keep_error=keep_error)


def scale_latents(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    latents: Latents | None,
    factor: float,
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
    rescale: bool = False,
) -> Intervention:
    """f_j *= factor for each latent j (`latents=None`: every latent, as VS2 does)."""
    check_finite(factor=factor)
    idx = None if latents is None else latent_indices(sae, latents)

    def edit(f: Tensor) -> Tensor:
        if idx is None:
            return f * factor
        f[:, idx.to(f.device)] *= factor
        return f

    return sae_edit(hook, sae, edit, tokens=tokens, keep_error=keep_error, rescale=rescale)


def zero_latents(
    hook: str | HookPoint,
    sae: SparseAutoencoder,
    latents: Latents,
    *,
    tokens: Tokens = "all",
    keep_error: bool = True,
) -> Intervention:
    """f_j := 0 for each latent j (suppression): x - f_j W_dec[j]."""
    return set_latents(hook, sae, latents, 0.0, tokens=tokens, keep_error=keep_error)


def reconstruct(hook: str | HookPoint, sae: SparseAutoencoder, *, tokens: Tokens = "all") -> Intervention:
    """The spliced SAE: x replaced by decode(encode(x)), the error term dropped (SAE_REC)."""
    return sae_edit(hook, sae, None, tokens=tokens, keep_error=False)
