"""ViSAEBench (vraj130/visaebench; hub repos visaebench/<backbone>-saes, one subfolder per config,
e.g. batchtopk_16x_k128).

Layout (visaebench/hub/loader.py, sae_wrapper.py, docs/custom_models.md): `config.json` (or
`config.yaml`) with activation | sae_type | architecture ("topk", "batchtopk", "jumprelu"; default
topk), input_dim, hidden_dim, k, threshold, expansion_factor; weights `sae.pt` (torch.save state
dict, read tensors-only as ViSAEBench itself does), else `model.safetensors` or `model.pt`. Keys:
simple encoder.weight [h, d], encoder.bias [h], decoder.weight [h, d], decoder.bias [d] (optional);
or overcomplete's encoder.final_block.0.weight / .bias, dictionary._weights [h, d] and
dictionary.multiplier (decoder scaled by exp(multiplier) when non-zero; no decoder bias).

Rule: z = ReLU(x_n @ encoder.weight^T + encoder.bias) (no b_dec subtracted); topk: the k largest z;
batchtopk: z * (z >= threshold), threshold from the config, else the `_running_threshold` tensor,
else 0; jumprelu: z * (z > t_j), t from `jump_thresholds` | `thresholds`, else 0.01 for every
latent; x_hat_n = z @ decoder.weight + decoder.bias. Both threshold rules are our JumpReLU (the
`>=` is `>` the next float32 below). x_n = (x - mean) / std: ViSAEBench computes a per-dimension
mean and a scalar std over the activations it evaluates on and normalises the SAE's input with them;
they are not part of the checkpoint. We fold them into the weights from `norm_stats.pt`
({"mean": [d], "std": float}, ViSAEBench's own file, found in its activation cache) placed beside
the weights, and refuse the SAE without it rather than encode unnormalised rows.

Hook: ViSAEBench's `layer` L extracts transformers hidden_states[L + 1] (offset 0: our
blocks.L.resid_post; default 11), patch tokens only (CLS dropped). The config's `layer` is used when
present, else the hook is left unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...utils import io
from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from ..config import SAEConfig
from .common import build_sae, listing, read_pickle, read_safetensors, source_record, tensor_dict
from .hooks import block_hook

CONFIGS = ("config.json", "config.yaml", "config.yml")
WEIGHTS = ("sae.pt", "model.safetensors", "model.pt")
NORM_STATS = "norm_stats.pt"
BACKBONES = {"clip_vitb16": "openai/clip-vit-base-patch16", "dinov2_vitb14": "facebook/dinov2-base"}
"""ViSAEBench backbone names -> hub model ids (from its backbones/*.py); others are kept as named."""


def find(path: Path) -> tuple[Path, Path] | None:
    """(config, weights) when `path` looks like a ViSAEBench checkpoint folder."""
    cfg = next((path / c for c in CONFIGS if (path / c).is_file()), None)
    weights = next((path / w for w in WEIGHTS if (path / w).is_file()), None)
    return (cfg, weights) if cfg and weights else None


def read_config(file: Path) -> dict[str, Any]:
    if file.suffix == ".json":
        return io.read_json(file)
    import yaml

    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise SparsesteerError(f"cannot read {file} as YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SparsesteerError(f"{file}: expected a mapping of settings, got {type(raw).__name__}")
    return raw


def _weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return read_safetensors(file)
    return tensor_dict(read_pickle(file), file, key="state_dict")


def _norm_stats(path: Path, d: int) -> tuple[torch.Tensor, float]:
    file = path / NORM_STATS
    if not file.is_file():
        raise SparsesteerError(
            f"{path}: ViSAEBench normalises the SAE's input with the mean and std of the activations it evaluates "
            f"on, which the checkpoint does not include; put ViSAEBench's {NORM_STATS} for this backbone and layer "
            f"(from its activation cache, ~/.cache/visaebench/activations/<backbone>/layer_<L>/...) beside the "
            f"weights (found: {listing(path)})"
        )
    blob = read_pickle(file)
    if not (isinstance(blob, dict) and "mean" in blob and "std" in blob):
        raise SparsesteerError(f"{file}: expected {{'mean': tensor [{d}], 'std': number}}")
    mean = torch.as_tensor(blob["mean"], dtype=torch.float64).reshape(-1)
    std = float(blob["std"])
    if mean.shape != (d,) or not std > 0:
        raise SparsesteerError(f"{file}: mean has shape {tuple(mean.shape)} (expected ({d},)) and std {std} (> 0)")
    return mean, std


def load_visaebench(path: Path, cfg_file: Path, file: Path) -> SparseAutoencoder:
    raw = read_config(cfg_file)
    t = _weights(file)
    if "encoder.weight" in t:
        W_enc, b_enc, W_dec = t["encoder.weight"], t.get("encoder.bias"), t.get("decoder.weight")
        b_dec = t.get("decoder.bias")
    elif "encoder.final_block.0.weight" in t:
        W_enc, b_enc, W_dec = (
            t["encoder.final_block.0.weight"],
            t.get("encoder.final_block.0.bias"),
            t.get("dictionary._weights"),
        )
        b_dec = None
        mult = t.get("dictionary.multiplier")
        if W_dec is not None and mult is not None and float(mult) != 0.0:
            W_dec = W_dec.double() * mult.double().exp()
    else:
        raise SparsesteerError(
            f"{file}: no encoder.weight (ViSAEBench) or encoder.final_block.0.weight (overcomplete) "
            f"(found: {', '.join(t) or 'nothing'})"
        )
    if b_enc is None or W_dec is None:
        raise SparsesteerError(f"{file}: encoder bias or decoder weight missing (found: {', '.join(t)})")
    n, d = W_enc.shape
    for key, want in (("input_dim", d), ("hidden_dim", n)):
        if key in raw and int(raw[key]) != want:
            raise SparsesteerError(f"{cfg_file}: {key}={raw[key]} but {file} has encoder weight {tuple(W_enc.shape)}")
    act = str(raw.get("activation", raw.get("sae_type", raw.get("architecture", "topk")))).lower()
    threshold = None
    if act == "topk":
        if raw.get("k") is None:
            raise SparsesteerError(f"{cfg_file}: a topk SAE without k")
        cfg = SAEConfig(arch="topk", d_in=d, n_latents=n, k=int(raw["k"]), normalize_decoder=False)
    elif act in ("batchtopk", "jumprelu"):
        if act == "batchtopk":
            thr = raw.get("threshold")
            if thr is None:
                thr = float(t["_running_threshold"]) if "_running_threshold" in t else 0.0
            # z >= thr on float32 pre-activations is z > the next float32 below thr
            threshold = torch.nextafter(torch.tensor(float(thr)), torch.tensor(float("-inf"))).expand(n)
        else:
            jt = t.get("jump_thresholds", t.get("thresholds"))
            threshold = jt.float() if jt is not None else torch.full((n,), 0.01)
        cfg = SAEConfig(arch="jumprelu", d_in=d, n_latents=n, normalize_decoder=False)
    else:
        raise SparsesteerError(
            f"{cfg_file}: ViSAEBench activation {act!r} is not supported (topk, batchtopk, jumprelu)"
        )
    sae = build_sae(
        cfg,
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        where=file,
        subtract_b_dec=False,
        threshold=threshold,
        input_affine=_norm_stats(path, d),
    )
    layer = raw.get("layer")
    backbone = raw.get("backbone") or raw.get("backbone_name")
    if backbone is None:
        m = re.search(r"visaebench--(\w+?)-(vit\w+?)-saes", str(path))
        backbone = f"{m.group(1)}_{m.group(2)}" if m else None
    files = [cfg_file, file, path / NORM_STATS]
    sae.metadata = {
        "hook": block_hook(int(layer), "resid_post") if isinstance(layer, int) else None,
        "tokens": "patch",
        "model": {"id": BACKBONES.get(backbone, backbone) if backbone is not None else None},
        "source": source_record("visaebench", path, files, raw, activation=act, backbone=backbone, layer=layer),
    }
    return sae
