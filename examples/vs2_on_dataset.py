"""Visual Sparse Steering (VS2) on a dataset: the final CLS vectors of train and test, a TopK SAE on
train, (lam, gamma) tuned on a validation part of train, zero-shot vs VS2 accuracy on test.

    python examples/vs2_on_dataset.py       # CIFAR-10 is downloaded to data/ on first use

The steps of `sparsesteer reproduce vs2` (which adds VS2++, PASS, the FVU gate, baselines and the
paper's numbers; docs/guides/vs2.md) written out for one dataset.
"""

import os

import torch

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.data import ensure_dataset
from sparsesteer.models import ZeroShotClassifier, final_resid, load_backbone
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.steering import vs2
from sparsesteer.steering.classify import CLSClassifier
from sparsesteer.steering.tuning import validation_split

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
N_TRAIN, N_TEST, SAE_STEPS, EXPANSION, K = 10000, 2000, 5000, 4, 64  # the paper's SAE for B/32: x4, k 64
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and generated images
    from _tiny import *  # noqa: F403

bb = load_backbone(MODEL)
hook = final_resid(bb.n_blocks)  # blocks.11.resid_post: the last block's output, before the head
x, y = {}, {}
for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    ensure_dataset(DATASET, split, data_root=DATA_ROOT)  # downloads a built-in dataset once, checksummed
    cfg = CacheConfig(
        model=MODEL, dataset=DATASET, split=split, data_root=DATA_ROOT, limit=n,
        hooks=(hook,), tokens="cls", out=f"runs/vs2-cache-{split}",
    )  # fmt: skip
    cache = cache_activations(cfg, backbone=bb)  # the model loaded above, not a second copy
    rows = cache.rows(hook).read_all()
    x[split], y[split] = rows.x, torch.as_tensor(rows.labels)
classes = ActivationCache.open("runs/vs2-cache-test").classes

# Tune on a validation part of TRAIN (never on test); the SAE sees only the rest of train.
fit, val = validation_split(len(y["train"]), 0.1, seed=0)
sae = train(
    x["train"][fit], SAEConfig(arch="topk", k=K, expansion=EXPANSION), TrainConfig(steps=SAE_STEPS),
    out="runs/vs2-sae", overwrite=True, metadata={"hook": hook, "tokens": "cls"},
).saes[0]  # fmt: skip
classifier = CLSClassifier(bb, ZeroShotClassifier.build(bb, classes, ["a photo of a {}."]))
grid = vs2.tune_vs2(classifier, sae, x["train"][val], y["train"][val])

zero_shot = classifier.accuracy(x["test"], y["test"])
steered = classifier.accuracy(vs2.vs2(sae, x["test"], grid.best_lam, grid.best_gamma), y["test"])
print(f"{MODEL} on {DATASET} test ({len(y['test'])} images); SAE {sae.n_latents} latents, k {K}")
print(f"| method | top-1 % | settings (tuned on {grid.n} validation images of train) |")
print("|---|---:|---|")
print(f"| CLIP zero-shot | {100 * zero_shot:.2f} | a photo of a {{}}. |")
print(f"| VS2 | {100 * steered:.2f} | lam={grid.best_lam}, gamma={grid.best_gamma} |")
