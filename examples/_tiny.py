"""The tiny stand-ins CI runs every example with (`SPARSESTEER_EXAMPLE_TINY=1`).

An example starts with its real settings (a hub model, a built-in dataset, a block of a 12-block
ViT) and, when that variable is set, replaces them with `from _tiny import *`: a tiny random CLIP
(`sparsesteer.models.tiny.make_tiny_clip`: 3 blocks, width 32, 32 px images) and tiny generated
image folders, written once under runs/example-tiny/ of the current directory. Everything after
that line is the same code path a real run takes; only the numbers it prints mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sparsesteer.models.tiny import make_tiny_clip

ROOT = Path("runs/example-tiny")
CLASSES = ("cat", "dog", "ship")


def _images(folder: Path, n: int, colour: int, rng: np.random.Generator, *, stripe: bool = False) -> None:
    """n noisy 32 x 32 images of one dominant colour channel (a learnable class signal); `stripe`
    paints a bright band across the top (an attribute that SAE latents can pick up)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.zeros((32, 32, 3))
        base[..., colour] = 140
        img = base + rng.normal(0, 40, (32, 32, 3))
        if stripe:
            img[:8] = 255
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def _folder_dataset(root: Path, per_class: dict[str, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            _images(root / split / name, n, c, rng)
    return root


def _waterbirds(data_root: Path, seed: int) -> Path:
    """A miniature Waterbirds in its published layout (metadata.csv: y = bird, place = background,
    split 0/1/2 = train/val/test); the background shows as a stripe, so it is learnable."""
    rng = np.random.default_rng(seed)
    base = data_root / "waterbird_complete95_forest2water2"
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    k = 0
    for split, n in ((0, 24), (1, 48), (2, 48)):
        for i in range(n):
            k += 1
            y, place = i % 2, (i // 2) % 2
            rel = f"{'001.Albatross' if y else '017.Cardinal'}/{k}.png"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            img = np.zeros((32, 32, 3))
            img[..., 2 if y else 0] = 140
            img = img + rng.normal(0, 40, (32, 32, 3))
            if place:
                img[:8] = 255
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(base / rel)
            lines.append(f"{k},{rel},{y},{split},{place},/x/{k}.jpg")
    (base / "metadata.csv").write_text("\n".join(lines) + "\n")
    return data_root


def _hub_cache(hub: Path) -> Path:
    """A miniature "published" SAE for the tiny CLIP, in SAELens' layout (cfg.json +
    sae_weights.safetensors, hook `blocks.1.hook_resid_post`) inside a Hugging Face hub cache laid
    out as huggingface_hub writes it (refs/main -> snapshots/<commit>/), so that `hf:` ids resolve
    offline through `huggingface_hub.snapshot_download` exactly as a downloaded repository does."""
    import torch

    from sparsesteer.sae import SAEConfig, build
    from sparsesteer.sae.export import export_sae

    commit = "0" * 40
    repo = hub / ("models--" + PUBLISHED_REPO.replace("/", "--"))
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", k=8, n_latents=128, d_in=32)).eval()
    sae.metadata.update(hook="blocks.1.resid_post", tokens="all")
    export_sae(sae, "saelens", repo / "snapshots" / commit / "blocks.1.hook_resid_post")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return hub


def _once(path: Path, make) -> Path:
    done = path.with_name(path.name + ".done")
    if not done.exists():
        make(path)
        done.touch()
    return path


PUBLISHED_REPO = "sparsesteer-examples/tiny-clip-saes"
MODEL = str(_once(ROOT / "clip", make_tiny_clip))
DATASET = "folder:" + str(_once(ROOT / "images", lambda p: _folder_dataset(p, {"train": 40, "test": 20}, 0)))
DATA_ROOT = str(_once(ROOT / "data", lambda p: _waterbirds(p, 1)))
BLOCK = 1  # a middle block of the tiny model's 3 (ViT-B/32 has 12)
N_TRAIN, N_TEST = 120, 60  # images (the whole tiny splits)
SAE_STEPS = 300  # training steps (a real run takes at least 5,000)
EXPANSION, K = 4, 8  # SAE width = EXPANSION x the model width; active latents per token

# `hf:` ids read from this hub cache (no network): huggingface_hub looks its cache up at call time.
import huggingface_hub.constants  # noqa: E402

huggingface_hub.constants.HF_HUB_CACHE = str(_once(ROOT / "hub", _hub_cache))
PUBLISHED_SAE = f"hf:{PUBLISHED_REPO}/blocks.1.hook_resid_post"
