"""Steer one SAE feature inside the forward pass and watch the zero-shot predictions change.

    python examples/steer_feature.py        # CIFAR-10 is downloaded to data/ on first use

The same as `sparsesteer steer features --latent J --strength S --mode set` (docs/steering.md).
The SAE is trained here on every token of one block; pick the latent that fires most on the
images of one class, set it high on every token, and count the predictions that move.
"""

import os

import torch

from sparsesteer.data import ensure_dataset
from sparsesteer.models import ZeroShotClassifier, hook_name, load_backbone
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.steering import features

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
BLOCK, N_TRAIN, N_TEST, SAE_STEPS, EXPANSION, K = 7, 2000, 256, 5000, 16, 64
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and generated images
    from _tiny import *  # noqa: F403

bb = load_backbone(MODEL)
hook = hook_name(BLOCK)
train_set = ensure_dataset(DATASET, "train", data_root=DATA_ROOT)
test_set = ensure_dataset(DATASET, "test", data_root=DATA_ROOT)


def pixels(dataset, n):
    """The first n images as one tensor (use a DataLoader for more than a few thousand)."""
    return torch.as_tensor(bb.preprocessor.batch([dataset[i].image for i in range(n)]))


train_px = pixels(train_set, N_TRAIN)
rows = torch.cat([bb.run(train_px[s : s + 64], [hook])[hook].flatten(0, 1) for s in range(0, N_TRAIN, 64)])
sae = train(
    rows, SAEConfig(arch="topk", k=K, expansion=EXPANSION), TrainConfig(steps=SAE_STEPS),
    out="runs/steer-sae", overwrite=True, metadata={"hook": hook, "tokens": "all"},
).saes[0]  # fmt: skip

# The latent most active (mean over tokens) on the train images of class 0, relative to the rest.
labels = torch.as_tensor([train_set[i].label for i in range(N_TRAIN)])
with torch.no_grad():
    mean_code = sae.encode_dense(rows).view(N_TRAIN, -1, sae.n_latents).mean(1)
target = 0
latent = int((mean_code[labels == target].mean(0) - mean_code[labels != target].mean(0)).argmax())
strength = 5 * float(mean_code.max())  # well above what the latent reaches on its own

classifier = ZeroShotClassifier.build(bb, test_set.classes, ["a photo of a {}."])
test_px = pixels(test_set, N_TEST)
iv = features.steer_features(bb, sae, [latent], strength, mode="set")  # f_j := strength, error kept
emb = features.embed_steered(bb, test_px, [iv])  # unsteered and steered from one shared prefix
before = classifier.logits(emb.unsteered).argmax(-1)
after = classifier.logits(emb.steered).argmax(-1)

print(f"{MODEL}, {DATASET} test ({N_TEST} images): latent {latent} of {hook} set to {strength:.2f} on every token")
print(f"predictions changed: {int((before != after).sum())} of {N_TEST}")
for c, name in enumerate(test_set.classes):
    print(f"  predicted '{name}': {int((before == c).sum())} before, {int((after == c).sum())} after")
