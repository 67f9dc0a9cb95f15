"""Patch heatmaps and montages of a latent's top images (PNG, Pillow only).

    ds = stats_dataset(stats)                                 # the images, via the recorded spec
    heatmap(stats, latent=7, rank=0, dataset=ds).save("l7_0.png")
    montage(stats, latent=7, dataset=ds).save("l7.png")        # the top images side by side

A heatmap is the latent's activation on each patch token of the image (from the statistics: no
model run), laid out on the square patch grid, upsampled bilinearly to the image size, normalised
by the latent's largest activation over its top images, and blended over the image in red.
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


def overlay(image: Image.Image, grid: np.ndarray, vmax: float, *, alpha: float = 0.6) -> Image.Image:
    """`grid` upsampled to the image and blended over it in red (0 = the image, vmax = full red)."""
    from PIL import Image

    h = np.clip(grid / vmax, 0, 1) if vmax > 0 else np.zeros_like(grid)
    mask = Image.fromarray((h * 255).astype(np.uint8), mode="L").resize(image.size, Image.Resampling.BILINEAR)
    a = np.asarray(mask, np.float32)[..., None] / 255 * alpha
    base = np.asarray(image, np.float32)
    red = np.zeros_like(base)
    red[..., 0] = 255
    return Image.fromarray((base * (1 - a) + red * a).round().astype(np.uint8), mode="RGB")


def heatmap(
    stats: LatentStats, latent: int, rank: int, dataset: ImageDataset, *, ranking: str = "max", size: int = 224
) -> Image.Image:
    """The `rank`-th top image of `latent` with its patch heatmap, resized to size x size."""
    from PIL import Image

    top = stats.top[ranking]
    img = int(top.images[latent, rank])
    if img < 0:
        raise SparsesteerError(f"latent {latent} has fewer than {rank + 1} top images under {ranking!r}")
    image = load_image(dataset, img).resize((size, size), Image.Resampling.BICUBIC)
    vmax = float(top.tokens[latent].max())
    return overlay(image, patch_grid(stats, top.tokens[latent, rank]), vmax)


def montage(
    stats: LatentStats, latent: int, dataset: ImageDataset, *, ranking: str = "max", size: int = 112, cols: int = 5
) -> Image.Image:
    """The latent's top images (with heatmaps when every patch is in the statistics) in a grid."""
    from PIL import Image

    top = stats.top[ranking]
    n = int((top.images[latent] >= 0).sum())
    rows = max(math.ceil(n / cols), 1)
    sheet = Image.new("RGB", (cols * size, rows * size), "white")
    for r in range(n):
        try:
            tile = heatmap(stats, latent, r, dataset, ranking=ranking, size=size)
        except SparsesteerError as e:
            if "square grid" not in str(e):
                raise
            tile = load_image(dataset, int(top.images[latent, r])).resize((size, size), Image.Resampling.BICUBIC)
        sheet.paste(tile, ((r % cols) * size, (r // cols) * size))
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
