"""Writing the feature browser: a static site from latent statistics (`sparsesteer browse`).

    write_site(load_stats("runs/stats"), "runs/site")     # open runs/site/index.html, or serve it

The site works opened from the file system (file://) and from any static host, so data is not
fetched as JSON (Chromium refuses fetch() on file://): every data file is a script that hands its
payload to `SS.put(key, data)` (JSONP style), loaded with a <script> tag when needed.

    SITE/index.html, latent.html, 404.html   pages (latent.html#J shows latent J)
    SITE/assets/                               the JS and CSS (package data, copied)
    SITE/data/meta.js                          what every page needs: sizes, classes, orders, paging
    SITE/data/pages/ORDER-P.js                 page P of the index sorted by ORDER (frequency, max,
                                               purity, id): one row per latent
    SITE/data/overview.js, data/map.js         the index's summary card and decoder map (`overview`)
    SITE/data/words.js, data/words/G.js        search: the word list; word -> latents, in groups
    SITE/data/latents/C.js                     the full record of `chunk_size` consecutive latents
    SITE/img/B/I.jpg                           one thumbnail per top or sampled image, shared by all latents

Sizes stay bounded at any number of latents: the index page loads the shell, meta.js and one page
file; a latent page loads the shell, meta.js, one chunk (sized to about `chunk_bytes`) and its
thumbnails. Heatmaps are drawn in the browser from the per-patch activations (quantised to 0..255
of the latent's largest activation over its top images, as `heatmaps.heatmap` scales them).

The site is written into a staging directory next to SITE and renamed into place at the end, so a
reader never sees half a site; an existing SITE is replaced only with `overwrite=True`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...utils import io
from ...utils.errors import SparsesteerError

if TYPE_CHECKING:
    from ...data.datasets import ImageDataset
    from ..stats import LatentStats

FORMAT = "sparsesteer-browser-site"
FORMAT_VERSION = 1
ORDERS = ("frequency", "max", "purity", "id")
"""Index orders: frequency, max activation and label purity descending (ties: lower id), id ascending."""
PAGES = ("index.html", "latent.html", "404.html")
ASSETS = ("browser.css", "common.js", "index.js", "latent.js", "favicon.svg")
_ABS_PATH = re.compile(r"(?<![^\s:,;=])(?:[A-Za-z]:[\\/]|[/\\~])[^\s:,;=]*")


@dataclass(frozen=True)
class SiteSummary:
    """What `write_site` wrote."""

    path: Path
    n_latents: int
    n_images: int
    """Thumbnails written (distinct top images)."""
    n_pages: int
    """Index pages per order."""
    n_chunks: int
    chunk_size: int


def latent_table(stats: LatentStats) -> dict[str, np.ndarray]:
    """Per-latent columns of the index: frequency, max, purity (share of the top images, ranking
    `max`, that carry the most common label; NaN without labelled top images) and the top label."""
    top = stats.top["max"]
    filled = top.images >= 0
    labels = np.where(filled & (top.labels >= 0), top.labels, -1)
    L = stats.n_latents
    purity = np.full(L, np.nan)
    top_label = np.full(L, -1, np.int64)
    n_lab = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    if n_lab:
        counts = np.zeros((L, n_lab), np.int64)
        rows, cols = np.nonzero(labels >= 0)
        np.add.at(counts, (rows, labels[rows, cols]), 1)
        total = counts.sum(1)
        has = total > 0
        top_label[has] = counts[has].argmax(1)  # ties: lower label
        purity[has] = counts[has].max(1) / total[has]
    return {"frequency": stats.frequency, "max": stats.act_max.astype(np.float64), "purity": purity, "label": top_label}


def order(table: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Latent ids in index order `name` (descending, NaN last, ties by lower id; `id`: ascending)."""
    L = len(table["frequency"])
    if name == "id":
        return np.arange(L)
    v = np.nan_to_num(table[name], nan=-np.inf)
    return np.lexsort((np.arange(L), -v))


def _sig(x: float, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _floor_sig(x: float, digits: int = 3) -> float:
    """x rounded down to `digits` significant digits (a lower bound that stays one)."""
    if x <= 0 or not math.isfinite(x):
        return 0.0 if math.isfinite(x) else x
    e = math.floor(math.log10(x)) - digits + 1
    y = math.floor(x / 10.0**e) * 10.0**e
    y = float(f"{y:.{digits}g}")
    return y if y <= x else float(np.nextafter(y, -np.inf))


def quantise_grid(tokens_m: np.ndarray, keep: list[int], vmax: float) -> str | None:
    """The patch tokens of one image as base64 uint8 (0..255 of vmax), row-major over the patch
    grid; None when the kept tokens do not form a square grid."""
    g = math.isqrt(len(keep))
    if g == 0 or g * g != len(keep):
        return None
    v = np.asarray(tokens_m, np.float64)[keep]
    q = np.zeros(len(keep), np.uint8) if vmax <= 0 else np.clip(np.rint(v / vmax * 255), 0, 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode()


def dequantise_grid(text: str, vmax: float) -> np.ndarray:
    """Inverse of `quantise_grid` (up to rounding): float activations, flat row-major."""
    return np.frombuffer(base64.b64decode(text), np.uint8).astype(np.float64) / 255 * vmax


def _js(key: str, data: Any) -> bytes:
    return f"SS.put({json.dumps(key)},{json.dumps(data, separators=(',', ':'), allow_nan=False)});\n".encode()


def thumb_path(image: int) -> str:
    """Site-relative path of image `image`'s thumbnail (1,000 per folder)."""
    return f"img/{image // 1000}/{image}.jpg"


def latent_record(
    stats: LatentStats, j: int, table: dict[str, np.ndarray], keep: list[int], labels: list[str] | None = None
) -> dict[str, Any]:
    """Everything the latent page shows about latent j (numbers rounded to 4-5 significant digits).
    `labels`: every latent's label (`latent_labels`), shown with each decoder neighbour."""
    rec: dict[str, Any] = {
        "id": j,
        "fire_count": int(stats.fire_count[j]),
        "image_count": int(stats.image_count[j]),
        "frequency": _sig(float(stats.frequency[j]), 5),
        "image_frequency": _sig(float(stats.image_frequency[j]), 5),
        "mean_active": _sig(float(stats.mean_active[j]), 5),
        "mean": _sig(float(stats.mean[j]), 5),
        "max": _sig(float(stats.act_max[j]), 5),
        "purity": _sig(float(table["purity"][j]), 4),
    }
    counts = stats.hist_counts[j]
    nz = np.flatnonzero(counts)
    rec["hist"] = [[int(b), int(counts[b])] for b in nz]
    rec["top"], rec["vmax"], rec["labels"] = {}, {}, {}
    for name, top in stats.top.items():
        n = int((top.images[j] >= 0).sum())
        vmax = float(top.tokens[j, :n].max()) if n else 0.0
        rec["vmax"][name] = _sig(vmax, 6)
        rec["top"][name] = [
            [int(top.images[j, r]), _sig(float(top.values[j, r]), 5), int(top.labels[j, r]),
             quantise_grid(top.tokens[j, r], keep, vmax)]
            for r in range(n)
        ]  # fmt: skip
        labs = top.labels[j, :n]
        labs = labs[labs >= 0]
        u, c = np.unique(labs, return_counts=True)
        rec["labels"][name] = [[int(a), int(b)] for a, b in sorted(zip(u, c), key=lambda t: (-t[1], t[0]))]
    rec |= sample_records(stats, j, keep)
    if stats.neighbours is not None:
        best = stats.top["max"].images[:, 0]  # a neighbour's thumbnail: its top image (-1: never active)
        rec["neighbours"] = [
            [int(i), _sig(float(c), 4), int(best[i]), labels[int(i)] if labels else ""]
            for i, c in zip(stats.neighbours.indices[j], stats.neighbours.cosine[j])
        ]
    if stats.lens is not None:
        rec["lens"] = [[int(i), _sig(float(c), 4)] for i, c in zip(stats.lens.indices[j], stats.lens.cosine[j])]
    if stats.dissect is not None:  # CLIP-Dissect labels, best first (none for a latent that never fires)
        d = stats.dissect
        rec["dissect"] = [[d.words[int(i)], _sig(float(c), 4)] for i, c in zip(d.indices[j], d.scores[j]) if i >= 0]
    return rec


def sample_records(stats: LatentStats, j: int, keep: list[int]) -> dict[str, Any]:
    """Latent j's random images: "intervals" [[lo, hi, count, images]] (hi None: no upper edge) and
    "random" images, each image [image, value, label, grid]. Their per-token activations are not
    stored (about 1 KB per latent more), so an image has a heatmap (on the "max" ranking's scale)
    only when it is one of the latent's top images too; else grid is None."""
    out: dict[str, Any] = {}
    known = {int(i): t.tokens[j, r] for t in stats.top.values() for r, i in enumerate(t.images[j]) if i >= 0}
    vmax = float(stats.top["max"].tokens[j].max(initial=0.0))

    def images(s: Any, where: tuple) -> list[list[Any]]:
        return [
            [int(i), _sig(float(v), 5), int(lab), quantise_grid(known[int(i)], keep, vmax) if int(i) in known else None]
            for i, v, lab in zip(s.images[where], s.values[where], s.labels[where])
            if i >= 0
        ]

    if stats.intervals is not None and stats.intervals.bounds is not None:
        s, b = stats.intervals, stats.intervals.bounds[j]
        out["intervals"] = [
            [_sig(float(b[i]), 4), _sig(float(b[i + 1]), 4), int(s.counts[j, i]), images(s, (j, i))]
            for i in range(s.images.shape[1])
            if not math.isnan(b[i + 1])  # NaN: past the latent's last interval
        ]
    if stats.random is not None:
        out["random"] = images(stats.random, (j,))
    return out


def dissect_label(stats: LatentStats, j: int) -> tuple[str, float | None]:
    """Latent j's CLIP-Dissect label and its score ("", None without one)."""
    d = stats.dissect
    if d is None or d.indices.shape[1] == 0 or d.indices[j, 0] < 0:
        return "", None
    return d.words[int(d.indices[j, 0])], _sig(float(d.scores[j, 0]), 3)


def _word_index(stats: LatentStats, table: dict[str, np.ndarray], words: list[str]) -> dict[int, list[int]]:
    """word index -> latents it is a top word of: the first three lens words of each latent (by
    cosine) with a lens, else the most common label of its top images (by purity); with CLIP-Dissect
    labels, first the latents it labels (by score; `words` holds the label words too)."""
    out: dict[int, list[tuple[float, int]]] = {}
    labelled: dict[int, list[tuple[float, int]]] = {}
    if stats.dissect is not None:
        pos = {w: i for i, w in enumerate(words)}
        for j in range(stats.n_latents):
            word, score = dissect_label(stats, j)
            if word:
                labelled.setdefault(pos[word], []).append((-(score if score is not None else -math.inf), j))
    if stats.lens is not None:
        k = min(3, stats.lens.indices.shape[1])
        for j in range(stats.n_latents):
            for w, c in zip(stats.lens.indices[j, :k], stats.lens.cosine[j, :k]):
                out.setdefault(int(w), []).append((-float(c), j))
    else:
        for jj in np.flatnonzero(table["label"] >= 0):
            j = int(jj)
            w = int(table["label"][j])
            if w < len(words):
                out.setdefault(w, []).append((-float(table["purity"][j]), int(j)))
    ranked = {w: [j for _, j in sorted(v)] for w, v in out.items()}
    for w, v in labelled.items():
        first = [j for _, j in sorted(v)]
        seen = set(first)
        ranked[w] = first + [j for j in ranked.get(w, []) if j not in seen]
    return ranked


def latent_labels(stats: LatentStats, table: dict[str, np.ndarray], classes: list[str]) -> list[str]:
    """Each latent's label for the map and the neighbour lists: its CLIP-Dissect label, else the most
    common class of its top images ("" for neither)."""
    out = []
    for j in range(stats.n_latents):
        word = dissect_label(stats, j)[0]
        lab = int(table["label"][j])
        out.append(word or (classes[lab] if 0 <= lab < len(classes) else ("" if lab < 0 else str(lab))))
    return out


def _write_overview(stats: LatentStats, write, labels: list[str], decoder: Any) -> None:
    """data/overview.js (the summary card; `map`: whether data/map.js exists, or why not) and data/map.js."""
    from .overview import decoder_map, overview

    ov = overview(stats.fire_count, stats.n_rows)
    if decoder is None or isinstance(decoder, str):
        ov["map"] = decoder or "no decoder directions were given (the SAE is needed: browse --sae DIR)"
    else:
        ov["map"] = True
        write("data/map.js", _js("map", decoder_map(decoder, stats.fire_count > 0, labels)))
    write("data/overview.js", _js("overview", ov))


def check_images(stats: LatentStats, dataset: ImageDataset) -> np.ndarray:
    """The distinct top and sampled images (sorted); refuses, before any work, images the dataset lacks."""
    samples = [s.images.ravel() for s in (stats.intervals, stats.random) if s is not None]
    ids = np.unique(np.concatenate([t.images.ravel() for t in stats.top.values()] + samples))
    ids = ids[ids >= 0]
    if len(ids) and ids[-1] >= len(dataset):
        raise SparsesteerError(
            f"the statistics reference image {int(ids[-1])}, but {dataset!r} has {len(dataset)} images: "
            "the images are missing or the dataset is not the one the statistics were computed on"
        )
    return ids


def _write_thumbs(stage: Path, dataset: ImageDataset, ids: np.ndarray, size: int, progress: bool) -> None:
    from PIL import Image

    from ...utils.progress import progress as bar
    from ..heatmaps import load_image

    for i in bar(ids.tolist(), desc="thumbnails", unit="img", disable=None if progress else True):
        p = stage / thumb_path(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        load_image(dataset, i).resize((size, size), Image.Resampling.BICUBIC).save(p, format="JPEG", quality=85)


def _patch_tokens(stats: LatentStats) -> list[int]:
    cls_pos = (stats.meta.get("activations") or {}).get("cls_position")
    return [i for i, p in enumerate(stats.token_positions) if p != cls_pos]


def write_site(
    stats: LatentStats,
    out: str | os.PathLike,
    dataset: ImageDataset,
    *,
    overwrite: bool = False,
    thumb: int = 96,
    page_size: int = 100,
    chunk_bytes: int = 100_000,
    title: str | None = None,
    progress: bool = True,
    decoder: Any = None,
) -> SiteSummary:
    """Write the browser for `stats` to `out` (see the module docstring); `dataset` holds the images
    (`interpret.heatmaps.stats_dataset(stats)`). `thumb`: thumbnail side in pixels; `page_size`:
    latents per index page; `chunk_bytes`: target size of a latent data file; `decoder`: the SAE's
    decoder directions [n_latents, d] (`sae.W_dec`) for the index's map, or a str saying why there
    is none (shown on the map's card)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise SparsesteerError(f"{out} already exists; pass --overwrite to replace it")
    for name, v in (("thumb", thumb), ("page_size", page_size), ("chunk_bytes", chunk_bytes)):
        if v < 1:
            raise SparsesteerError(f"write_site: {name} must be >= 1, got {v}")
    if decoder is not None and not isinstance(decoder, str):
        decoder = np.asarray(decoder.detach().cpu().float() if hasattr(decoder, "detach") else decoder, np.float64)
        if decoder.ndim != 2 or len(decoder) != stats.n_latents:
            raise SparsesteerError(
                f"write_site: decoder of shape {tuple(decoder.shape)}, expected [{stats.n_latents}, d] (one row per latent)"
            )
    ids = check_images(stats, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        summary = _write(stats, stage, dataset, ids, thumb, page_size, chunk_bytes, title, progress, decoder)
        _swap(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return SiteSummary(out, *summary)


def _swap(stage: Path, out: Path) -> None:
    """Rename the staged site onto `out` (an old site is moved aside first, then removed)."""
    os.chmod(stage, 0o777 & ~io.umask())
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "site")
        os.replace(stage, out)
        shutil.rmtree(old)
    else:
        os.replace(stage, out)


def _write(stats, stage: Path, dataset, ids, thumb, page_size, chunk_bytes, title, progress, decoder) -> tuple:
    L = stats.n_latents
    table = latent_table(stats)
    keep = _patch_tokens(stats)
    classes = list(stats.meta.get("classes") or getattr(dataset, "classes", None) or [])
    lens_words = list(stats.lens.words) if stats.lens is not None else None
    words = lens_words if lens_words is not None else classes
    if stats.dissect is not None:  # search finds latents by label too: the label words join the list
        words = list(dict.fromkeys([*words, *stats.dissect.words]))

    def top_word(j: int) -> str:
        if stats.lens is not None and lens_words is not None and stats.lens.indices.shape[1]:
            return lens_words[int(stats.lens.indices[j, 0])]
        lab = int(table["label"][j])
        return classes[lab] if 0 <= lab < len(classes) else ("" if lab < 0 else str(lab))

    def write(rel: str, data: bytes) -> None:
        p = stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    # index pages, one set per order
    n_pages = -(-L // page_size)
    orders: dict[str, Any] = {}
    freq = table["frequency"]
    for name in ORDERS:
        ids_o = order(table, name)
        min_freq, n_live, max_support = [], [], []  # per page: what the index's filters skip pages by
        for p in range(n_pages):
            sl = ids_o[p * page_size : (p + 1) * page_size]
            rows = [
                [int(j), _sig(float(freq[j])), _sig(float(table["max"][j])), _sig(float(table["purity"][j]), 3),
                 top_word(int(j)), *(dissect_label(stats, int(j)) if stats.dissect is not None else ("", None)),
                 int(stats.image_count[j])]
                for j in sl
            ]  # fmt: skip
            write(f"data/pages/{name}-{p}.js", _js(f"pages/{name}-{p}", rows))
            shown = [_sig(float(freq[j])) for j in sl]  # the rounded values the rows show and filter on
            min_freq.append(_floor_sig(min(math.inf if v is None else v for v in shown)))
            n_live.append(int((stats.fire_count[sl] > 0).sum()))
            max_support.append(int(stats.image_count[sl].max()))
        orders[name] = {"n_pages": n_pages, "min_freq": min_freq, "n_live": n_live, "max_support": max_support}
    # latent chunks: size from the record of the latent with the most top images
    busiest = int(np.argmax(sum((t.images >= 0).sum(1) for t in stats.top.values())))
    labels = latent_labels(stats, table, classes)
    est = len(json.dumps(latent_record(stats, busiest, table, keep, labels), separators=(",", ":")))
    chunk = max(1, min(256, chunk_bytes // max(est, 1)))
    n_chunks = -(-L // chunk)
    for c in range(n_chunks):
        recs = [latent_record(stats, j, table, keep, labels) for j in range(c * chunk, min((c + 1) * chunk, L))]
        write(f"data/latents/{c}.js", _js(f"latents/{c}", recs))
    # search
    groups = 64
    write("data/words.js", _js("words", words))
    windex = _word_index(stats, table, words)
    for g in range(-(-len(words) // groups)):
        part = {str(w): windex.get(w, []) for w in range(g * groups, min((g + 1) * groups, len(words)))}
        write(f"data/words/{g}.js", _js(f"words/{g}", part))
    # metadata every page reads
    meta = stats.meta
    grid = math.isqrt(len(keep)) if keep and math.isqrt(len(keep)) ** 2 == len(keep) else None
    site_meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "title": title or f"{L} latents",
        "n_latents": L,
        "n_images": stats.n_images,
        "n_rows": stats.n_rows,
        "rankings": list(stats.top),
        "classes": classes,
        "lens": lens_words is not None,
        "dissect": stats.dissect is not None,
        "n_words": len(words),
        "word_groups": groups,
        "grid": grid,
        "thumb": thumb,
        "hist_centres": [_sig(float(c), 4) for c in stats.hist_centres],
        "chunk_size": chunk,
        "page_size": page_size,
        "top_n": int(stats.top["max"].images.shape[1]),
        "orders": orders,
        "sae": {k: public_name((meta.get("sae") or {}).get(k)) for k in ("path", "weights_sha256", "arch", "k")},
        "model": public_name(_model_id((meta.get("activations") or {}).get("model"))),
        "hook": (meta.get("activations") or {}).get("hook"),
        "tokens": (meta.get("activations") or {}).get("tokens"),
        "dataset": {k: public_name((meta.get("dataset") or {}).get(k)) for k in ("spec", "split")},
        "stats_sha256": meta.get("tensors_sha256"),
    }
    write("data/meta.js", _js("meta", site_meta))
    _write_overview(stats, write, labels, decoder)
    static = resources.files(__package__) / "static"
    for name in PAGES:
        write(name, (static / name).read_bytes())
    for name in ASSETS:
        write(f"assets/{name}", (static / name).read_bytes())
    _write_thumbs(stage, dataset, ids, thumb, progress)
    return L, len(ids), n_pages, n_chunks, chunk


def public_name(value: Any) -> Any:
    """`value` with every absolute local path in it (a model or SAE directory, a dataset spec's
    folder) cut to its last component: a site is meant to be shared, and the reader's machine does
    not have the writer's directories. Relative paths, hub ids and non-strings pass unchanged."""
    if not isinstance(value, str):
        return value
    return _ABS_PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1] or m.group(0), value)


def _model_id(model: Any) -> str | None:
    return model.get("id") if isinstance(model, dict) else model


def read_data(site: str | os.PathLike, key: str) -> Any:
    """The payload of SITE/data/KEY.js (what the page receives): for tests and tools."""
    text = (Path(site) / "data" / f"{key}.js").read_text()
    head = f"SS.put({json.dumps(key)},"
    if not text.startswith(head) or not text.rstrip().endswith(");"):
        raise SparsesteerError(f"{site}/data/{key}.js is not a browser data file")
    return json.loads(text[len(head) : text.rstrip().rindex(")")])
