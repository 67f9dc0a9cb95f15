"""Our checkpoint format: a directory with `cfg.json` + `sae.safetensors`.

`sae.safetensors` holds W_enc [n, d], b_enc [n], W_dec [n, d], b_dec [d] (plus `threshold` for
batchtopk/jumprelu); `cfg.json` holds the SAEConfig fields at top level, the provenance (hook,
model, tokens, input normalisation, training summary; `source` for an imported SAE) and the sha256
of the weights file. The weights are written first and cfg.json last (both atomically), so a
directory whose cfg.json exists is complete, and a weights file that does not match its cfg.json is
caught.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ... import __version__
from ...utils import io
from ...utils.config import from_dict, to_dict
from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from ..config import SAEConfig
from .common import assign, read_safetensors

FORMAT = "sparsesteer-sae"
FORMAT_VERSION = 1
WEIGHTS = "sae.safetensors"

ACTIVATION_RULES = {
    "topk": "codes = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)); x_hat = W_dec^T codes + b_dec",
    "topk-abs": "codes = entries of W_enc (x - b_dec) + b_enc with the k largest |values|; x_hat = W_dec^T codes + b_dec",
    "batchtopk": "codes = ReLU(pre) * (pre > threshold), pre = W_enc (x - b_dec) + b_enc (top k*B over the batch in training)",
    "relu": "codes = ReLU(W_enc (x - b_dec) + b_enc); x_hat = W_dec^T codes + b_dec",
    "jumprelu": "codes = ReLU(pre) * (pre > threshold_j), pre = W_enc (x - b_dec) + b_enc",
}


def activation_rule(cfg: SAEConfig) -> str:
    return ACTIVATION_RULES["topk-abs" if cfg.arch == "topk" and cfg.select == "abs" else cfg.arch]


def save_sae(sae: SparseAutoencoder, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    with io.atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        digest = io.sha256_file(tmp)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **to_dict(sae.cfg),
        "activation_rule": activation_rule(sae.cfg),
        **sae.metadata,
        "weights_file": WEIGHTS,
        "weights_sha256": digest,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "sparsesteer_version": __version__,
    }
    io.write_json(path / "cfg.json", cfg)
    return path


def load_ours(path: Path, raw: dict[str, Any], *, verify: bool) -> SparseAutoencoder:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise SparsesteerError(f"{path}/cfg.json has format_version {version}; this sparsesteer reads {FORMAT_VERSION}")
    fields = {f.name for f in dataclasses.fields(SAEConfig)}
    cfg = from_dict(SAEConfig, {k: v for k, v in raw.items() if k in fields}, where=f"{path}/cfg.json")
    file = path / raw.get("weights_file", WEIGHTS)
    if not file.is_file():
        raise SparsesteerError(f"{path} is missing its weights file {file.name}")
    if verify and raw.get("weights_sha256") and io.sha256_file(file) != raw["weights_sha256"]:
        raise SparsesteerError(
            f"{file}: checksum does not match cfg.json (weights_sha256): the file is corrupted or belongs to "
            "another checkpoint"
        )
    sae = assign(cfg, read_safetensors(file), file)
    reserved = fields | {
        "format",
        "format_version",
        "activation_rule",
        "weights_file",
        "weights_sha256",
        "dtype",
        "sparsesteer_version",
    }
    sae.metadata = {k: v for k, v in raw.items() if k not in reserved}
    return sae


__all__ = ["ACTIVATION_RULES", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "activation_rule", "load_ours", "save_sae"]
