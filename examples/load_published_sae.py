"""Load a published SAE from the Hugging Face hub and use it on a CLIP: which latents fire on a few
images, and how well it reconstructs the activations it was trained on.

    python examples/load_published_sae.py hf:ORG/REPO[/SUBFOLDER][@REVISION] [--hook blocks.9.resid_post]

Any SAE in a layout sparsesteer reads loads, from a directory, a checkpoint file or an `hf:` id:
ours, SAELens, sparsify, ViT-Prisma, dictionary_learning (sae-for-vlm) and ViSAEBench (docs/sae.md,
"Checkpoints" and "Hub ids"); nothing is unpickled. Most layouts record their hook (SAELens'
`blocks.9.hook_resid_post` reads as `blocks.9.resid_post`); sparsify's does not, so pass --hook.
The model must be the one the SAE was trained on.
"""

import argparse
import os

import torch

from sparsesteer.data import ensure_dataset
from sparsesteer.models import load_backbone
from sparsesteer.sae import SparseAutoencoder

MODEL, DATASET, DATA_ROOT = "openai/clip-vit-base-patch32", "cifar10", "data"
PUBLISHED_SAE = None  # give it on the command line
if os.environ.get(
    "SPARSESTEER_EXAMPLE_TINY"
):  # CI: a tiny random CLIP and a miniature SAELens SAE in a local hub cache
    from _tiny import *  # noqa: F403

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sae", nargs="?" if PUBLISHED_SAE else None, default=PUBLISHED_SAE, help="directory or hf: id")
parser.add_argument("--hook", default=None, help="hook point, when the SAE's files do not record it")
parser.add_argument("--model", default=MODEL)
args = parser.parse_args()

sae = SparseAutoencoder.load(args.sae)  # downloads into the hub cache once; offline mode reads the cache
hook = args.hook or sae.metadata.get("hook")
print(f"{args.sae}: {sae.cfg.arch}, {sae.n_latents} latents on d_in {sae.d_in}, hook {hook}")
source = sae.metadata.get("source", {})  # where it came from: repository, subfolder, the commit actually read
print(
    f"read from {source.get('hub')} / {source.get('subfolder')} at commit {source.get('revision')} ({source.get('format')} layout)"
)

bb = load_backbone(args.model)
test_set = ensure_dataset(DATASET, "test", data_root=DATA_ROOT)
images = [test_set[i].image for i in range(16)]
x = bb.run(bb.preprocessor.batch(images), [hook], tokens="all")[hook]  # [16, tokens, d]
rows = x.reshape(-1, bb.d_model)
with torch.no_grad():
    f = sae.encode_dense(rows)  # [rows, n_latents]
    x_hat = sae.decode(sae.encode(rows))
fvu = float(((rows - x_hat) ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum())
print(
    f"{args.model}, 16 {DATASET} test images, {hook}: FVU {fvu:.3f}, mean L0 {float((f > 0).sum(-1).float().mean()):.1f}"
)
cls = f.view(16, -1, sae.n_latents)[:, 0]  # the CLS token of each image
for i in range(3):
    v, j = cls[i].topk(5)
    latents = ", ".join(f"{a} ({b:.2f})" for a, b in zip(j.tolist(), v.tolist()))
    print(f"image {i} ({test_set.classes[test_set[i].label]}), strongest latents on CLS: {latents}")
