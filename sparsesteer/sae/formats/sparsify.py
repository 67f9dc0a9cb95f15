"""sparsify (EleutherAI): `cfg.json` (d_in, num_latents | expansion_factor, k, activation, ...) +
`sae.safetensors` (encoder.weight [n, d], encoder.bias [n], W_dec [n, d], b_dec [d]).

Rule (sparsify `Sae.encode`): pre = ReLU(encoder(x - b_dec)); keep the k largest; x_hat =
acts @ W_dec + b_dec: our topk. sparsify records no hook (the directory is named after the hook)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from ..config import SAEConfig
from .common import build_sae, read_safetensors, require, source_record

WEIGHTS = "sae.safetensors"


def load_sparsify(path: Path, raw: dict[str, Any]) -> SparseAutoencoder:
    where = path / "cfg.json"
    d_in = int(require(raw, "d_in", where))
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise SparsesteerError(f"{where}: sparsify activation {activation!r} is not supported (only topk)")
    if raw.get("transcode"):
        raise SparsesteerError(f"{where}: sparsify transcoders are not supported (only autoencoders)")
    file = path / WEIGHTS
    tensors = read_safetensors(file)
    if "encoder.weight" not in tensors:
        raise SparsesteerError(f"{file}: no 'encoder.weight': not a sparsify SAE")
    if "W_skip" in tensors and bool(tensors["W_skip"].any()):
        raise SparsesteerError(f"{where}: sparsify skip connections are not supported")
    n = (
        int(raw.get("num_latents") or 0)
        or d_in * int(raw.get("expansion_factor", 0) or 0)
        or tensors["encoder.weight"].shape[0]
    )
    cfg = SAEConfig(
        arch="topk",
        d_in=d_in,
        n_latents=n,
        k=int(require(raw, "k", where)),
        normalize_decoder=bool(raw.get("normalize_decoder", True)),
    )
    sae = build_sae(
        cfg,
        W_enc=tensors["encoder.weight"],
        b_enc=require(tensors, "encoder.bias", file),
        W_dec=require(tensors, "W_dec", file),
        b_dec=require(tensors, "b_dec", file),
        where=file,
    )
    sae.metadata = {"source": source_record("sparsify", path, [where, file], raw)}
    return sae
