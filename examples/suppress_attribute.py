"""Find the SAE latents tied to a spurious attribute and suppress them: Waterbirds, where the
background (land / water) is the attribute a CLIP should ignore when it names the bird.

    python examples/suppress_attribute.py   # Waterbirds is downloaded to data/ on first use

The steps of `sparsesteer reproduce disentangle --task waterbirds` (docs/guides/clip-sae-steering.md)
for one block and one n: an SAE on the block's tokens (train split), every latent scored by Cohen's d
between water and land backgrounds on the val split, the top n zeroed on the patch tokens, and
average and worst-group accuracy on test, before and after.
"""

import os

from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.data import ensure_dataset
from sparsesteer.data.batches import image_batches
from sparsesteer.interpret import latent_associations
from sparsesteer.models import ZeroShotClassifier, classify, group_accuracy, hook_name, load_backbone
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.steering import edits

MODEL, DATA_ROOT = "openai/clip-vit-base-patch32", "data"
BLOCK, N_TRAIN, SAE_STEPS, EXPANSION, K, N_SUPPRESS = 6, 2000, 5000, 16, 64, 16
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and a generated miniature Waterbirds
    from _tiny import *  # noqa: F403

bb = load_backbone(MODEL)
hook = hook_name(BLOCK)


def cache(split, limit=None):
    ensure_dataset("waterbirds", split, data_root=DATA_ROOT)  # downloads it once when it is missing
    cfg = CacheConfig(
        model=MODEL, dataset="waterbirds", split=split, data_root=DATA_ROOT, limit=limit,
        hooks=(hook,), tokens="all", out=f"runs/wb-cache-{split}",
    )  # fmt: skip
    return cache_activations(cfg, backbone=bb)


sae = train(
    cache("train", N_TRAIN).rows(hook), SAEConfig(arch="topk", k=K, expansion=EXPANSION),
    TrainConfig(steps=SAE_STEPS), out="runs/wb-sae", overwrite=True,
).saes[0]  # fmt: skip

# Rank latents on the val split (every image, in dataset order: cache image i = dataset image i).
val = ensure_dataset("waterbirds", "val", data_root=DATA_ROOT)
scores = latent_associations(cache("val").rows(hook), sae, val.attribute_array("place"), attribute="place")
top = scores.top(N_SUPPRESS, by="cohens_d", sign="absolute")  # per-image max of each latent, water vs land
print(f"latents most tied to the background: {top.units.tolist()} (Cohen's d {top.values.round(2).tolist()})")

# Zero-shot on test, unedited and with those latents zeroed on the patch tokens (SAE error term kept).
test = ensure_dataset("waterbirds", "test", data_root=DATA_ROOT)
groups = 2 * test.labels() + test.attribute_array("place")  # (bird, background) groups
classifier = ZeroShotClassifier.build(bb, test.classes, ["a photo of a {}."])
suppress = edits.zero_latents(hook, sae, top.units.tolist(), tokens="patch")
for name, interventions in (("unedited", []), (f"top {N_SUPPRESS} latents zeroed", [suppress])):
    batches = ((b.pixels, b.labels) for b in image_batches(test, bb.preprocessor, workers=0))
    logits, labels = classify(bb, classifier, batches, interventions=interventions)
    acc = group_accuracy(logits.argmax(-1), labels, groups)
    print(f"{MODEL}, waterbirds test, {hook} ({name}): average {100 * acc.average:.1f}%, "
          f"worst group {100 * acc.worst_group:.1f}%")  # fmt: skip
