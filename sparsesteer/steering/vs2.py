"""VS2 (Chatzoudis et al. 2025, "Visual Sparse Steering") and its SAE-reconstruction baselines.

All act on final-layer CLS vectors x (the output of the last encoder block, before the CLIP head):

    c     = encode(x)
    v     = decode(gamma * c) - decode(c) = (gamma - 1) W_dec^T c        (the decoder bias cancels)
    x_hat = (x + lam * v) * ||x|| / ||x + lam * v||                       (norm-preserving rescale)

Since v is linear in (gamma - 1), x_hat depends on lam and gamma only through lam * (gamma - 1): a
(lam, gamma) grid has iso-accuracy curves along that product. The rescale cannot change a CLIP
prediction (post-layernorm is scale-invariant up to its epsilon); it matters when the steered
vector goes through more blocks (multi-layer steering).

Baselines: SAE_REC^F replaces x by decode(encode(x)); SAE_REC^{F+gamma} by decode(gamma * c).
The FVU gate steers only samples the SAE reconstructs well: per-sample
FVU(x) = ||x - x_tilde||^2 / ||x - mu||^2 <= tau, tau a quantile of FVU on unlabeled train data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..models.hook_names import final_resid, hook_name
from ..sae.base import SparseAutoencoder, SparseCodes
from ..utils.errors import SparsesteerError
from .edits import check_finite, check_finite_result
from .tuning import DEFAULT_GAMMAS, DEFAULT_LAMS, GridSearch, grid_search

if TYPE_CHECKING:
    from .classify import CLSClassifier

_CHUNK = 8192


def check_model_for_cls(model_id: str, arch: str) -> None:
    """VS2 steers the final-layer CLS and scores it by zero-shot through the model's head and text
    tower: a CLIP model. Checked before the SAE, so that an SAE is never blamed for the model family."""
    if arch != "clip":
        why = "has no CLS token (it pools every token with an attention head)"
        why = why if arch == "siglip" else "has no text tower"
        raise SparsesteerError(
            f"VS2 steers the final-layer CLS and scores it by zero-shot through the CLIP head: {model_id!r} ({arch}) "
            f"{why}; use a CLIP model"
        )


def check_sae_for_cls(
    sae: SparseAutoencoder, d_model: int, n_blocks: int | None = None, *, block: int | None = None
) -> None:
    """The SAE must read the final-layer CLS (or `block`'s CLS) of this model."""
    if sae.d_in != d_model:
        raise SparsesteerError(f"the SAE has d_in={sae.d_in} but the model's CLS has width {d_model}")
    hook = sae.metadata.get("hook")
    if hook is not None and n_blocks is not None:
        want = final_resid(n_blocks) if block is None else hook_name(block)
        if hook != want:
            raise SparsesteerError(f"the SAE was trained on {hook}, but steering needs an SAE on {want} (CLS)")
    tokens = sae.metadata.get("tokens")
    if tokens not in (None, "cls"):
        raise SparsesteerError(
            f"the SAE was trained on {tokens!r} tokens; VS2 steers the CLS token (train on --tokens cls)"
        )


@torch.no_grad()
def _chunked(fn, x_bd: Tensor) -> Tensor:
    return (
        torch.cat([fn(x_bd[s : s + _CHUNK]) for s in range(0, x_bd.shape[0], _CHUNK)])
        if x_bd.shape[0]
        else x_bd.clone()
    )


def codes(sae: SparseAutoencoder, x_bd: Tensor) -> SparseCodes:
    """Sparse codes of many vectors, in chunks."""
    parts = [sae.encode(x_bd[s : s + _CHUNK].to(sae.device)) for s in range(0, x_bd.shape[0], _CHUNK)]
    K = max(p.values.shape[1] for p in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, K - t.shape[1]))  # noqa: E731 - padding slots have value 0
    return SparseCodes(torch.cat([pad(p.values) for p in parts]), torch.cat([pad(p.indices) for p in parts]))


def sae_direction(sae: SparseAutoencoder, x_bd: Tensor) -> Tensor:
    """u = W_dec^T encode(x): the SAE's reconstruction without its bias. VS2's v = (gamma - 1) u."""

    def u(x: Tensor) -> Tensor:
        x_dev = x.to(sae.device)
        return sae.decode(sae.encode(x_dev), bias=False, like=x_dev).to(x.dtype).to(x.device)

    return _chunked(u, x_bd)


def steer(x_bd: Tensor, v_bd: Tensor, lam: float, *, rescale: bool = True, what: str | None = None) -> Tensor:
    """x + lam * v, rescaled to the norm of x when `rescale`. A result (or norm) that overflows is refused,
    naming `what` (default: the lam): an infinite norm would otherwise rescale the vector to 0 silently."""
    check_finite(lam=lam)
    what = what or f"steering with lam = {lam:g}"
    z = check_finite_result(x_bd + lam * v_bd, what, before=x_bd)
    if rescale:
        z = z * (
            x_bd.norm(dim=-1, keepdim=True) / check_finite_result(z.norm(dim=-1, keepdim=True), what).clamp_min(1e-12)
        )
    return z


def vs2(
    sae: SparseAutoencoder,
    x_bd: Tensor,
    lam: float,
    gamma: float,
    *,
    rescale: bool = True,
    mask_b: Tensor | None = None,
    u_bd: Tensor | None = None,
) -> Tensor:
    """VS2-steered vectors. `mask_b` (bool) restricts steering to some samples (FVU gate);
    `u_bd` reuses a precomputed `sae_direction` (it does not depend on lam or gamma)."""
    check_finite(lam=lam, gamma=gamma)
    u = sae_direction(sae, x_bd) if u_bd is None else u_bd
    out = steer(x_bd, (gamma - 1.0) * u, lam, rescale=rescale, what=f"VS2 with lam = {lam:g}, gamma = {gamma:g}")
    if mask_b is not None:
        out = torch.where(mask_b[:, None], out, x_bd)
    return out


def tune_vs2(
    classifier: CLSClassifier,
    sae: SparseAutoencoder,
    x_val_bd: Tensor,
    labels_val_b: Tensor,
    lams: Sequence[float] = DEFAULT_LAMS,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    *,
    rescale: bool = True,
    split: str = "validation split of train",
) -> GridSearch:
    """Validation accuracy of VS2 over a (lam, gamma) grid. The SAE direction is computed once; each
    grid point is one steer + head pass over the validation vectors. `labels_val_b` (true labels of
    the validation items, train labels) are used only to score."""
    if x_val_bd.ndim != 2 or x_val_bd.shape[0] != len(labels_val_b):
        raise SparsesteerError(
            f"validation CLS vectors have shape {tuple(x_val_bd.shape)} but there are {len(labels_val_b)} labels"
        )
    u_bd = sae_direction(sae, x_val_bd)

    def score(lam: float, gamma: float) -> float:
        return classifier.accuracy(vs2(sae, x_val_bd, lam, gamma, u_bd=u_bd, rescale=rescale), labels_val_b)

    return grid_search(score, lams, gammas, split=split, n=len(labels_val_b))


def sae_rec(sae: SparseAutoencoder, x_bd: Tensor, gamma: float = 1.0) -> Tensor:
    """decode(gamma * encode(x)): SAE_REC^F for gamma = 1, SAE_REC^{F+gamma} otherwise."""
    check_finite(gamma=gamma)

    def rec(x: Tensor) -> Tensor:
        x_dev = x.to(sae.device)
        c = sae.encode(x_dev)
        return sae.decode(SparseCodes(gamma * c.values, c.indices), like=x_dev).to(x.dtype).to(x.device)

    return _chunked(rec, x_bd)


def per_sample_fvu(sae: SparseAutoencoder, x_bd: Tensor, mean_d: Tensor) -> Tensor:
    """||x - x_tilde||^2 / ||x - mu||^2 per sample."""

    def f(x: Tensor) -> Tensor:
        rec = sae.reconstruct(x.to(sae.device)).to(x.device, x.dtype)
        return (x - rec).pow(2).sum(-1) / (x - mean_d.to(x)).pow(2).sum(-1).clamp_min(1e-12)

    return _chunked(f, x_bd)


@dataclass(frozen=True)
class FVUGate:
    """Steer only samples whose per-sample FVU is at most `tau` (learned on unlabeled train data)."""

    mean: Tensor
    """[d] mean of the train vectors (mu in the FVU denominator)."""
    tau: float
    """FVU threshold: the `quantile` of per-sample FVU on the train vectors."""
    quantile: float
    """The quantile q that produced tau (e.g. 0.95)."""

    @classmethod
    def fit(cls, sae: SparseAutoencoder, train_bd: Tensor, quantile: float) -> FVUGate:
        if not 0 < quantile <= 1:
            raise SparsesteerError(f"FVU gate quantile must be in (0, 1], got {quantile}")
        if train_bd.shape[0] == 0:
            raise SparsesteerError("cannot fit the FVU gate on an empty train set")
        mean = train_bd.double().mean(0).to(train_bd.dtype)
        fvu = per_sample_fvu(sae, train_bd, mean)
        return cls(mean=mean, tau=float(torch.quantile(fvu.double(), quantile)), quantile=quantile)

    def mask(self, sae: SparseAutoencoder, x_bd: Tensor) -> Tensor:
        """[B] bool: which samples to steer."""
        return per_sample_fvu(sae, x_bd, self.mean) <= self.tau
