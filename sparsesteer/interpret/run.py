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


class StreamView:
    """Rows computed by the model (`activations.stream.ModelRows`, one hook) seen as the cache view
    that `latent_stats` reads: image-major rows, `row_index` = (image, token position) pairs, and
    the per-image labels and CLS position a cache records. Nothing is stored: memory stays
    independent of the number of images."""

    def __init__(self, rows: Any, cls_position: int | None, where: str):
        from types import SimpleNamespace

        self.rows, self.n_rows, self.d = rows, rows.n_rows, rows.d
        self.hook = rows.plan.hooks[0]
        self._positions = np.asarray(rows.plan.token_positions, dtype=np.int64)
        self.cache = SimpleNamespace(
            tokens_per_image=rows.tokens_per_image,
            settings=SimpleNamespace(cls_position=cls_position),
            labels=np.asarray(rows.dataset.labels(), dtype=np.int64),
            path=where,
        )

    def row_index(self, start: int, stop: int) -> np.ndarray:
        r = np.arange(start, stop, dtype=np.int64)
        t = len(self._positions)
        return np.stack([r // t, self._positions[r % t]], axis=1)

    def read(self, start: int, stop: int):
        return self.rows.read(start, stop)

    def describe(self) -> dict[str, Any]:
        d = self.rows.describe()
        return {**d, "hook": self.hook, "dataset": (d.get("dataset") or {}).get("name"), "path": None}


def _cache_source(cfg: InterpretConfig, sae: Any) -> tuple[Any, dict[str, Any], dict[str, Any], list | None]:
    """(view, meta["activations"], meta["dataset"], classes) of an activation cache."""
    from ..activations.cache import ActivationCache
    from ..sae.provenance import rows_for

    act_path = Path(cfg.activations)
    if not (act_path / "manifest.json").is_file():
        raise SparsesteerError(f"--activations {cfg.activations}: not an activation cache directory (no manifest.json)")
    cache = ActivationCache.open(act_path)
    view = rows_for(cache, sae.provenance, hook=cfg.hook, tokens=cfg.tokens)
    s = cache.settings
    dataset = s.dataset or {}
    tokens = view.describe().get("tokens")
    activations = {
        "path": str(act_path.resolve()),
        "settings_sha256": cache.settings_sha256,
        "hook": view.hook,
        "tokens": list(tokens) if isinstance(tokens, tuple) else tokens,
        "cls_position": s.cls_position,
        "model": s.model,
    }
    data = {
        "spec": cfg.dataset or dataset.get("name"),
        "split": s.split,
        "cache_spec": dataset.get("name"),
        **({"subset": dataset["subset"]} if "subset" in dataset else {}),
    }
    return view, activations, data, list(s.classes) if s.classes is not None else None


def _model_source(
    cfg: InterpretConfig, sae: Any, device: Any
) -> tuple[Any, dict[str, Any], dict[str, Any], list | None]:
    """The same for rows computed by `--model` on `--dataset` images while the pass runs."""
    from ..activations.produce import plan_hooks
    from ..activations.stream import ModelRows
    from ..data import limit_dataset, open_dataset
    from ..models import load_backbone

    hook = cfg.hook or sae.provenance.hook
    if not hook:
        raise SparsesteerError(f"{cfg.sae}: the SAE records no hook; pass --hook (e.g. blocks.11.resid_post)")
    tokens = cfg.tokens or (sae.provenance.tokens if isinstance(sae.provenance.tokens, str) else None) or "all"
    ds = limit_dataset(open_dataset(cfg.dataset, cfg.split, data_root=cfg.data_root), cfg.limit, 0)
    backbone = load_backbone(cfg.model, device=device)
    rows = ModelRows(backbone, ds, [hook], tokens, split=cfg.split, image_batch_size=cfg.image_batch_size)
    cls_position = plan_hooks(backbone, [hook], tokens).cls_position
    where = f"{cfg.model} {rows.plan.hooks[0]} on {cfg.dataset} [{cfg.split}]"
    desc = ds.describe()
    activations = {
        "path": None,
        "streamed": True,
        "hook": rows.plan.hooks[0],
        "tokens": tokens,
        "cls_position": cls_position,
        "model": {"id": backbone.model_id, "revision": backbone.revision, "arch": backbone.arch},
    }
    data = {
        "spec": cfg.dataset,
        "split": cfg.split,
        **({"subset": desc["subset"]} if "subset" in desc else {}),
    }
    return StreamView(rows, cls_position, where), activations, data, list(ds.classes) if ds.classes else None


def run_interpret(cfg: InterpretConfig) -> tuple[Path, LatentStats]:
    """Compute, save and return the statistics of `cfg.sae` over `cfg.activations`, or (with
    `--model`) over activations that the model computes on `--dataset` images during the pass."""
    import torch

    from ..sae.base import SparseAutoencoder
    from ..sae.provenance import Provenance, check_agree
    from ..utils.device import resolve_device
    from .neighbours import decoder_neighbours
    from .stats import latent_stats
    from .store import sae_tensors_sha256, sae_weights_sha256, save_stats

    device = resolve_device(cfg.device)
    sae = SparseAutoencoder.load(cfg.sae, device=device)
    if cfg.activations:
        view, activations, data_meta, classes = _cache_source(cfg, sae)
        where = f"the activations ({cfg.activations})"
    else:
        view, activations, data_meta, classes = _model_source(cfg, sae, device)
        where = f"the model's activations ({cfg.model} on {cfg.dataset})"
    if view.d != sae.d_in:
        raise SparsesteerError(f"activation width {view.d} does not match the SAE's d_in={sae.d_in} ({cfg.sae})")
    data = Provenance.from_rows(view.describe())
    notes = check_agree(f"the SAE ({cfg.sae})", sae.provenance, where, data, allow=cfg.allow_mismatch)
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
    meta: dict[str, Any] = {
        "sae": {
            "path": str(Path(cfg.sae).resolve()),
            "weights_sha256": sae_weights_sha256(cfg.sae),
            "tensors_sha256": sae_tensors_sha256(sae),
            "arch": sae.cfg.arch,
            "k": sae.cfg.k if sae.cfg.uses_k else None,
        },
        "activations": activations,
        "dataset": data_meta,
        "classes": classes,
        "hist": {"min": cfg.hist_min, "max": cfg.hist_max, "n_bins": cfg.n_bins, "scale": "log10"},
    }
    if notes:
        meta["provenance_overridden"] = notes
    if cfg.vocab:
        from ..data.vocab import load_vocab
        from ..models.backbone import load_backbone
        from .lens import concept_lens

        model = cfg.model or (activations.get("model") or {}).get("id")
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

    model = (activations.get("model") or {}).get("id") or "unknown model"
    frequency_histogram(
        out / "plots" / "frequency.png",
        stats.frequency,
        title=f"{model} {view.hook} {activations['tokens']}, {data_meta['spec']} {data_meta['split']}",
    )
    if cfg.montages:
        from .heatmaps import stats_dataset, write_montages

        ds = stats_dataset(stats, data_root=cfg.data_root)
        order = np.argsort(-stats.fire_count, kind="stable")[: cfg.montages]
        names = write_montages(stats, order.tolist(), ds, out / "montages")
        log.info("wrote %d montages to %s", len(names), out / "montages")
    return out, stats
