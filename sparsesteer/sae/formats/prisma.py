"""ViT-Prisma (Prisma-Multimodal / soniajoseph; the CLIP and DINO SAE suites on the hub).

Layout (vit_prisma/sae/train_sae.py, sae.py): a directory with `config.json`, the
VisionModelSAERunnerConfig fields (d_in, expansion_factor, architecture, activation_fn_str,
activation_fn_kwargs, normalize_activations, hook_point_layer, layer_subtype, model_name,
cls_token_only, use_patches_only, is_transcoder, ...), and a torch.save checkpoint: `n_images_<N>.pt`
or `weights.pt`, written by `save_model` as {"cfg": <config object>, "state_dict": {...}} or as a bare
state dict (`*_log_feature_sparsity.pt` beside it is not an SAE). When the file carries its cfg,
ViT-Prisma uses that cfg rather than config.json; so do we. A cfg stored as a Python object cannot be
read tensors-only and is refused (re-save the state dict). Point at the file when a folder holds
several checkpoints.

Tensors: standard W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d]; gated adds b_gate, r_mag, b_mag.
Rule: x_n = norm_in(x) (normalize_activations layer_norm | constant_norm_rescale, anything else the
identity; an absent rule field takes the library's default, RULE_DEFAULTS); pre = (x_n - b_dec) @ W_enc + b_enc; relu: ReLU(pre); topk (activation_fn_kwargs.k): the k
largest pre, ReLU'd; gated: [ (x_n - b_dec) @ W_enc + b_gate > 0 ] * ReLU((x_n - b_dec) @ (W_enc *
exp(r_mag)) + b_mag) = a JumpReLU (common.gated_as_jumprelu); x_hat = norm_out(acts @ W_dec + b_dec).
Hooks: HookedViT names `blocks.{hook_point_layer}.{layer_subtype}` (TransformerLens style, block
offset 0: blocks.9.hook_resid_post = transformers hidden_states[10] = our blocks.9.resid_post); the
model `open-clip:ORG/NAME` is the hub repo ORG/NAME.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...utils import io
from ...utils.errors import SparsesteerError
from ..base import ROW_NORMS, SparseAutoencoder
from ..config import SAEConfig
from .common import build_sae, gated_as_jumprelu, listing, read_pickle, require, source_record, tensor_dict
from .hooks import from_transformerlens

CONFIG = "config.json"
RULE_DEFAULTS = {"architecture": "standard", "activation_fn_str": "topk", "normalize_activations": "layer_norm"}
"""VisionModelSAERunnerConfig's defaults for the fields that change the encoding: ViT-Prisma's
`load_config` fills an absent field with them, so we do too (and record which). Absent provenance
fields (hook_point_layer, layer_subtype, model_name) are left unknown rather than defaulted."""
CONFIG_KEYS = ("layer_subtype", "hook_point_layer", "activation_fn_str")
"""config.json keys that mark a ViT-Prisma SAE config (VisionModelSAERunnerConfig)."""


def is_prisma_config(raw: dict[str, Any]) -> bool:
    return "d_in" in raw and any(k in raw for k in CONFIG_KEYS)


def checkpoints(path: Path) -> list[Path]:
    """The SAE checkpoints (`*.pt`, not `*_log_feature_sparsity.pt`) in `path`."""
    return sorted(p for p in path.glob("*.pt") if not p.name.endswith("_log_feature_sparsity.pt"))


def weights_file(path: Path) -> Path:
    """The one SAE checkpoint in `path`."""
    found = checkpoints(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SparsesteerError(f"{path}: a ViT-Prisma config.json but no checkpoint (*.pt) (found: {listing(path)})")
    raise SparsesteerError(
        f"{path} holds several ViT-Prisma checkpoints ({', '.join(p.name for p in found)}): give the file "
        "itself as --sae"
    )


def load_prisma(path: Path, file: Path | None = None) -> SparseAutoencoder:
    file = file or weights_file(path)
    obj = read_pickle(file)
    if isinstance(obj, dict) and isinstance(obj.get("cfg"), dict) and "state_dict" in obj:
        raw, where = obj["cfg"], file
    elif (path / CONFIG).is_file():
        raw, where = io.read_json(path / CONFIG), path / CONFIG
    else:
        raise SparsesteerError(f"{file}: a ViT-Prisma checkpoint without its config ({CONFIG} not found beside it)")
    tensors = tensor_dict(obj, file, key="state_dict")
    if raw.get("is_transcoder"):
        raise SparsesteerError(f"{where}: ViT-Prisma transcoders are not supported (only SAEs)")
    d_in = int(require(raw, "d_in", where))
    W_enc, W_dec = require(tensors, "W_enc", file), require(tensors, "W_dec", file)
    n = W_dec.shape[0]
    if raw.get("expansion_factor") and int(raw["expansion_factor"]) * d_in != n:
        raise SparsesteerError(
            f"{file}: W_dec has {n} latents but {where} says d_in * expansion_factor = "
            f"{d_in} * {raw['expansion_factor']}"
        )
    defaulted = sorted(k for k in RULE_DEFAULTS if k not in raw)
    rule = {k: raw.get(k, v) for k, v in RULE_DEFAULTS.items()}
    arch, act = rule["architecture"], rule["activation_fn_str"]
    kwargs = raw.get("activation_fn_kwargs") or {}
    common = {"W_dec": W_dec, "b_dec": require(tensors, "b_dec", file), "where": file}
    if arch == "standard":
        if act == "relu":
            cfg = SAEConfig(arch="relu", d_in=d_in, n_latents=n, normalize_decoder=False)
        elif act == "topk":
            cfg = SAEConfig(
                arch="topk", d_in=d_in, n_latents=n, k=int(require(kwargs, "k", where)), normalize_decoder=False
            )
        else:
            raise SparsesteerError(f"{where}: activation_fn_str {act!r} is not supported (relu, topk)")
        sae = build_sae(cfg, W_enc=W_enc.t(), b_enc=require(tensors, "b_enc", file), **common)
    elif arch == "gated":
        if act != "relu":
            raise SparsesteerError(f"{where}: a gated SAE with activation {act!r} is not supported (relu only)")
        w, b, thr = gated_as_jumprelu(W_enc.t(), *(require(tensors, k, file) for k in ("r_mag", "b_gate", "b_mag")))
        cfg = SAEConfig(arch="jumprelu", d_in=d_in, n_latents=n, normalize_decoder=False)
        sae = build_sae(cfg, W_enc=w, b_enc=b, threshold=thr, **common)
    else:
        raise SparsesteerError(f"{where}: ViT-Prisma architecture {arch!r} is not supported (standard, gated)")
    layer = raw.get("hook_point_layer")
    layer = layer[0] if isinstance(layer, list) and len(layer) == 1 else layer
    subtype = raw.get("layer_subtype")
    hook = f"blocks.{layer}.{subtype}" if isinstance(layer, int) and subtype else None
    model = raw.get("model_name")
    tokens = "cls" if raw.get("cls_token_only") else "patch" if raw.get("use_patches_only") else "all"
    sae.metadata = {
        "hook": from_transformerlens(hook),
        "tokens": tokens,
        "model": {"id": model.removeprefix("open-clip:") if isinstance(model, str) else None},
        "source": source_record(
            "vit-prisma",
            path,
            [f for f in (path / CONFIG, file) if f.is_file()],
            raw,
            hook=hook,
            model=model,
            defaults_applied={k: RULE_DEFAULTS[k] for k in defaulted},
        ),
    }
    norm = rule["normalize_activations"]
    if norm in ROW_NORMS:
        sae.metadata["row_norm"] = {"kind": norm, "eps": 1e-5, "rule": ROW_NORMS[norm]}
    return sae
