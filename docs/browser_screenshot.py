"""Make docs/browser.png: a latent page of the feature browser for the shipped testbed CLIP
(`--model testbed`) and a TopK SAE trained on its block-3 activations over 600 real CIFAR-10 test
JPEGs (../shared/data/cifar10-jpeg) with the testbed's planted mechanisms (a misleading word on a
third of the images, the magenta frame on a third). The page shown is the latent that best tells
framed images from the rest (Cohen's d over each image's largest activation): a planted, known
feature, so the picture shows a finding, not only the page.

    python docs/browser_screenshot.py            # needs chromium and playwright
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def run(argv: list[str]) -> None:
    from sparsesteer.cli import main

    if main(argv) != 0:
        sys.exit(f"failed: sparsesteer {' '.join(argv)}")


SPEC = f"planted:seed=3,word=0.33,words=misleading,cue_in=0.33,cue_out=0.33:folder:{CIFAR}"


def build(tmp: Path) -> Path:
    hook = "blocks.3.resid_post"
    run(["cache", "--model", "testbed", "--dataset", SPEC, "--split", "test", "--limit", "600", "--hook", hook,
         "--tokens", "all", "--out", str(tmp / "cache"), "--workers", "0"])  # fmt: skip
    run(["train", "--activations", str(tmp / "cache"), "--out", str(tmp / "sae"), "--arch", "topk", "--k", "16",
         "--n-latents", "512", "--steps", "800", "--batch-size", "1024", "--device", "cpu"])  # fmt: skip
    run(["interpret", "--sae", str(tmp / "sae"), "--activations", str(tmp / "cache"), "--out", str(tmp / "stats"),
         "--device", "cpu"])  # fmt: skip
    run(["browse", "--stats", str(tmp / "stats"), "--out", str(tmp / "site")])
    return tmp / "site"


def frame_latent(tmp: Path) -> int:
    """The latent whose per-image maximum best separates framed images (the planted cue) from the rest."""
    import numpy as np

    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.data import limit_dataset
    from sparsesteer.data.registry import open_dataset
    from sparsesteer.data.subset import Subset
    from sparsesteer.experiments.testbed.effects_compute import class_association
    from sparsesteer.sae import SparseAutoencoder

    view = ActivationCache.open(tmp / "cache").rows("blocks.3.resid_post", "all")
    sae = SparseAutoencoder.load(tmp / "sae", device="cpu")
    rows = sae.encode_dense(view.read(0, view.n_rows)).detach().numpy()
    images, inverse = np.unique(view.row_index(0, view.n_rows)[:, 0], return_inverse=True)
    codes = np.zeros((len(images), rows.shape[1]), dtype=rows.dtype)
    np.maximum.at(codes, inverse, rows)  # each image's largest activation per latent
    full = open_dataset(SPEC, "test")
    sample = limit_dataset(full, 600, 0)  # what `cache --limit 600` cached; the rows index into it
    keep = sample.indices if isinstance(sample, Subset) else np.arange(len(full))
    cue = full.attribute_array("cue")[keep][images]
    return int(np.argmax(class_association(codes, cue, 1)))


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        site = build(Path(tmp))
        first = frame_latent(Path(tmp))
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            pg = b.new_page(viewport={"width": 1280, "height": 1000})
            pg.goto((site / "latent.html").as_uri() + f"#{first}")
            pg.wait_for_selector(f"body[data-ready='{first}']")
            png = pg.screenshot(full_page=False)
            b.close()
    import io

    from PIL import Image

    # 256 colours: a third of the size, no visible difference for a page of text and thumbnails
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(ROOT / "docs" / "browser.png", optimize=True)
    print(f"wrote {ROOT / 'docs' / 'browser.png'} (latent {first})")


if __name__ == "__main__":
    main()
