"""What VS2 adds to a forward pass: a ViT-B/32-shaped CLIP with and without VS2 on the final CLS.

The model is randomly initialised with ViT-B/32 shapes (12 blocks, d 768, 224 px, 50 tokens); the
SAE has the paper's B/32 shape (3,072 latents, k 64). The steered pass applies VS2 inside the
forward through an intervention on `blocks.11.resid_post` (CLS), exactly as the library does for
in-forward steering; the plain pass is the same forward without it. Both are timed alternately in
the same run; the table shows medians. Because the difference is far below the run-to-run noise of
a whole forward pass, the table also times VS2 by itself on the batch's final CLS vectors (what the
intervention computes), many times, as a fraction of the plain forward. Target (issue 4): VS2 adds
less than 2%.

    python benchmarks/vs2_overhead.py [--batch 64] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sparsesteer.models import load_backbone
from sparsesteer.models.tiny import make_random_clip
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering.inforward import vs2_cls
from sparsesteer.steering.vs2 import vs2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bb = load_backbone(str(make_random_clip(tmp, "ViT-B/32")), device=device)
    sae = build(SAEConfig(arch="topk", k=64, n_latents=3072, d_in=bb.d_model), device=device).eval()
    steer = [vs2_cls(bb.n_blocks - 1, sae, lam=2.1, gamma=1.5)]
    pixels = torch.randn(args.batch, 3, bb.image_size, bb.image_size, device=device)

    def timed(interventions) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        bb.embed_images(pixels, interventions=interventions)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(()), timed(steer)  # warm-up
    plain, steered = [], []
    for _ in range(args.repeats):
        plain.append(timed(()))
        steered.append(timed(steer))
    p, s = statistics.median(plain), statistics.median(steered)
    last = f"blocks.{bb.n_blocks - 1}.resid_post"
    cls = bb.run(pixels, capture=[last], tokens="cls")[last]
    alone = []
    with torch.no_grad():
        for _ in range(50):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            vs2(sae, cls, 2.1, 1.5)
            if device.type == "cuda":
                torch.cuda.synchronize()
            alone.append(time.perf_counter() - t)
    a = statistics.median(alone)
    print(
        f"# VS2 inference overhead: random CLIP ViT-B/32 shapes, batch {args.batch} at {bb.image_size} px, "
        f"SAE 768 -> 3072 (k 64), device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats}\n"
    )
    print("| forward | seconds / batch | images / s | overhead |")
    print("|---|---:|---:|---:|")
    print(f"| plain | {p:.4f} | {args.batch / p:.1f} | — |")
    print(f"| with VS2 on the final CLS | {s:.4f} | {args.batch / s:.1f} | {100 * (s / p - 1):+.2f}% (noise-level) |")
    print(
        f"| VS2 alone on the {args.batch} CLS vectors (median of 50) | {a:.5f} | — | {100 * a / p:+.3f}% of the plain forward |"
    )


if __name__ == "__main__":
    main()
