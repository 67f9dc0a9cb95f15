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


def make_class_images(
    root: Path, splits: dict[str, int], classes, *, seed: int = 0, level: float | None = None
) -> Path:
    """root/split/class/i.png, 32 x 32: noise around a colour per class (channel class % 3, at
    `level`, or 100 + 40 * class index when None), so that classes are linearly separable."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((32, 32, 3))
                base[..., ci % 3] = 100 + 40 * ci if level is None else level
                img = (base + rng.normal(0, 40, (32, 32, 3))).clip(0, 255).astype("uint8")
                Image.fromarray(img).save(folder / f"{i}.png")
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


def make_celeba(data_root: Path, per_split=(("0", 16), ("1", 16), ("2", 8)), *, header=None, seed=0) -> Path:
    """A miniature aligned CelebA under data_root/celeba: random 32x40 JPEGs, list_attr_celeba.txt
    (attributes Blond_Hair, Male, Young unless `header` says otherwise) and list_eval_partition.txt;
    Male and Blond_Hair cycle so every (Male, Blond_Hair) group has images in every partition."""
    header = header or ["Blond_Hair", "Male", "Young"]
    rng = np.random.default_rng(seed)
    base = data_root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rows, parts = [], []
    k = 0
    for part, n in per_split:
        for i in range(n):
            k += 1
            name = f"{k:06d}.jpg"
            values = {"Blond_Hair": 1 if i % 2 else -1, "Male": 1 if (i // 2) % 2 else -1}
            vals = [values.get(h, 1 if rng.random() < 0.5 else -1) for h in header]
            rows.append(f"{name} " + " ".join(f"{v:2d}" for v in vals))
            parts.append(f"{name} {part}")
            pixels = rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "img_align_celeba" / name, quality=90)
    (base / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), " ".join(header), *rows]) + "\n")
    (base / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return data_root


def make_waterbirds(data_root: Path, per_split=((0, 16), (1, 16), (2, 8)), *, seed=0) -> Path:
    """A miniature Waterbirds under data_root/waterbird_complete95_forest2water2 with metadata.csv
    (img_id, img_filename, y, split, place, place_filename); every (y, place) group in every split."""
    rng = np.random.default_rng(seed)
    base = data_root / "waterbird_complete95_forest2water2"
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    k = 0
    for split, n in per_split:
        for i in range(n):
            k += 1
            y, place = i % 2, (i // 2) % 2
            rel = f"{'001.Albatross' if y else '017.Cardinal'}/{k}.jpg"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(base / rel, quality=90)
            lines.append(f"{k},{rel},{y},{split},{place},/x/{k}.jpg")
    (base / "metadata.csv").write_text("\n".join(lines) + "\n")
    return data_root
