"""The shared SAE base: parameters, decoding, the unit-norm decoder constraint, saving and loading.

Every variant stores W_enc [n_latents, d_in], b_enc [n_latents], W_dec [n_latents, d_in] and
b_dec [d_in] (the checkpoint format's names and shapes). A variant only decides how codes are
chosen (`_encode`) and which loss terms it adds (`forward`).

Per-row input normalisation (`metadata["row_norm"]`): some published SAEs (ViT-Prisma, SAELens with
normalize_activations layer_norm / constant_norm_rescale) normalise each input row by its own
statistics before encoding and undo it after decoding. That cannot be folded into the weights, so
`encode` applies it and `decode` undoes it with the statistics of the rows given as `like=`
(`reconstruct(x)` passes them); such an SAE refuses `decode` without `like`. Our own SAEs fold
their fixed input scale into the weights instead and have no row_norm.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..utils.errors import SparsesteerError
from . import kernels
from .config import ARCHITECTURES, SAEConfig

if TYPE_CHECKING:
    from .provenance import Provenance


class SparseCodes(NamedTuple):
    """Padded sparse codes: slot j of row b holds latent `indices[b, j]` with `values[b, j]`;
    slots with value 0 are padding (rows may have fewer than K active latents)."""

    values: Tensor
    """[..., K] activations of the selected latents."""
    indices: Tensor
    """[..., K] int64 latent indices."""

    def to_dense(self, n_latents: int) -> Tensor:
        """[..., n_latents] dense codes."""
        lead = self.values.shape[:-1]
        K = self.values.shape[-1]
        dense = kernels.to_dense(self.values.reshape(-1, K), self.indices.reshape(-1, K), n_latents)
        return dense.reshape(*lead, n_latents)

    def l0(self) -> Tensor:
        """[...] number of active (non-zero) latents per sample."""
        return (self.values != 0).sum(-1)


ROW_NORMS = {
    "layer_norm": "x_n = (x - mean(x)) / (std(x) + eps), std unbiased over the d_in features; x_hat = y * std(x) + mean(x)",
    "constant_norm_rescale": "x_n = x * sqrt(d_in) / ||x||; x_hat = y * ||x|| / sqrt(d_in)",
}
"""Per-row input normalisations (ViT-Prisma and SAELens `normalize_activations`), their rules in words."""


class ForwardOutput(NamedTuple):
    """What one training forward pass gives the trainer."""

    recon: Tensor
    """[B, d] reconstruction of the input."""
    codes: SparseCodes | None
    """The codes used for the reconstruction ([B, K]); None for relu, whose codes are dense."""
    fire_counts: Tensor
    """[n_latents] int64: on how many samples of the batch each latent was active."""
    l0: Tensor
    """Mean number of active latents per sample."""
    fvu: Tensor
    """Fraction of variance unexplained of the batch."""
    aux_loss: Tensor
    """AuxK loss (0 when no latent is dead or AuxK is off)."""
    sparsity_loss: Tensor
    """L1 penalty (relu) or 0."""
    matryoshka_fvu: Tensor
    """Mean FVU over the Matryoshka prefixes (0 when none)."""
    loss: Tensor
    """The architecture's own objective: fvu (or the Matryoshka mean) + aux_coeff * aux_loss +
    sparsity_loss. The trainer adds the weighted extra objectives of `sae/objectives.py` (PASS) to
    it; the total is logged as `loss`."""


_VARIANTS: dict[str, type[SparseAutoencoder]] = {}


class SparseAutoencoder(nn.Module):
    """Base class of every SAE variant. Build one with `build(cfg)` or `SparseAutoencoder.load(dir)`.

    Inputs may have leading dimensions ([..., d_in]); they are kept in the outputs.
    A variant declares its architecture name: `class TopKSAE(SparseAutoencoder, arch="topk")`.
    """

    arch: ClassVar[str]
    """The architecture name (one of `ARCHITECTURES`) this class implements."""
    trainable: ClassVar[bool] = True
    """False for inference-only variants (their `forward` raises)."""

    def __init_subclass__(cls, *, arch: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if arch is not None:
            if arch not in ARCHITECTURES:
                raise TypeError(f"{cls.__name__}: arch {arch!r} is not in ARCHITECTURES (sae/config.py::Arch)")
            cls.arch = arch
            _VARIANTS[arch] = cls

    metadata: dict[str, Any]
    """Saved in cfg.json: the provenance record (`provenance`), input normalisation, training summary."""

    @property
    def provenance(self) -> Provenance:
        """Model and revision, hook, tokens, width, dataset, split and classes of the training data."""
        from .provenance import Provenance

        return Provenance.from_metadata(self.metadata, d=self.d_in)

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not cfg.d_in or not cfg.n_latents:
            raise SparsesteerError("SAEConfig must be resolved (d_in and n_latents set); use cfg.resolved(d_in)")
        self.cfg = cfg
        n, d = cfg.n_latents, cfg.d_in
        W_dec = torch.empty(n, d, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(W_dec, a=math.sqrt(5))
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.clone())  # encoder starts as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        self.metadata = {}

    # ---------------------------------------------------------------- properties
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    # ---------------------------------------------------------------- encode / decode
    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):  # numpy has .shape and .reshape but no .to: say what to pass
            kind = f"{type(x).__module__}.{type(x).__name__}".removeprefix("builtins.")
            raise SparsesteerError(
                f"SAE input must be a torch.Tensor, got {kind}: pass a torch.Tensor (torch.from_numpy(x))"
            )
        if x.ndim < 1 or x.shape[-1] != self.d_in:
            raise SparsesteerError(
                f"activation width {tuple(x.shape)[-1:] or '()'} does not match the SAE's d_in={self.d_in} "
                f"(input shape {tuple(x.shape)})"
            )
        return x.reshape(-1, self.d_in).to(self.dtype)

    def _encode(
        self, x_bd: Tensor, *, dead_mask: Tensor | None = None, training: bool = False
    ) -> tuple[SparseCodes, SparseCodes | None]:
        """Codes of a flat batch (training rule when `training`, else the inference rule), plus
        AuxK codes over dead latents when `dead_mask` is given."""
        raise NotImplementedError

    @property
    def row_norm(self) -> dict[str, Any] | None:
        """The per-row input normalisation ({"kind": one of ROW_NORMS, "eps": ...}) or None."""
        return self.metadata.get("row_norm") or None

    def _normalise_rows(self, x_bd: Tensor) -> Tensor:
        rn = self.row_norm
        if rn is None:
            return x_bd
        if rn["kind"] == "layer_norm":
            x_c = x_bd - x_bd.mean(-1, keepdim=True)
            return x_c / (x_c.std(-1, keepdim=True) + float(rn.get("eps", 1e-5)))
        if rn["kind"] == "constant_norm_rescale":
            return x_bd * (math.sqrt(self.d_in) / x_bd.norm(dim=-1, keepdim=True))
        raise SparsesteerError(f"unknown row normalisation {rn['kind']!r}; known: {', '.join(ROW_NORMS)}")

    def _row_scale_shift(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """[rows, 1] scale and [rows, 1] shift (or None) that map the normalised space back to x."""
        x = self._check_input(like)
        if self.row_norm["kind"] == "layer_norm":  # type: ignore[index]
            mu = x.mean(-1, keepdim=True)
            return (x - mu).std(-1, keepdim=True), mu
        return x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in), None

    def encode(self, x: Tensor) -> SparseCodes:
        """Sparse codes of x ([..., d_in] -> values/indices [..., K]); inference rule."""
        x_bd = self._check_input(x)
        lead = x.shape[:-1]
        codes, _ = self._encode(self._normalise_rows(x_bd))
        K = codes.values.shape[-1]
        return SparseCodes(codes.values.reshape(*lead, K), codes.indices.reshape(*lead, K))

    def encode_dense(self, x: Tensor) -> Tensor:
        """Dense codes [..., n_latents] (convenient for analysis; not the fast path)."""
        return self.encode(x).to_dense(self.n_latents)

    def decode(self, codes: SparseCodes | Tensor, *, bias: bool = True, like: Tensor | None = None) -> Tensor:
        """Reconstruction from sparse codes ([..., K]) or dense codes ([..., n_latents]). `like`: the
        rows that were encoded (needed, and only used, when the SAE normalises each row; `bias=False`
        then gives the linear part, scale * W_dec^T codes, e.g. for the change an edit makes)."""
        if self.row_norm is not None and like is None:
            raise SparsesteerError(
                f"this SAE normalises each input row ({self.row_norm['kind']}): decoding needs the encoded rows "
                "(decode(codes, like=x) or reconstruct(x))"
            )
        if isinstance(codes, SparseCodes):
            lead = codes.values.shape[:-1]
            K = codes.values.shape[-1]
            rows = math.prod(lead)  # explicit: reshape(-1, 0) is ambiguous when no latent fires (K = 0)
            out = kernels.sparse_decode(codes.values.reshape(rows, K), codes.indices.reshape(rows, K), self.W_dec)
        else:
            if codes.shape[-1] != self.n_latents:
                raise SparsesteerError(f"dense codes have {codes.shape[-1]} latents, the SAE has {self.n_latents}")
            lead = codes.shape[:-1]
            out = codes.reshape(-1, self.n_latents).to(self.dtype) @ self.W_dec
        if bias:
            out = out + self.b_dec
        if self.row_norm is not None:
            scale, shift = self._row_scale_shift(like)  # type: ignore[arg-type]
            if scale.shape[0] != out.shape[0]:
                raise SparsesteerError(f"decode: like= has {scale.shape[0]} rows, the codes have {out.shape[0]}")
            out = out * scale
            if bias and shift is not None:
                out = out + shift
        return out.reshape(*lead, self.d_in)

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(encode(x)) (undoing the row normalisation of x, if the SAE has one)."""
        return self.decode(self.encode(x), like=x)

    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None) -> ForwardOutput:  # type: ignore[override]
        """Training objective on a flat batch [B, d_in]."""
        raise NotImplementedError

    # ---------------------------------------------------------------- decoder constraint
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.dtype).eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of each decoder row's gradient its component along the (unit) row, so that
        a step changes the direction, not the norm, before renormalisation."""
        g = self.W_dec.grad
        if g is None:
            return
        parallel_n = torch.linalg.vecdot(g, self.W_dec).unsqueeze(1)  # no [n, d] temporaries:
        g.addcmul_(parallel_n, self.W_dec, value=-1)  # two passes over [n, d] instead of four

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Fold a fixed input scale s (the SAE was trained on s * x) into the weights, so that the
        SAE takes raw x: W_enc <- s W_enc, b_dec <- b_dec / s, W_dec <- W_dec / s."""
        self.W_enc.mul_(scale)  # in place: the attributes stay Parameters
        self.b_dec.div_(scale)
        self.W_dec.div_(scale)
        self._fold_extra(scale)

    def _fold_extra(self, scale: float) -> None:
        """Variants with more scale-dependent state override this."""

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path, **metadata: Any) -> Path:
        """Write cfg.json + sae.safetensors (atomically, weights checksummed) to `path`."""
        from .formats import save_sae

        self.metadata.update(metadata)
        return save_sae(self, path)

    @classmethod
    def load(
        cls, path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> SparseAutoencoder:
        """Load an SAE in our layout or one of the published layouts `sae/formats/` reads (SAELens,
        sparsify, ViT-Prisma, dictionary_learning / sae-for-vlm, ViSAEBench) from a directory, a
        checkpoint file or the Hugging Face hub (`hf:REPO[/SUBFOLDER][@REVISION]`; the repo and commit
        go to metadata["source"]). Pickles are read tensors-only (weights_only=True) or refused."""
        from .formats import load_sae

        return load_sae(path, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"arch={self.cfg.arch}, d_in={self.d_in}, n_latents={self.n_latents}" + (
            f", k={self.cfg.k}" if self.cfg.uses_k else ""
        )
