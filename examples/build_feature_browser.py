"""Build the feature browser of an SAE: per-latent statistics over a dataset, then a static site with
a searchable index of latents and a page per latent (top images with patch heatmaps, histogram,
labels, decoder neighbours).

    python examples/build_feature_browser.py    # CIFAR-10 is downloaded to data/ on first use
    # then open runs/browser/index.html, or: sparsesteer browse --stats runs/browser-stats --out runs/browser --serve

The same as `sparsesteer cache`, `train`, `interpret` and `browse` (docs/interpret.md).
"""

import os
from pathlib import Path

from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.data import ensure_dataset
from sparsesteer.experiments.browse import BrowseConfig, run_browse
from sparsesteer.interpret.config import InterpretConfig
from sparsesteer.interpret.run import run_interpret
from sparsesteer.models import hook_name
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import TrainConfig, train

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
BLOCK, N_TRAIN, N_TEST, SAE_STEPS, EXPANSION, K = 7, 5000, 1000, 5000, 16, 64
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and generated images
    from _tiny import *  # noqa: F403

hook = hook_name(BLOCK)
for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    ensure_dataset(DATASET, split, data_root=DATA_ROOT)  # downloads a built-in dataset once, checksummed
    cache_activations(
        CacheConfig(
            model=MODEL, dataset=DATASET, split=split, data_root=DATA_ROOT, limit=n,
            hooks=(hook,), tokens="all", out=f"runs/browser-cache-{split}",
        )
    )  # fmt: skip

train(
    "runs/browser-cache-train", SAEConfig(arch="topk", k=K, expansion=EXPANSION), TrainConfig(steps=SAE_STEPS),
    out="runs/browser-sae", overwrite=True,
)  # fmt: skip

# Statistics over the test images: frequencies, histograms, top images per ranking with their
# per-patch activations, decoder neighbours (an SAE on the final CLS can add a concept lens: vocab=).
stats_dir, stats = run_interpret(
    InterpretConfig(
        sae="runs/browser-sae", activations="runs/browser-cache-test", out="runs/browser-stats",
        data_root=DATA_ROOT,
    )
)  # fmt: skip
site = run_browse(BrowseConfig(stats=str(stats_dir), out="runs/browser", data_root=DATA_ROOT, overwrite=True))
s = site["summary"]
print(f"{MODEL}, {DATASET} test ({N_TEST} images), {hook}: statistics in {stats_dir}")
print(f"feature browser of {s.n_latents} latents over {s.n_images} images ({s.n_pages} index pages):")
print(f"  open {Path(s.path, 'index.html').resolve()}")
