"""SAELens: `cfg.json` (d_in, d_sae, architecture, apply_b_dec_to_input, normalize_activations, k /
activation_fn_kwargs, hook_name / model_name at top level or under `metadata`) +
`sae_weights.safetensors` (W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d], threshold [n] for
jumprelu).

Rule: x_n = norm_in(x); pre = (x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc; standard: ReLU;
topk: the k largest pre, ReLU'd; jumprelu: ReLU(pre) * (pre > threshold); x_hat = norm_out(acts @
W_dec + b_dec). normalize_activations: none; layer_norm and constant_norm_rescale are per-row
(base.ROW_NORMS, kept as row_norm). Hook names are TransformerLens' (`blocks.9.hook_resid_post`,
block offset 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils.errors import SparsesteerError
from ..base import ROW_NORMS, SparseAutoencoder
from ..config import SAEConfig
from .common import build_sae, read_safetensors, require, source_record
from .hooks import from_transformerlens

WEIGHTS = "sae_weights.safetensors"


def load_saelens(path: Path, raw: dict[str, Any]) -> SparseAutoencoder:
    where = path / "cfg.json"
    meta = raw.get("metadata") or {}
    d_in = int(require(raw, "d_in", where))
    n = int(require(raw, "d_sae", where))
    arch = raw.get("architecture") or ("topk" if raw.get("activation_fn_str") == "topk" else "standard")
    norm = raw.get("normalize_activations") or "none"
    if norm != "none" and norm not in ROW_NORMS:
        raise SparsesteerError(
            f"{where}: normalize_activations={norm!r} is not supported (none, {', '.join(ROW_NORMS)}); fold the "
            "scaling into the weights first"
        )
    file = path / WEIGHTS
    tensors = read_safetensors(file)
    threshold = None
    if arch == "standard":
        cfg = SAEConfig(arch="relu", d_in=d_in, n_latents=n, normalize_decoder=False)
    elif arch == "topk":
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise SparsesteerError(f"{where}: topk SAE without k")
        cfg = SAEConfig(arch="topk", d_in=d_in, n_latents=n, k=int(k), normalize_decoder=False)
    elif arch == "jumprelu":
        cfg = SAEConfig(arch="jumprelu", d_in=d_in, n_latents=n, normalize_decoder=False)
        threshold = require(tensors, "threshold", file)
    else:
        raise SparsesteerError(f"{where}: SAELens architecture {arch!r} is not supported (standard, topk, jumprelu)")
    W_enc = require(tensors, "W_enc", file)
    sae = build_sae(
        cfg,
        W_enc=W_enc.t(),  # SAELens stores [d_in, d_sae]
        b_enc=require(tensors, "b_enc", file),
        W_dec=require(tensors, "W_dec", file),
        b_dec=require(tensors, "b_dec", file),
        where=file,
        subtract_b_dec=bool(raw.get("apply_b_dec_to_input", True)),
        threshold=threshold,
    )
    hook = raw.get("hook_name") or meta.get("hook_name")
    sae.metadata = {
        "hook": from_transformerlens(hook),
        "model": {"id": raw.get("model_name") or meta.get("model_name")},
        "source": source_record("saelens", path, [where, file], raw, hook=hook),
    }
    if norm != "none":
        sae.metadata["row_norm"] = {"kind": norm, "eps": 1e-5, "rule": ROW_NORMS[norm]}
    return sae
