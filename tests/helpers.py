"""Builders shared by several test modules (import them as `from helpers import ...`; pytest puts
this folder on sys.path). Session-scoped fixtures built from them live in conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_folder_dataset(root: Path, n_per_class=(3, 2, 2), *, split="train", size=24, corrupt=(), seed=0) -> Path:
    """root/split/class_k/img_i.{png,jpg} with random pixels of varied sizes and modes; the images
    listed in `corrupt` (as (class, i)) are written as truncated JPEG bytes."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(n_per_class):
        folder = root / split / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size + int(rng.integers(0, 9)), size + int(rng.integers(0, 9))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            if (c, i) in corrupt:
                buf = Path(folder / f"img_{i}.jpg")
                Image.fromarray(pixels).save(buf, quality=90)
                buf.write_bytes(buf.read_bytes()[:40])  # header only: decoding fails
                continue
            im = Image.fromarray(pixels)
            if i % 3 == 1:
                im = im.convert("L")  # grayscale: the preprocessor converts to RGB
            im.save(folder / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    return root


def help_defaults(command: str) -> dict[str, str]:
    """Option -> its help text as --help prints it, for every option of `command`."""
    from sparsesteer.cli import HelpFormatter, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    fmt = HelpFormatter(command)
    return {
        a.option_strings[-1]: fmt._get_help_string(a) % {"default": a.default}
        for a in sub._actions
        if a.option_strings and a.dest != "help"
    }


def make_activation_cache(
    path: Path, n_images=300, positions=(0, 1, 2, 3), d=16, hooks=("blocks.2.resid_post",), labels=True, nan_rows=()
) -> Path:
    """A complete activation cache of random rows (shards of 100 images, image-major rows, labels in
    0..4), written through CacheWriter; the cache rows listed in `nan_rows` hold a NaN."""
    from sparsesteer.activations.cache import CacheSettings, CacheWriter

    rng = np.random.default_rng(0)
    s = CacheSettings(
        hooks=hooks,
        d={h: d for h in hooks},
        tokens="all",
        token_positions=positions,
        cls_position=0,
        n_images=n_images,
        dtype="float32",
        model={"id": "tiny-clip", "revision": "abc", "arch": "clip"},
        dataset={"name": "unit"},
        split="train",
    )
    with CacheWriter.open(path, s) as w:
        for first in range(0, n_images, 100):
            img = np.repeat(np.arange(first, first + 100), len(positions))
            tok = np.tile(positions, 100)
            acts = {h: rng.normal(size=(len(img), d)).astype(np.float32) for h in hooks}
            for row in nan_rows:
                if first * len(positions) <= row < (first + 100) * len(positions):
                    for a in acts.values():
                        a[row - first * len(positions), 1] = np.nan
            w.write_shard(acts, img, tok, check_finite=not nan_rows)
        w.finish(rng.integers(0, 5, n_images) if labels else None)
    return path
