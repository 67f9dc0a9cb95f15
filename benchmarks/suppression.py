"""The suppression sweep: settings per second with the shared clean forward against a full forward per setting.

`reproduce disentangle|typographic` evaluates, per image batch, every setting (method x block x n).
The naive loop runs one full forward per setting; `suppression.sweep.predictions` runs one clean
forward that captures each swept block's `resid_pre`, then resumes each setting at its block
(`Backbone.embed_from`). Model: a randomly initialised CLIP with the exact ViT-B/32 shapes; one
top-k SAE (k 64, 3,072 latents, patch tokens) at each swept block; settings: the SAE's top-n latents
zeroed and the top-n neurons zeroed, for n in 1, 16 (4 settings per block). Both paths must give the
same predictions; the two paths alternate, medians of the pairs.

    python benchmarks/suppression.py [--batch 8] [--pairs 1] [--blocks 3,6,9] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from sparsesteer.experiments.clipsteer.suppression.sweep import _resumed, build_settings, predictions
from sparsesteer.models import load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.tiny import make_random_clip
from sparsesteer.models.zeroshot import ZeroShotClassifier
from sparsesteer.sae import SAEConfig, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--blocks", default="3,6,9")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    blocks = [int(b) for b in a.blocks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        bb = load_backbone(make_random_clip(f"{tmp}/clip", "ViT-B/32"), device=a.device)
        clf = ZeroShotClassifier.build(bb, ["cat", "dog", "bird", "ship"], ["a photo of a {}."])
        saes = {
            b: build(SAEConfig(arch="topk", k=64, d_in=bb.d_model, n_latents=3072)).eval().to(a.device) for b in blocks
        }
        units = {b: {"sae": list(range(16)), "random": [], "neurons": list(range(16)), "heads": []} for b in blocks}
        settings = build_settings(bb, {b: hook_name(b, "resid_post") for b in blocks}, saes, units, [1, 16], "patch")
        pixels = [torch.randn(a.batch, 3, bb.image_size, bb.image_size)]
        times: dict[str, list[float]] = {"naive": [], "shared": []}
        outs = {}
        for _ in range(a.pairs):
            for path in ("naive", "shared"):
                t0 = time.perf_counter()
                outs[path] = predictions(bb, clf, pixels, settings, naive=path == "naive")
                times[path].append(time.perf_counter() - t0)
        same = all(np.array_equal(outs["naive"][1][k], outs["shared"][1][k]) for k in outs["naive"][1])
        n = len(settings)
        fwd_shared = 1 + sum((bb.n_blocks - _resumed(bb, s)[0]) / bb.n_blocks for s in settings)
        print(f"{n} settings, blocks {blocks}, batch {a.batch}, same predictions: {same}")
        print("| path | full-forward equivalents | seconds / batch | settings / s | ratio |")
        print("|---|---:|---:|---:|---:|")
        med = {p: statistics.median(t) for p, t in times.items()}
        for path, fwd in (
            ("naive: one full forward per setting", 1 + n),
            ("shared clean forward, resumed", fwd_shared),
        ):
            key = "naive" if path.startswith("naive") else "shared"
            print(f"| {path} | {fwd:.1f} | {med[key]:.2f} | {n / med[key]:.2f} | {med['naive'] / med[key]:.2f}x |")


if __name__ == "__main__":
    main()
