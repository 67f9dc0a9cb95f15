"""What every reader shares: reading safetensors and tensors-only pickles, and building one of our
SAEs from a foreign SAE's tensors with its encoding rule mapped exactly.

Our rule is pre = W_enc (x - b_dec) + b_enc; codes by arch; x_hat = W_dec^T codes + b_dec
(W_enc, W_dec [n, d]). A library that does not subtract b_dec before encoding (pre = W x + b) is the
same map with b_enc' = b + W b_dec. A fixed input normalisation x_n = (x - m) / s (ViSAEBench) is
folded into the weights: W_enc' = W_enc / s, b_dec' = m + s b_dec, W_dec' = s W_dec. A per-row
normalisation cannot be folded; it is kept as `metadata["row_norm"]` (base.py applies it). The
arithmetic runs in float64 and the SAE is float32.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...utils import io
from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from ..config import SAEConfig

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
_TORCH_ZIP = b"PK\x03\x04"  # torch.save since torch 1.6: a zip archive of pickles
_TORCH_LEGACY = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # older torch.save: its pickled magic number first


def listing(path: Path, limit: int = 40) -> str:
    """The files under `path` (relative), for error messages."""
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    if not files:
        return "nothing"
    return ", ".join(files[:limit]) + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")


def require(mapping: dict[str, Any], key: str, where: Path | str) -> Any:
    """mapping[key], or an error saying that `where` lacks it."""
    if key not in mapping:
        raise SparsesteerError(f"{where} has no {key!r} (found: {', '.join(map(str, mapping)) or 'nothing'})")
    return mapping[key]


def safetensors_header(file: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file, or None when `file` does not parse as one: 8 bytes of
    little-endian length N, then N bytes (within the file) of a JSON object. Formats are told apart
    by parsing, never by a leading byte: 0x80 opens a pickle, but also the header of a safetensors
    file whose header is 128, 384, ... bytes long (1 in 32 of those safetensors writes, which pads
    headers to 8 bytes)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or not 2 <= n <= min(_MAX_HEADER, size - 8):
                return None
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def file_kind(file: Path) -> Literal["safetensors", "pickle", "unknown"]:
    """What `file` holds, by parsing: a safetensors header that parses is safetensors (whatever its
    first byte); otherwise a torch.save file (zip archive, or the legacy format's magic number) or a
    whole pickle of protocol 2-5 (opcode PROTO first, STOP last) is a pickle; anything else is
    unknown (e.g. a truncated file)."""
    if safetensors_header(file) is not None:
        return "safetensors"
    try:
        with open(file, "rb") as f:
            head = f.read(len(_TORCH_LEGACY))
            f.seek(-1, 2)
            last = f.read(1)
    except OSError:
        return "unknown"
    bare = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and last == b"."
    return "pickle" if head.startswith((_TORCH_ZIP, _TORCH_LEGACY)) or bare else "unknown"


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; a pickle in its place is refused, never unpickled."""
    if not file.is_file():
        raise SparsesteerError(f"missing weights file: {file}")
    kind = file_kind(file)
    if kind == "pickle":
        raise SparsesteerError(
            f"{file} is a pickle (torch.save) file, not safetensors: refusing to unpickle a file that the layout "
            "says holds safetensors"
        )
    if kind != "safetensors":
        raise SparsesteerError(
            f"cannot read {file} as safetensors (corrupted or truncated?): it does not start with a safetensors "
            "header (8-byte length, then that many bytes of JSON)"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise SparsesteerError(f"cannot read {file} as safetensors (corrupted or truncated?): {e}") from None


def read_pickle(file: Path) -> Any:
    """A torch.save file whose layout requires it, read tensors-only (`weights_only=True`); anything
    that needs other objects to unpickle is refused, never executed. A file that parses as
    safetensors is read as safetensors, whatever its name."""
    if not file.is_file():
        raise SparsesteerError(f"missing weights file: {file}")
    if file_kind(file) == "safetensors":
        return read_safetensors(file)
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SparsesteerError(
            f"{file} is not a tensors-only pickle, and sparsesteer reads pickled checkpoints only with "
            f"torch.load(weights_only=True), never unpickling other objects ({first}). Re-save its tensors in an "
            "environment you trust (e.g. torch.save(obj['state_dict'], ...) or safetensors), or use the library "
            "that wrote it"
        ) from None


def tensor_dict(obj: Any, where: Path | str, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """`obj` (or obj[key]) as a flat name -> tensor mapping; anything else is refused by name."""
    if key is not None and isinstance(obj, dict) and key in obj:
        obj = obj[key]
    if not isinstance(obj, dict):
        raise SparsesteerError(f"{where}: expected a mapping of tensor names to tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SparsesteerError(f"{where}: entries that are not tensors: {', '.join(bad[:10])}")
    return dict(obj)


def build_sae(
    cfg: SAEConfig,
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None,
    where: Path,
    subtract_b_dec: bool = True,
    threshold: torch.Tensor | None = None,
    input_affine: tuple[torch.Tensor, float] | None = None,
) -> SparseAutoencoder:
    """One of our SAEs computing the same codes and reconstructions as the foreign rule described by
    the arguments (W_enc, W_dec [n, d]; see the module docstring for the folds)."""
    n, d = cfg.n_latents, cfg.d_in
    shapes = {"W_enc": (W_enc, (n, d)), "b_enc": (b_enc, (n,)), "W_dec": (W_dec, (n, d))}
    if b_dec is not None:
        shapes["b_dec"] = (b_dec, (d,))
    for name, (t, want) in shapes.items():
        if tuple(t.shape) != want:
            raise SparsesteerError(
                f"{where}: {name} has shape {tuple(t.shape)}, expected {want} for d_in={d}, n_latents={n}"
            )
    f64 = torch.float64
    W_enc, b_enc, W_dec = W_enc.to(f64), b_enc.to(f64), W_dec.to(f64)
    b_dec = torch.zeros(d, dtype=f64) if b_dec is None else b_dec.to(f64)
    if not subtract_b_dec:
        b_enc = b_enc + W_enc @ b_dec
    if input_affine is not None:
        mean, std = input_affine
        W_enc, W_dec, b_dec = W_enc / std, W_dec * std, mean.to(f64) + std * b_dec
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        tensors["threshold"] = threshold.to(f64)
    return assign(cfg, tensors, where)


def assign(cfg: SAEConfig, tensors: dict[str, torch.Tensor], where: Path) -> SparseAutoencoder:
    """A fresh SAE of `cfg` holding exactly `tensors` (names, shapes checked)."""
    from .. import build

    sae = build(cfg)
    expected = sae.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise SparsesteerError(f"{where}: missing tensor(s) {', '.join(missing)}")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise SparsesteerError(f"{where}: unexpected tensor(s) {', '.join(extra)} for arch {cfg.arch!r}")
    for name, t in tensors.items():
        want = tuple(expected[name].shape)
        if name == "threshold" and t.ndim == 0:
            t = t.reshape(want) if want == () else t.expand(want).clone()
            tensors[name] = t
        if tuple(t.shape) != want:
            raise SparsesteerError(
                f"{where}: tensor {name} has shape {tuple(t.shape)}, expected {want} for d_in={cfg.d_in}, "
                f"n_latents={cfg.n_latents}"
            )
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t.to(expected[name].dtype))
    return sae


def source_record(fmt: str, path: Path, files: list[Path], cfg: Any, **extra: Any) -> dict[str, Any]:
    """metadata["source"] of an imported SAE: its layout, directory, files with their sha256, config."""
    return {
        "format": fmt,
        "path": str(path),
        "files": {str(f.relative_to(path)) if f.is_relative_to(path) else str(f): io.sha256_file(f) for f in files},
        "cfg": cfg,
        **extra,
    }


def gated_as_jumprelu(
    W: torch.Tensor, r_mag: torch.Tensor, b_gate: torch.Tensor, b_mag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A gated SAE (Rajamanoharan et al. 2024) as the JumpReLU it equals: with u = W (x - b_dec),
    f = [u + b_gate > 0] * ReLU(exp(r_mag) u + b_mag). Since exp(r_mag) > 0, u + b_gate > 0 iff
    pre = exp(r_mag) u + b_mag > b_mag - exp(r_mag) b_gate, so f = ReLU(pre) * (pre > threshold)
    with W_enc = exp(r_mag) W, b_enc = b_mag, threshold = b_mag - exp(r_mag) b_gate. W is [n, d];
    returns (W_enc [n, d], b_enc, threshold), float64."""
    scale = r_mag.to(torch.float64).exp()
    b_mag = b_mag.to(torch.float64)
    return W.to(torch.float64) * scale[:, None], b_mag, b_mag - scale * b_gate.to(torch.float64)
