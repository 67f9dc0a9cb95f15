"""Saving and loading latent statistics: STATS/stats.json (metadata) + STATS/stats.safetensors.

    save_stats(stats, "runs/stats")
    stats = load_stats("runs/stats", sae="runs/sae")     # refuses statistics of another SAE

Tensors (safetensors, numpy dtypes as written):
    fire_count, image_count [L] int64; act_sum [L] float64; act_max [L] float32
    hist_centres [n_bins] float64; hist_counts [L, n_bins] int64
    top.{ranking}.values [L, n] float32, .images [L, n] int64 (-1 empty), .labels [L, n] int64,
    .tokens [L, n, m] float32            for each ranking in meta["rankings"] (max, cls, patch)
    neighbours.indices [L, k] int64, neighbours.cosine [L, k] float32      (when computed)
    lens.indices [L, k] int64, lens.cosine [L, k] float32                   (when computed; words in JSON)
stats.json: format, format_version, n_rows, n_images, n_latents, token_positions, rankings, top_n,
hist (min, max, n_bins), sae (path, weights_sha256, tensors_sha256, arch, k), activations (path,
settings_sha256, hook, tokens, model), dataset (spec, split: where the images are), classes,
lens (vocabulary and its sha256), tensors_sha256 (of stats.safetensors), meta_sha256 (of stats.json's
own contents without this field: canonical JSON, sorted keys). Loading refuses an edited or damaged
file of either kind, and tensors whose shapes disagree with stats.json, naming the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils import io
from ..utils.errors import SparsesteerError
from .stats import LatentStats, TopImages

if TYPE_CHECKING:
    from ..activations.cache import ActivationCache
    from ..sae.base import SparseAutoencoder

FORMAT = "sparsesteer-latent-stats"
FORMAT_VERSION = 1
META = "stats.json"
TENSORS = "stats.safetensors"


def sae_tensors_sha256(sae: SparseAutoencoder) -> str:
    """sha256 over the SAE's tensors (name, shape, float32 bytes in name order): identifies the
    weights of a loaded SAE independently of the file they came from."""
    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        a = t.detach().cpu().float().contiguous().numpy()
        h.update(f"{name}{list(a.shape)}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def sae_weights_sha256(sae_dir: str | os.PathLike) -> str | None:
    """cfg.json's `weights_sha256` of an SAE directory (None when it records none)."""
    cfg = Path(sae_dir) / "cfg.json"
    if not cfg.is_file():
        raise SparsesteerError(f"{sae_dir}: no cfg.json, not an SAE directory")
    return io.read_json(cfg).get("weights_sha256")


def _tensors(stats: LatentStats) -> dict[str, np.ndarray]:
    out = {
        "fire_count": stats.fire_count,
        "image_count": stats.image_count,
        "act_sum": stats.act_sum,
        "act_max": stats.act_max,
        "hist_centres": stats.hist_centres,
        "hist_counts": stats.hist_counts,
    }
    for name, t in stats.top.items():
        for f in ("values", "images", "labels", "tokens"):
            out[f"top.{name}.{f}"] = getattr(t, f)
    if stats.neighbours is not None:
        out["neighbours.indices"] = stats.neighbours.indices
        out["neighbours.cosine"] = stats.neighbours.cosine
    if stats.lens is not None:
        out["lens.indices"] = stats.lens.indices
        out["lens.cosine"] = stats.lens.cosine
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_stats(stats: LatentStats, out: str | os.PathLike) -> Path:
    """Write OUT/stats.safetensors then OUT/stats.json (atomically); return OUT."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    io.remove_stale_temps(out)  # half-written files of a run that was killed
    with io.atomic_path(out / TENSORS) as tmp:
        save_file(_tensors(stats), str(tmp), metadata={"format": FORMAT})
        digest = io.sha256_file(tmp)
    meta = {
        **stats.meta,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_rows": stats.n_rows,
        "n_images": stats.n_images,
        "n_latents": stats.n_latents,
        "token_positions": list(stats.token_positions),
        "rankings": list(stats.top),
        "top_n": int(next(iter(stats.top.values())).images.shape[1]),
        "tensors_file": TENSORS,
        "tensors_sha256": digest,
    }
    if stats.lens is not None:
        meta["lens"] = {**meta.get("lens", {}), "words": list(stats.lens.words)}
    meta["meta_sha256"] = meta_sha256(meta)
    io.write_json(out / META, meta)
    return out


def meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of stats.json's contents (canonical JSON, without this field): an edit by hand is seen,
    as the tensors' checksum sees an edited stats.safetensors."""
    import json

    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=io._json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_shapes(file: Path, t: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Every tensor has the shape stats.json implies (n_latents, top_n, token positions, bins)."""
    L, n, m = meta["n_latents"], meta["top_n"], len(meta["token_positions"])
    bins = (meta.get("hist") or {}).get("n_bins", len(t.get("hist_centres", ())))  # "hist": the CLI's record
    want: dict[str, tuple[int, ...]] = {
        "fire_count": (L,),
        "image_count": (L,),
        "act_sum": (L,),
        "act_max": (L,),
        "hist_counts": (L, bins),
        "hist_centres": (bins,),
    }
    for name in meta["rankings"]:
        want |= {f"top.{name}.values": (L, n), f"top.{name}.images": (L, n), f"top.{name}.labels": (L, n)}
        want[f"top.{name}.tokens"] = (L, n, m)
    for name, shape in want.items():
        if name not in t:
            raise SparsesteerError(f"{file} has no tensor {name!r} (listed by {META}): the statistics are damaged")
        if tuple(t[name].shape) != shape:
            raise SparsesteerError(
                f"{file}: {name} has shape {list(t[name].shape)}, {META} implies {list(shape)}: "
                "the statistics are damaged; recompute them with `sparsesteer interpret`"
            )


def _differs(what: str, path: Path, key: str, recorded: Any, given: Any, source: str) -> SparsesteerError:
    return SparsesteerError(
        f"{path} holds statistics computed with a different {what}: {key} {str(recorded)[:16]}… in {META}, "
        f"{str(given)[:16]}… for {source}; recompute them with `sparsesteer interpret`"
    )


def load_stats(
    path: str | os.PathLike,
    sae: SparseAutoencoder | str | os.PathLike | None = None,
    *,
    activations: ActivationCache | str | os.PathLike | None = None,
    dataset: str | None = None,
) -> LatentStats:
    """Read statistics written by `save_stats`. With `sae` (a directory or a loaded SAE),
    `activations` (a cache or its directory) or `dataset` (a spec), refuse statistics computed
    with different ones, naming the checksum (or spec) that differs."""
    from safetensors.numpy import load_file

    from .lens import LensWords
    from .neighbours import Neighbours

    path = Path(path)
    if not (path / META).is_file():
        raise SparsesteerError(
            f"{path}: no {META}; not a statistics directory (write one with `sparsesteer interpret`)"
        )
    meta = io.read_json(path / META)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise SparsesteerError(f"{path / META}: format {got!r}, expected {FORMAT!r}")
    if "meta_sha256" in meta and meta["meta_sha256"] != meta_sha256(meta):
        raise SparsesteerError(
            f"{path / META} was edited after `sparsesteer interpret` wrote it (its contents do not match its "
            "meta_sha256); recompute the statistics with `sparsesteer interpret`"
        )
    missing = [k for k in ("n_rows", "n_images", "n_latents", "token_positions", "rankings", "top_n") if k not in meta]
    if missing:
        raise SparsesteerError(f"{path / META}: missing field(s) {', '.join(missing)}: not a complete statistics file")
    rec_sae = meta.get("sae") or {}
    if sae is not None:
        if isinstance(sae, (str, os.PathLike)):
            given = sae_weights_sha256(sae)
            if given is not None and rec_sae.get("weights_sha256") not in (None, given):
                raise _differs("SAE", path, "weights_sha256", rec_sae["weights_sha256"], given, f"the SAE {sae}")
        else:
            given = sae_tensors_sha256(sae)
            if rec_sae.get("tensors_sha256") not in (None, given):
                raise _differs("SAE", path, "tensors_sha256", rec_sae["tensors_sha256"], given, "the SAE given")
    if activations is not None:
        if isinstance(activations, (str, os.PathLike)):
            from ..activations.cache import ActivationCache

            activations = ActivationCache.open(activations, verify="none")
        rec = (meta.get("activations") or {}).get("settings_sha256")
        if rec not in (None, activations.settings_sha256):
            raise _differs(
                "activation cache", path, "settings_sha256", rec, activations.settings_sha256, str(activations.path)
            )
    if dataset is not None:
        rec_ds = (meta.get("dataset") or {}).get("spec")
        if rec_ds not in (None, dataset):
            raise SparsesteerError(
                f"{path} holds statistics computed on dataset {rec_ds!r}, not {dataset!r}; "
                "recompute them with `sparsesteer interpret`"
            )
    file = path / meta.get("tensors_file", TENSORS)
    if not file.is_file():
        raise SparsesteerError(f"{file} is missing: the statistics directory is incomplete")
    if meta.get("tensors_sha256") and io.sha256_file(file) != meta["tensors_sha256"]:
        raise SparsesteerError(f"{file}: checksum does not match {META} (tensors_sha256): the file is corrupted")
    try:
        t = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for a damaged header or length
        raise SparsesteerError(f"{file} is not a readable safetensors file ({e}): the statistics are damaged") from None
    try:
        _check_shapes(file, t, meta)
    except (KeyError, TypeError) as e:
        raise SparsesteerError(f"{path / META}: malformed field {e}: not a complete statistics file") from None
    top = {
        name: TopImages(*(t[f"top.{name}.{f}"] for f in ("values", "images", "tokens", "labels")))
        for name in meta["rankings"]
    }
    stats = LatentStats(
        n_rows=meta["n_rows"],
        n_images=meta["n_images"],
        token_positions=list(meta["token_positions"]),
        fire_count=t["fire_count"],
        image_count=t["image_count"],
        act_sum=t["act_sum"],
        act_max=t["act_max"],
        hist_centres=t["hist_centres"],
        hist_counts=t["hist_counts"],
        top=top,
        meta=meta,
    )
    if "neighbours.indices" in t:
        stats.neighbours = Neighbours(t["neighbours.indices"], t["neighbours.cosine"])
    if "lens.indices" in t:
        stats.lens = LensWords(t["lens.indices"], t["lens.cosine"], tuple(meta["lens"]["words"]))
    return stats
