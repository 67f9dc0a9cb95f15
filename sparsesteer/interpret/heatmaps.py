"""Patch heatmaps and montages of a latent's top images (PNG, Pillow only).

    ds = stats_dataset(stats)                                 # the images, via the recorded spec
    heatmap(stats, latent=7, rank=0, dataset=ds).save("l7_0.png")
    montage(stats, latent=7, dataset=ds).save("l7.png")        # the top images side by side

A heatmap is the latent's activation on each patch token of the image (from the statistics: no
model run), laid out on the square patch grid, upsampled bilinearly to the image size and blended
over the image in viridis, as the browser draws it: the colour scale runs from the smallest to the
largest patch value of the latent's top images (a sparse latent's silent patches put its bottom at
0; a dense latent that fires on every patch starts at its weakest one, so its maps still show where
it fires most instead of one colour), and the overlay's opacity rises with the value (none at the
bottom of the scale). A montage carries the scale as a colour bar with its two ends.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..utils.errors import SparsesteerError

if TYPE_CHECKING:
    from PIL import Image

    from ..activations.pairing import ImageSet
    from ..data.datasets import ImageDataset
    from .stats import LatentStats

log = logging.getLogger(__name__)


def stats_images(stats: LatentStats) -> ImageSet:
    """The images the statistics index: meta["images"]; for statistics written before it, what their
    meta records (spec, split, class names, --limit sample: the number of images and the labels go
    unchecked, with a warning)."""
    from ..activations.pairing import ImageSet

    if stats.meta.get("images"):
        return ImageSet.from_json(stats.meta["images"])
    from ..data.datasets import classes_sha256

    rec = stats.meta.get("dataset") or {}
    classes = stats.meta.get("classes")
    return ImageSet(
        spec=rec.get("spec"),
        split=rec.get("split"),
        classes_sha256=classes_sha256(classes) if classes else None,
        subset=rec.get("subset"),
    )


def stats_dataset(
    stats: LatentStats,
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    allow: bool = False,
):
    """Open the dataset split the statistics were computed on (`dataset` overrides the recorded
    spec), the same `--limit` sample, checked to be the same images (`activations.pairing.open_images`:
    `allow` lets another spec or split with the same content through, with a warning); a missing
    dataset is one clear error naming the spec."""
    from ..activations.pairing import open_images

    ds, notes = open_images(stats_images(stats), "these statistics", dataset=dataset, data_root=data_root, allow=allow)
    for note in notes:
        log.warning("%s (run anyway: --allow-mismatch)", note)
    return ds


def load_image(dataset: ImageDataset, index: int) -> Image.Image:
    """Image `index` of the statistics' dataset in RGB; a missing or unreadable one is one clear error."""
    if not 0 <= index < len(dataset):
        raise SparsesteerError(
            f"the statistics reference image {index}, but {dataset!r} has {len(dataset)} images: "
            "the images are missing or the dataset is not the one the statistics were computed on"
        )
    try:
        return dataset[index].image.convert("RGB")
    except OSError as e:
        raise SparsesteerError(f"image {index} of {dataset!r} is missing or unreadable: {e}") from None


def patch_grid(stats: LatentStats, tokens_m: np.ndarray) -> np.ndarray:
    """[g, g] activations of the patch tokens (the CLS token, if present, dropped)."""
    cls_pos = (stats.meta.get("activations") or {}).get("cls_position")
    keep = [i for i, p in enumerate(stats.token_positions) if p != cls_pos]
    g = math.isqrt(len(keep))
    if g * g != len(keep) or g == 0:
        raise SparsesteerError(
            f"heatmap: {len(keep)} patch tokens per image do not form a square grid (a heatmap needs every patch)"
        )
    return np.asarray(tokens_m, np.float32)[keep].reshape(g, g)


def overlay(image: Image.Image, grid: np.ndarray, lo: float, hi: float) -> Image.Image:
    """`grid` upsampled to the image and blended over it in viridis on the scale lo..hi (see the
    module docstring): position t = (v - lo) / (hi - lo), opacity 0 at t <= 0, else 0.25 + 0.6 t."""
    from PIL import Image

    v = Image.fromarray(np.asarray(grid, np.float32), mode="F").resize(image.size, Image.Resampling.BILINEAR)
    t = _position(np.asarray(v, np.float32), lo, hi)
    rgb, a = _colour(t)
    base = np.asarray(image.convert("RGB"), np.float32)
    return Image.fromarray((base * (1 - a) + rgb * a).round().astype(np.uint8), mode="RGB")


def _position(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi > lo:
        return np.clip((v - lo) / (hi - lo), 0, 1)
    return (v > 0).astype(np.float32)


def _colour(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """viridis RGB (0..255) and overlay opacity [..., 1] at scale positions t (the browser's heatAlpha)."""
    from matplotlib import colormaps

    rgb = colormaps["viridis"](t)[..., :3] * 255
    a = np.where(t > 0, 0.25 + 0.6 * np.minimum(t, 1), 0.0)[..., None]
    return rgb, a


def latent_scale(stats: LatentStats, latent: int, ranking: str = "max") -> tuple[float, float]:
    """The colour scale of `latent`'s heatmaps: its smallest and largest patch value over its top
    images under `ranking` (0, 0 when it has none)."""
    top = stats.top[ranking]
    filled = top.images[latent] >= 0
    if not filled.any():
        return 0.0, 0.0
    vals = np.stack([patch_grid(stats, tok) for tok in top.tokens[latent][filled]])
    return float(vals.min()), float(vals.max())


def heatmap(
    stats: LatentStats, latent: int, rank: int, dataset: ImageDataset, *, ranking: str = "max", size: int = 224
) -> Image.Image:
    """The `rank`-th top image of `latent` with its patch heatmap, resized to size x size (colour scale:
    `latent_scale`, the same for all its top images)."""
    from PIL import Image

    top = stats.top[ranking]
    img = int(top.images[latent, rank])
    if img < 0:
        raise SparsesteerError(f"latent {latent} has fewer than {rank + 1} top images under {ranking!r}")
    image = load_image(dataset, img).resize((size, size), Image.Resampling.BICUBIC)
    lo, hi = latent_scale(stats, latent, ranking)
    return overlay(image, patch_grid(stats, top.tokens[latent, rank]), lo, hi)


def colour_bar(lo: float, hi: float, width: int, height: int = 18) -> Image.Image:
    """The key of a heatmap scale: the ramp at its overlay opacity over white, the two ends written."""
    from PIL import Image, ImageDraw

    t = np.broadcast_to(np.linspace(0, 1, width, dtype=np.float32), (height, width))
    rgb, a = _colour(t)
    bar = Image.fromarray((255 * (1 - a) + rgb * a).round().astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(bar)
    for text, anchor, x in ((f"{lo:.3g}", "lm", 3), (f"{hi:.3g}", "rm", width - 3)):
        draw.text((x, height // 2), text, fill=(0, 0, 0), anchor=anchor)
    return bar


def montage(
    stats: LatentStats, latent: int, dataset: ImageDataset, *, ranking: str = "max", size: int = 112, cols: int = 5
) -> Image.Image:
    """The latent's top images (with heatmaps when every patch is in the statistics) in a grid, and
    under it the colour bar of their common scale."""
    from PIL import Image

    top = stats.top[ranking]
    n = int((top.images[latent] >= 0).sum())
    rows = max(math.ceil(n / cols), 1)
    try:
        scale: tuple[float, float] | None = latent_scale(stats, latent, ranking)
    except SparsesteerError as e:
        if "square grid" not in str(e):
            raise
        scale = None  # not every patch in the statistics: the images alone
    bar = colour_bar(*scale, cols * size) if scale is not None and n else None
    sheet = Image.new("RGB", (cols * size, rows * size + (bar.height if bar else 0)), "white")
    for r in range(n):
        image = load_image(dataset, int(top.images[latent, r])).resize((size, size), Image.Resampling.BICUBIC)
        tile = overlay(image, patch_grid(stats, top.tokens[latent, r]), *scale) if scale is not None else image
        sheet.paste(tile, ((r % cols) * size, (r // cols) * size))
    if bar is not None:
        sheet.paste(bar, (0, rows * size))
    return sheet


def write_montages(
    stats: LatentStats, latents, dataset: ImageDataset, out: str | os.PathLike, *, ranking: str = "max"
) -> list[str]:
    """OUT/latent_{j}.png for each latent with at least one top image; return the file names."""
    from ..utils import io

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for j in latents:
        if stats.top[ranking].images[j, 0] < 0:
            continue
        name = f"latent_{int(j)}.png"
        with io.atomic_path(out / name) as tmp:
            montage(stats, int(j), dataset, ranking=ranking).save(tmp, format="PNG")
        names.append(name)
    return names
