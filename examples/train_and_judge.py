"""Cache one layer of a CLIP, train an SAE on it, and judge the SAE on held-out images.

    python examples/train_and_judge.py      # CIFAR-10 is downloaded to data/ on first use

The same as `sparsesteer cache`, `sparsesteer train` and `sparsesteer evaluate --suite default`
(see docs/caching.md and docs/sae.md); the caches resume when rerun.
"""

import os

from sparsesteer.activations.cache import ActivationCache
from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.data import ensure_dataset
from sparsesteer.models import hook_name
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.judge import comparison_markdown, judge
from sparsesteer.sae.train import TrainConfig, train

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
BLOCK, N_TRAIN, N_TEST, SAE_STEPS, EXPANSION, K = 7, 5000, 1000, 5000, 16, 64
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and generated images
    from _tiny import *  # noqa: F403

hook = hook_name(BLOCK)  # blocks.7.resid_post: the residual stream after block 7 (0-based)
for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    ensure_dataset(DATASET, split, data_root=DATA_ROOT)  # downloads a built-in dataset once, checksummed
    cache_activations(
        CacheConfig(
            model=MODEL,
            dataset=DATASET,
            split=split,
            data_root=DATA_ROOT,
            limit=n,  # a seeded sample of n images
            hooks=(hook,),
            tokens="all",  # CLS and every patch token
            dtype="float16",
            out=f"runs/cache-{split}",
        )
    )

# Train on the cached rows; the SAE records the cache's model, hook and tokens (its provenance).
result = train(
    "runs/cache-train",
    SAEConfig(arch="topk", k=K, expansion=EXPANSION),
    TrainConfig(steps=SAE_STEPS),
    out="runs/sae-judged",
    overwrite=True,
)
sae = result.saes[0]
print(f"trained {sae.n_latents} latents on {hook} in {result.steps} steps; final metrics: {result.metrics[0]}")

# Judge on the test images: reconstruction per token type, preservation and sparse probes of the
# class labels, localisation of patch latents (docs/sae.md, "Judging an SAE").
test = ActivationCache.open("runs/cache-test")
view = test.rows(hook)
results = judge(sae, view, cls_position=0, patch_positions=range(1, test.tokens_per_image))
print(comparison_markdown({"sae-judged": results}, title=f"{MODEL}, {DATASET} test, {hook}, {len(view)} rows"))
