"""Does bfloat16 cost quality? The ViT forward (caching) and the SAE's latent selection, bf16 vs fp32.

A random CLIP with the ViT-B/32 vision tower (no pretrained weights reach this machine) runs over
CIFAR-10 test images (`../shared/data/cifar10-jpeg`, or random images when that folder is absent)
twice, in float32 and under CPU bf16 autocast; we report how far the cached residual-stream
activations of one block move (relative L2 error per row, cosine) and the time of each forward.
Then a TopK SAE trained in float32 on the float32 activations encodes the same rows in float32 and
under bf16 autocast (the training path's selection: bf16 matmul, float32 values for the chosen
latents): we report the share of (row, latent) pairs selected by both. Target (issue 14): >= 99%.

    python benchmarks/bf16_quality.py [--images 64] [--block 6] [--latents 3072] [--k 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparsesteer.models.tiny import make_random_clip
from sparsesteer.sae import SAEConfig, kernels
from sparsesteer.sae.train import TrainConfig, train
from sparsesteer.utils import precision

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "test"


def images(n: int, seed: int = 0) -> tuple[list[Image.Image], str]:
    files = sorted(CIFAR.glob("*/*.jpg")) if CIFAR.is_dir() else []
    if files:
        pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
        return [Image.open(files[i]).convert("RGB") for i in pick], f"CIFAR-10 test ({CIFAR})"
    g = np.random.default_rng(seed)
    return [Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)], "random images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--block", type=int, default=6, help="residual stream after this block (hidden_states index)")
    ap.add_argument("--latents", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import CLIPImageProcessor, CLIPVisionModel

    cpu = torch.device("cpu")
    imgs, source = images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_random_clip(Path(tmp) / "clip", "ViT-B/32")
        model = CLIPVisionModel.from_pretrained(path).eval()
        pixels = CLIPImageProcessor.from_pretrained(path)(images=imgs, return_tensors="pt")["pixel_values"]

        def forward(bf16: bool) -> torch.Tensor:
            with torch.inference_mode(), precision.autocast(bf16, cpu):
                hs = model(pixel_values=pixels, output_hidden_states=True).hidden_states[args.block]
            return hs.float().reshape(-1, hs.shape[-1])

        times: dict[bool, list[float]] = {False: [], True: []}
        acts = {}
        for _ in range(args.repeats):  # interleaved
            for bf16 in (False, True):
                t = time.perf_counter()
                acts[bf16] = forward(bf16)
                times[bf16].append(time.perf_counter() - t)
        a32, a16 = acts[False], acts[True]
        rel = (a16 - a32).norm(dim=1) / a32.norm(dim=1)
        cos = torch.nn.functional.cosine_similarity(a16, a32, dim=1)
        t32, t16 = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"# bf16 vs fp32: random CLIP ViT-B/32 (vision tower), {len(imgs)} images of {source}, residual stream "
            f"hidden_states[{args.block}], {a32.shape[0]:,} token rows x {a32.shape[1]}; bf16 = "
            f"{precision.describe(True, cpu)}; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
        )
        print("| quantity | value |")
        print("|---|---:|")
        print(f"| ViT forward fp32 / bf16 (s, median of {args.repeats}) | {t32:.2f} / {t16:.2f} ({t32 / t16:.2f}x) |")
        print(f"| cached activations: relative L2 error per row, median / max | {rel.median():.4f} / {rel.max():.4f} |")
        print(f"| cached activations: cosine(bf16, fp32) per row, min | {cos.min():.5f} |")

        sae_cfg = SAEConfig(arch="topk", k=args.k, n_latents=args.latents)
        cfg = TrainConfig(batch_size=256, steps=args.steps, bf16=False, checkpoint_every=0, log_every=args.steps)
        sae = train(a32, sae_cfg, cfg, Path(tmp) / "sae").saes[0]
        W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
        x_c = a32 - sae.b_dec.detach()
        exact = kernels.encode_select(x_c, W_enc, b_enc, args.k)
        with precision.autocast(True, cpu):
            half = kernels.encode_select(x_c, W_enc, b_enc, args.k)
        n = args.latents
        same = kernels.to_dense(torch.ones_like(exact.values), exact.indices, n).bool()
        same &= kernels.to_dense(torch.ones_like(half.values), half.indices, n).bool()
        share = float(same.sum()) / exact.indices.numel()
        # the SAE on bf16-cached activations (both precisions at once), for the caching question
        x_c16 = a16 - sae.b_dec.detach()
        with precision.autocast(True, cpu):
            both = kernels.encode_select(x_c16, W_enc, b_enc, args.k)
        same2 = kernels.to_dense(torch.ones_like(exact.values), exact.indices, n).bool()
        same2 &= kernels.to_dense(torch.ones_like(both.values), both.indices, n).bool()
        share2 = float(same2.sum()) / exact.indices.numel()
        print(
            f"| SAE (TopK k {args.k}, {n:,} latents, {args.steps} fp32 steps): same (row, latent) pairs, bf16 encoder "
            f"vs fp32 | **{100 * share:.2f}%** |"
        )
        print(f"| same, bf16-cached activations and bf16 encoder vs fp32 throughout | {100 * share2:.2f}% |")


if __name__ == "__main__":
    main()
