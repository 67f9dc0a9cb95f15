"""The `sparsesteer interpret` workflow: SAE + cache -> statistics directory (stats.py, store.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import SparsesteerError
from .config import InterpretConfig
from .stats import LatentStats

log = logging.getLogger(__name__)


def run_interpret(cfg: InterpretConfig) -> tuple[Path, LatentStats]:
    """Compute, save and return the statistics of `cfg.sae` over `cfg.activations`."""
    import torch

    from ..activations.cache import ActivationCache
    from ..sae.base import SparseAutoencoder
    from ..sae.provenance import Provenance, check_agree, rows_for
    from ..utils.device import resolve_device
    from .neighbours import decoder_neighbours
    from .stats import latent_stats
    from .store import sae_tensors_sha256, sae_weights_sha256, save_stats

    act_path = Path(cfg.activations)
    if not (act_path / "manifest.json").is_file():
        raise SparsesteerError(f"--activations {cfg.activations}: not an activation cache directory (no manifest.json)")
    device = resolve_device(cfg.device)
    sae = SparseAutoencoder.load(cfg.sae, device=device)
    cache = ActivationCache.open(act_path)
    view = rows_for(cache, sae.provenance, hook=cfg.hook, tokens=cfg.tokens)
    if view.d != sae.d_in:
        raise SparsesteerError(f"activation width {view.d} does not match the SAE's d_in={sae.d_in} ({cfg.sae})")
    data = Provenance.from_rows(view.describe())
    notes = check_agree(
        f"the SAE ({cfg.sae})", sae.provenance, f"the activations ({cfg.activations})", data, allow=cfg.allow_mismatch
    )
    stats = latent_stats(
        sae,
        view,
        top_n=cfg.top_n,
        n_bins=cfg.n_bins,
        hist_min=cfg.hist_min,
        hist_max=cfg.hist_max,
        batch_size=cfg.batch_size,
        max_images=cfg.max_images,
    )
    if cfg.neighbours:
        stats.neighbours = decoder_neighbours(sae.W_dec, k=min(cfg.neighbours, sae.n_latents - 1))
    s = cache.settings
    dataset = s.dataset or {}
    meta: dict[str, Any] = {
        "sae": {
            "path": str(Path(cfg.sae).resolve()),
            "weights_sha256": sae_weights_sha256(cfg.sae),
            "tensors_sha256": sae_tensors_sha256(sae),
            "arch": sae.cfg.arch,
            "k": sae.cfg.k if sae.cfg.uses_k else None,
        },
        "activations": {
            "path": str(act_path.resolve()),
            "settings_sha256": cache.settings_sha256,
            "hook": view.hook,
            "tokens": data.tokens if not isinstance(data.tokens, tuple) else list(data.tokens),
            "cls_position": s.cls_position,
            "model": s.model,
        },
        "dataset": {
            "spec": cfg.dataset or dataset.get("name"),
            "split": s.split,
            "cache_spec": dataset.get("name"),
            **({"subset": dataset["subset"]} if "subset" in dataset else {}),
        },
        "classes": list(s.classes) if s.classes is not None else None,
        "hist": {"min": cfg.hist_min, "max": cfg.hist_max, "n_bins": cfg.n_bins, "scale": "log10"},
    }
    if notes:
        meta["provenance_overridden"] = notes
    if cfg.vocab:
        from ..data.vocab import load_vocab
        from ..models.backbone import load_backbone
        from .lens import concept_lens

        model = cfg.model or (s.model or {}).get("id")
        if not model:
            raise SparsesteerError("--vocab: the cache records no model; pass --model")
        backbone = load_backbone(model, device=device)
        vocab = load_vocab(cfg.vocab)
        with torch.no_grad():
            stats.lens = concept_lens(sae, backbone, vocab, k=min(cfg.lens_k, len(vocab)), cache_dir=cfg.text_cache)
        meta["lens"] = {"vocab": vocab.describe(), "model": model, "template": "{}"}
    stats.meta = meta
    out = save_stats(stats, cfg.out)
    from ..utils.plots import frequency_histogram

    model = (s.model or {}).get("id") or "unknown model"
    frequency_histogram(
        out / "plots" / "frequency.png",
        stats.frequency,
        title=f"{model} {view.hook} {meta['activations']['tokens']}, {meta['dataset']['spec']} {s.split}",
    )
    if cfg.montages:
        from .heatmaps import stats_dataset, write_montages

        ds = stats_dataset(stats, data_root=cfg.data_root)
        order = np.argsort(-stats.fire_count, kind="stable")[: cfg.montages]
        names = write_montages(stats, order.tolist(), ds, out / "montages")
        log.info("wrote %d montages to %s", len(names), out / "montages")
    return out, stats
