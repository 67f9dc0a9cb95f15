"""The README's Python tour, complete: load a CLIP, capture activations at any hook, train an SAE,
encode and decode, VS2 on final CLS vectors, and edits inside the forward pass.

    python examples/python_tour.py          # CIFAR-10 is downloaded to data/ on first use
"""

import os

import torch

from sparsesteer.data import ensure_dataset
from sparsesteer.models import ZeroShotClassifier, hook_name, load_backbone
from sparsesteer.models.hooks import Intervention
from sparsesteer.sae import SAEConfig, SparseAutoencoder
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.steering import features, vs2
from sparsesteer.steering.classify import CLSClassifier

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
BLOCK, N_TRAIN, SAE_STEPS, EXPANSION, K = 7, 2000, 5000, 4, 64
if os.environ.get("SPARSESTEER_EXAMPLE_TINY"):  # CI: a tiny random CLIP and generated images
    from _tiny import *  # noqa: F403

bb = load_backbone(MODEL)  # a hub id or a save_pretrained directory
final = hook_name(bb.n_blocks - 1)  # "blocks.11.resid_post" on ViT-B/32: the last block's output
mid = hook_name(BLOCK)  # "blocks.7.resid_post"
train_set = ensure_dataset(DATASET, "train", data_root=DATA_ROOT)
test_set = ensure_dataset(DATASET, "test", data_root=DATA_ROOT)

images = [test_set[i].image for i in range(8)]  # PIL images
pixel_values = bb.preprocessor.batch(images)  # -> [8, 3, 224, 224], the model's own preprocessing
acts = bb.run(pixel_values, capture=[final], tokens="cls")[final]  # [8, 768]; stops after that block


def train_rows(hook, tokens):
    """Activations of the first N_TRAIN train images at `hook`, one row per kept token."""
    rows = []
    for s in range(0, N_TRAIN, 64):
        px = bb.preprocessor.batch([train_set[i].image for i in range(s, min(s + 64, N_TRAIN))])
        rows.append(bb.run(px, capture=[hook], tokens=tokens)[hook].reshape(-1, bb.d_model))
    return torch.cat(rows)


acts_train = train_rows(final, "cls")
cfg = TrainConfig(steps=SAE_STEPS)  # batches of 1024 rows, Adam, lr 5e-4
result = train(acts_train, SAEConfig(arch="topk", k=K, expansion=EXPANSION), cfg, out="runs/sae", overwrite=True)
sae = SparseAutoencoder.load("runs/sae")  # also reads sparsify and SAELens checkpoints
codes = sae.encode(acts)  # SparseCodes(values [B, k], indices [B, k])
x_hat = sae.decode(codes)
steered = vs2.vs2(sae, acts, lam=2.1, gamma=1.5)  # VS2 on final-layer CLS vectors

classify = CLSClassifier(bb, ZeroShotClassifier.build(bb, test_set.classes, ["a photo of a {}."]))
print("zero-shot:", [test_set.classes[i] for i in classify.predict(acts)])
print("VS2:      ", [test_set.classes[i] for i in classify.predict(steered)])

# An SAE on every token of a middle block, then edits during the forward pass.
sae_mid = train(
    train_rows(mid, "all"),
    SAEConfig(arch="topk", k=K, expansion=EXPANSION),
    cfg,
    out="runs/sae-mid",
    overwrite=True,
    metadata={"hook": mid, "tokens": "all"},
).saes[0]

with bb.intervene(Intervention(mid, lambda a, pos: sae_mid.reconstruct(a), tokens="cls")):
    emb = bb.embed_images(pixel_values)  # the CLS token replaced by its SAE reconstruction

iv = features.feature_edit(mid, sae_mid, [12], 5.0, "set")  # f_12 := 5 on every token, SAE error kept
emb_steered = bb.embed_images(pixel_values, interventions=[iv])
print("embedding moved by", float((emb_steered - bb.embed_images(pixel_values)).norm(dim=-1).mean()))
