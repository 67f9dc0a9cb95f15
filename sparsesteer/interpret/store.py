"""Saving and loading latent statistics: STATS/stats.json (metadata) + STATS/stats.safetensors.

    save_stats(stats, "runs/stats")
    stats = load_stats("runs/stats", sae="runs/sae")     # refuses statistics of another SAE

Tensors (safetensors), format version 2: what the pages show, in compact dtypes (about 1.5 KB per
latent for 10 top images per ranking of 50 tokens, against 7 KB in version 1):
    fire_count, image_count [L] int64; act_sum [L] float64; act_max [L] float32
    hist_centres [n_bins] float64; hist_counts [L, n_bins] the smallest unsigned dtype for its counts
    examples.count [L]                 how many distinct top images each latent has (all rankings)
    examples.images, .labels [E]       those images and their labels (-1: unlabeled), latent-major,
                                       image ascending; int32 (int64 past 2^31 images), labels int8..
    examples.scale [E] float32         the latent's largest activation on the image's tokens
    examples.tokens [E, m] uint8       its activation on each token, rint(255 x value / scale)
    top.{ranking}.values [L, n] float32, .example [L, n] int8.. (index among the latent's examples,
                                       -1 empty)    for each ranking in meta["rankings"] (max, cls, patch)
    neighbours.indices [L, k] int32, neighbours.cosine [L, k] float32      (when computed)
    lens.indices [L, k] int32, lens.cosine [L, k] float32                   (when computed; words in JSON)
    dissect.indices [L, k] int32 (-1: no label), dissect.scores [L, k] float32 (NaN: no label)
                                            CLIP-Dissect labels (when computed; words in JSON)
    intervals.images [L, I, s], random.images [L, s]   random images per activation interval and among
                                       all active images (when computed): the smallest unsigned dtype
                                       (uint32 past 65,535 images), its largest value for an empty slot;
                                       .values float16 (float32 when one exceeds float16's range),
                                       .labels int8..; intervals.counts [L, I] uint8.. images in each
                                       interval, intervals.bounds [L, I + 1] float32 its edges
An image in several rankings of a latent is stored once. `load_stats` gives back `TopImages` as
`latent_stats` returns them, the token activations to within scale / 510 (the browser's heatmaps
quantise to 0..255 anyway). Version 1 files (float32 tokens per ranking) are refused by name.
stats.json: format, format_version, n_rows, n_images, n_latents, token_positions, rankings, top_n,
hist (min, max, n_bins), sae (path, weights_sha256, tensors_sha256, arch, k), activations (path,
settings_sha256, hook, tokens, model), dataset (spec, split: where the images are), classes,
lens (vocabulary and its sha256), dissect (vocabulary, model, settings, words), samples (how the
random images were drawn), tensors_sha256 (of stats.safetensors), meta_sha256 (of stats.json's
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
from .stats import LatentStats, SampledImages, TopImages

SAMPLES = ("intervals", "random")
"""Optional sample tensors (statistics written before them load without: `LatentStats.intervals` None)."""

if TYPE_CHECKING:
    from ..activations.cache import ActivationCache
    from ..sae.base import SparseAutoencoder

FORMAT = "sparsesteer-latent-stats"
FORMAT_VERSION = 2
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


def _int_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest integer dtype holding lo..hi (unsigned when lo >= 0)."""
    kinds = (np.uint8, np.uint16, np.uint32, np.uint64) if lo >= 0 else (np.int8, np.int16, np.int32, np.int64)
    return np.dtype(next(t for t in kinds if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max))


def _examples(stats: LatentStats, block: int = 4096) -> dict[str, np.ndarray]:
    """The distinct (latent, image) pairs of all rankings, their quantised tokens, and each ranking's
    slots as indices into them; `block` latents at a time (bounded temporary memory)."""
    names = list(stats.top)
    L, n = stats.top[names[0]].images.shape
    n_img = max(stats.n_images, int(max(t.images.max(initial=-1) for t in stats.top.values())) + 1, 1)
    count = np.zeros(L, np.int64)
    images, labels, scale, tokens = [], [], [], []
    example = {r: np.full((L, n), -1, np.int64) for r in names}
    for a in range(0, L, block):
        b = min(a + block, L)
        imgs = np.stack([stats.top[r].images[a:b] for r in names])  # [R, B, n]
        rr, jj, ss = np.nonzero(imgs >= 0)
        keys = jj * n_img + imgs[rr, jj, ss]
        uk, first, inv = np.unique(keys, return_index=True, return_inverse=True)  # latent-major, image ascending
        lat = uk // n_img
        cnt = np.bincount(lat, minlength=b - a)
        start = np.cumsum(cnt) - cnt
        for r_i, r in enumerate(names):
            sel = rr == r_i
            example[r][a + jj[sel], ss[sel]] = inv[sel] - start[jj[sel]]
        src_r, src_j, src_s = rr[first], a + jj[first], ss[first]
        tok = np.empty((len(uk), stats.top[names[0]].tokens.shape[2]), np.float32)
        for r_i, r in enumerate(names):
            sel = src_r == r_i
            tok[sel] = stats.top[r].tokens[src_j[sel], src_s[sel]]
        lab = np.empty(len(uk), np.int64)
        for r_i, r in enumerate(names):
            sel = src_r == r_i
            lab[sel] = stats.top[r].labels[src_j[sel], src_s[sel]]
        sc = tok.max(1, initial=0.0)
        q = np.rint(tok / np.where(sc > 0, sc, 1)[:, None] * 255)
        count[a:b] = cnt
        images.append(uk % n_img)
        labels.append(lab)
        scale.append(sc.astype(np.float32))
        tokens.append(np.clip(q, 0, 255).astype(np.uint8))
    lab_all = np.concatenate(labels)
    out = {
        "examples.count": count.astype(_int_dtype(0, int(count.max(initial=0)))),
        "examples.images": np.concatenate(images).astype(_int_dtype(-(2**31), n_img)),
        "examples.labels": lab_all.astype(_int_dtype(-1, int(lab_all.max(initial=0)))),
        "examples.scale": np.concatenate(scale),
        "examples.tokens": np.concatenate(tokens),
    }
    slot = _int_dtype(-1, len(names) * n)
    for r in names:
        out[f"top.{r}.values"] = stats.top[r].values.astype(np.float32)
        out[f"top.{r}.example"] = example[r].astype(slot)
    return out


def _tensors(stats: LatentStats) -> dict[str, np.ndarray]:
    hist = stats.hist_counts
    out = {
        "fire_count": stats.fire_count,
        "image_count": stats.image_count,
        "act_sum": stats.act_sum,
        "act_max": stats.act_max,
        "hist_centres": stats.hist_centres,
        "hist_counts": hist.astype(_int_dtype(0, int(hist.max(initial=0)))),
        **_examples(stats),
    }
    for name in ("neighbours", "lens"):
        got = getattr(stats, name)
        if got is not None:
            out[f"{name}.indices"] = got.indices.astype(_int_dtype(-(2**31), int(got.indices.max(initial=0))))
            out[f"{name}.cosine"] = got.cosine.astype(np.float32)
    if stats.dissect is not None:
        out["dissect.indices"] = stats.dissect.indices.astype(np.int32)
        out["dissect.scores"] = stats.dissect.scores.astype(np.float32)
    for name in SAMPLES:
        samples: SampledImages | None = getattr(stats, name)
        if samples is not None:
            out |= _sample_tensors(name, samples)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _sample_tensors(name: str, s: SampledImages) -> dict[str, np.ndarray]:
    """Compact tensors of one `SampledImages` (see the module docstring)."""
    img_dtype = _int_dtype(0, int(s.images.max(initial=-1)) + 1)
    empty = np.iinfo(img_dtype).max
    f16 = np.abs(s.values).max(initial=0) <= np.finfo(np.float16).max
    out = {
        f"{name}.images": np.where(s.images >= 0, s.images, empty).astype(img_dtype),
        f"{name}.values": s.values.astype(np.float16 if f16 else np.float32),
        f"{name}.labels": s.labels.astype(_int_dtype(-1, int(s.labels.max(initial=0)))),
    }
    if s.bounds is not None:
        out[f"{name}.bounds"] = s.bounds.astype(np.float32)
        out[f"{name}.counts"] = s.counts.astype(_int_dtype(0, int(s.counts.max(initial=0))))
    return out


def _samples(t: dict[str, np.ndarray], name: str, image_count: np.ndarray) -> SampledImages | None:
    """The inverse of `_sample_tensors` (None when the file has none)."""
    if f"{name}.images" not in t:
        return None
    raw = t[f"{name}.images"]
    images = np.where(raw == np.iinfo(raw.dtype).max, -1, raw.astype(np.int64))
    counts = t[f"{name}.counts"].astype(np.int64) if f"{name}.counts" in t else image_count.astype(np.int64)
    bounds = t.get(f"{name}.bounds")
    return SampledImages(
        images, t[f"{name}.values"].astype(np.float32), t[f"{name}.labels"].astype(np.int64), counts, bounds
    )


def _top_images(file: Path, t: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, TopImages]:
    """`TopImages` per ranking from the examples (the inverse of `_examples`)."""
    count = t["examples.count"].astype(np.int64)
    start = np.cumsum(count) - count
    E = len(t["examples.images"])  # one more row, index E, reads as an empty slot
    images = np.append(t["examples.images"].astype(np.int64), -1)
    labels = np.append(t["examples.labels"].astype(np.int64), -1)
    scale = np.append(t["examples.scale"], np.float32(0))
    tokens = np.concatenate([t["examples.tokens"], np.zeros((1, t["examples.tokens"].shape[1]), np.uint8)])
    top = {}
    for name in meta["rankings"]:
        ex = t[f"top.{name}.example"].astype(np.int64)
        if (ex >= count[:, None]).any() or (ex < -1).any():
            raise SparsesteerError(
                f"{file}: top.{name}.example points outside its latent's examples: the statistics are damaged"
            )
        g = np.where(ex >= 0, start[:, None] + ex, E)
        tok = tokens[g].astype(np.float32)
        tok /= 255  # q / 255 first: 255 reads back as exactly the scale
        tok *= scale[g][..., None]
        top[name] = TopImages(t[f"top.{name}.values"], images[g], tok, labels[g])
    return top


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
    if stats.dissect is not None:
        meta["dissect"] = {**meta.get("dissect", {}), "words": list(stats.dissect.words)}
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
    E = int(t["examples.count"].astype(np.int64).sum()) if "examples.count" in t else 0
    want |= {"examples.count": (L,), "examples.images": (E,), "examples.labels": (E,), "examples.scale": (E,)}
    want["examples.tokens"] = (E, m)
    for name in meta["rankings"]:
        want |= {f"top.{name}.values": (L, n), f"top.{name}.example": (L, n)}
    if "dissect.indices" in t:  # optional: statistics without labels load as before
        k = (t["dissect.indices"].shape[1:] or (-1,))[0]  # a 1-D tensor fails the check below
        want |= {"dissect.indices": (L, k), "dissect.scores": (L, k)}
    if "intervals.images" in t:  # optional too: statistics written before the samples load as before
        ik = tuple(t["intervals.images"].shape[1:3]) if t["intervals.images"].ndim == 3 else (-1, -1)
        want |= {f"intervals.{x}": (L, *ik) for x in ("images", "values", "labels")}
        want |= {"intervals.counts": (L, ik[0]), "intervals.bounds": (L, ik[0] + 1)}
    if "random.images" in t:
        rk = (t["random.images"].shape[1:] or (-1,))[0]
        want |= {f"random.{x}": (L, rk) for x in ("images", "values", "labels")}
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

    from .dissect import ConceptLabels
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
    if meta.get("format_version") != FORMAT_VERSION:
        raise SparsesteerError(
            f"{path / META}: statistics format version {meta.get('format_version')}, this sparsesteer reads version "
            f"{FORMAT_VERSION} (compact top images); recompute them with `sparsesteer interpret`"
        )
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
    top = _top_images(file, t, meta)
    stats = LatentStats(
        n_rows=meta["n_rows"],
        n_images=meta["n_images"],
        token_positions=list(meta["token_positions"]),
        fire_count=t["fire_count"],
        image_count=t["image_count"],
        act_sum=t["act_sum"],
        act_max=t["act_max"],
        hist_centres=t["hist_centres"],
        hist_counts=t["hist_counts"].astype(np.int64),
        top=top,
        meta=meta,
    )
    if "neighbours.indices" in t:
        stats.neighbours = Neighbours(t["neighbours.indices"].astype(np.int64), t["neighbours.cosine"])
    if "lens.indices" in t:
        stats.lens = LensWords(t["lens.indices"].astype(np.int64), t["lens.cosine"], tuple(meta["lens"]["words"]))
    if "dissect.indices" in t:
        words = tuple(meta["dissect"]["words"])
        idx = t["dissect.indices"].astype(np.int64)
        if idx.max(initial=-1) >= len(words):
            raise SparsesteerError(f"{file}: dissect.indices points outside the {len(words)} label words of {META}")
        stats.dissect = ConceptLabels(idx, t["dissect.scores"], words)
    stats.intervals = _samples(t, "intervals", stats.image_count)
    stats.random = _samples(t, "random", stats.image_count)
    return stats
