"""SAE checkpoints: our format and readers for the layouts others publish, in one home.

`load_sae(path)` takes a directory, a checkpoint file inside one (when a folder holds several), or
`hf:REPO[/SUBFOLDER][@REVISION]`, recognises the layout and returns one of our SAEs that computes the
same codes and reconstructions as the library that wrote it (each module's docstring gives the
library's rule, its hook naming and the mapping; docs/formats.md sums them up):

    layout                 recognised by                                        module
    sparsesteer            cfg.json with format "sparsesteer-sae"               ours.py
    SAELens                sae_weights.safetensors, or cfg.json with d_sae      saelens.py
    sparsify               cfg.json + sae.safetensors                           sparsify.py
    ViT-Prisma             config.json with d_in and layer_subtype / ...        prisma.py
    dictionary_learning    config.json with trainer.dict_class + ae.pt          dictlearning.py
      (sae-for-vlm)
    ViSAEBench             config.json|yaml + sae.pt | model.safetensors        visaebench.py

Pickled weights (ViT-Prisma, dictionary_learning, ViSAEBench) are read with
torch.load(weights_only=True) only and refused when that fails; everything else is safetensors and
JSON. The imported SAE's hook (mapped to ours), tokens, model and its files' sha256 are its
provenance (`metadata`, `metadata["source"]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...utils import io
from ...utils.errors import SparsesteerError
from ..base import SparseAutoencoder
from . import dictlearning, prisma, visaebench
from .common import listing, read_pickle
from .hub import HF_PREFIX, download, parse_hub_spec
from .ours import ACTIVATION_RULES, FORMAT, FORMAT_VERSION, WEIGHTS, activation_rule, load_ours, save_sae
from .saelens import WEIGHTS as SAELENS_WEIGHTS
from .saelens import load_saelens
from .sparsify import load_sparsify

LAYOUTS = ("sparsesteer", "SAELens", "sparsify", "ViT-Prisma", "dictionary_learning (sae-for-vlm)", "ViSAEBench")


def _read(path: Path, file: Path | None, verify: bool) -> SparseAutoencoder:
    cfg_json = path / "cfg.json"
    if cfg_json.is_file():
        raw = io.read_json(cfg_json)
        if raw.get("format") == FORMAT:
            return load_ours(path, raw, verify=verify)
        if (path / SAELENS_WEIGHTS).is_file() or "d_sae" in raw:
            return load_saelens(path, raw)
        if (path / WEIGHTS).is_file():
            return load_sparsify(path, raw)
        raise SparsesteerError(
            f"{path}: cfg.json is there but no weights file: expected {WEIGHTS} (sparsesteer, sparsify) "
            f"or {SAELENS_WEIGHTS} (SAELens)"
        )
    if (path / "config.json").is_file():
        raw = io.read_json(path / "config.json")
        if dictlearning.is_dictlearning_config(raw):
            return dictlearning.load_dictlearning(path, file)
        if prisma.is_prisma_config(raw):
            return prisma.load_prisma(path, file)
    found = visaebench.find(path)
    if found:
        return visaebench.load_visaebench(path, *found)
    sub = dictlearning.trainer_dir(path)
    if sub is not None:
        return dictlearning.load_dictlearning(sub)
    pts = [file] if file is not None else prisma.checkpoints(path)
    if len(pts) == 1 and not any(path.glob("*.json")):
        obj = read_pickle(pts[0])  # a ViT-Prisma save_model file carries its cfg
        if isinstance(obj, dict) and isinstance(obj.get("cfg"), dict) and prisma.is_prisma_config(obj["cfg"]):
            return prisma.load_prisma(path, pts[0])
        raise SparsesteerError(
            f"{pts[0]} has no config beside or inside it, so its layout is unknown (layouts read: {', '.join(LAYOUTS)})"
        )
    raise SparsesteerError(
        f"{path} is not an SAE checkpoint in a recognised layout ({', '.join(LAYOUTS)}): it has no cfg.json or "
        f"config.json that one of them writes (found: {listing(path)})"
    )


def load_sae(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, verify: bool = True
) -> SparseAutoencoder:
    source: dict[str, Any] | None = None
    if isinstance(path, str) and path.startswith(HF_PREFIX):
        path, source = download(path)
    path = Path(path)
    file = None
    if path.is_file():
        path, file = path.parent, path
    if not path.is_dir():
        raise SparsesteerError(
            f"SAE directory not found: {path} (a hub SAE is given as hf:REPO[/SUBFOLDER][@REVISION])"
        )
    try:
        sae = _read(path, file, verify)
    except SparsesteerError as e:
        if source is not None:
            raise SparsesteerError(f"{source['spec']}: {e}") from None
        raise
    if source is not None:
        sae.metadata["source"] = {**(sae.metadata.get("source") or {}), **source}
    sae.eval()
    return sae.to(device=device, dtype=dtype) if dtype is not None else sae.to(device=device)


__all__ = [
    "ACTIVATION_RULES",
    "FORMAT",
    "FORMAT_VERSION",
    "HF_PREFIX",
    "LAYOUTS",
    "WEIGHTS",
    "activation_rule",
    "download",
    "load_sae",
    "parse_hub_spec",
    "save_sae",
]
