"""Steerability scoring speed: the runner against a naive loop, at ViT-B/32 shapes, steering at block 5.

The model is a randomly initialised CLIP with ViT-B/32 shapes (12 blocks, d 768, 224 px, 50 tokens;
`make_random_clip`), the SAE a vanilla ReLU SAE of the paper's x64 width (49,152 latents) and of x4
(3,072), at `blocks.5.resid_post`, all tokens, set mode, error term kept.

- naive: what one would write with the library's edit alone: one full forward per latent and strength
  (`embed_images` with `features.feature_edit`, which encodes and decodes the SAE on every token), plus
  one unsteered forward, then the metric.
- runner: `steering.steerability.measure_steerability`: one forward per image batch computes the
  residual at block 6's input, the activations at the hook and the unsteered embedding; the latents'
  codes are read once; every (latent, strength) pair then reruns only blocks 6-11, `--steer-batch`
  pairs stacked in one forward, the edit a rank-one update.

Both produce the same S (checked here), timed alternately in the same run; the table shows medians and
the ratio (target, issue 8: at least 2x). The runner's advantage grows with the SAE width (the naive
edit encodes and decodes every token at every forward).

    python benchmarks/steerability.py [--images 8] [--latents 4] [--widths 49152,3072] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sparsesteer.models import load_backbone
from sparsesteer.models.hook_names import hook_name
from sparsesteer.models.tiny import make_random_clip
from sparsesteer.sae import SAEConfig, build
from sparsesteer.steering.features import feature_edit
from sparsesteer.steering.settings import SteerabilitySettings
from sparsesteer.steering.steerability import mean_prob_change, measure_steerability, steerability

HOOK_BLOCK = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="images in the set (one batch)")
    ap.add_argument("--latents", type=int, default=4, help="latents scored per measurement")
    ap.add_argument("--strengths", default="-20,20,150")
    ap.add_argument("--widths", default="49152,3072", help="SAE widths (n_latents) to measure")
    ap.add_argument("--steer-batch", type=int, default=4, help="(latent, strength) pairs per runner forward")
    ap.add_argument("--concepts", type=int, default=1000, help="vocabulary size (random unit vectors)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="a CLIP directory instead of the random ViT-B/32 (smoke runs)")
    args = ap.parse_args()
    device = torch.device(args.device)
    strengths = tuple(float(s) for s in args.strengths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        bb = load_backbone(args.model or str(make_random_clip(tmp, "ViT-B/32")), device=device)
    hook = hook_name(min(HOOK_BLOCK, bb.n_blocks - 2))
    g = torch.Generator().manual_seed(0)
    px = torch.randn(args.images, 3, bb.image_size, bb.image_size, generator=g).to(device)
    V = torch.nn.functional.normalize(torch.randn(args.concepts, bb.d_embed, generator=g), dim=-1).to(device)
    settings = SteerabilitySettings(strengths=strengths, at_strength=strengths[-1], steer_batch=args.steer_batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"# Steerability scoring: random CLIP {'ViT-B/32 shapes' if args.model is None else args.model}, "
        f"{hook}, {args.images} images, {args.latents} latents x {len(strengths)} strengths, {args.concepts} concepts, "
        f"ReLU SAEs, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeats}\n"
    )
    print("| SAE latents | naive (s) | runner (s) | naive latents/s | runner latents/s | speed-up | max S diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for width in (int(w) for w in args.widths.split(",")):
        torch.manual_seed(0)
        sae = build(SAEConfig(arch="relu", d_in=bb.d_model, n_latents=width), device=device).eval()
        sae.metadata["hook"] = hook
        latents = torch.randperm(width, generator=g)[: args.latents].sort().values.tolist()

        def naive() -> torch.Tensor:
            with torch.no_grad():
                e0 = bb.embed_images(px)
                out = torch.zeros(len(latents), len(settings.all_strengths), dtype=torch.float64)
                for k, j in enumerate(latents):
                    for si, s in enumerate(settings.all_strengths):
                        e = bb.embed_images(px, interventions=[feature_edit(hook, sae, j, s, "set")])
                        out[k, si] = steerability(mean_prob_change(e0, e, V)).score
                return out

        def runner() -> torch.Tensor:
            return measure_steerability(bb, hook, [px], V, sae=sae, units=latents, settings=settings).score

        def timed(fn):
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            return time.perf_counter() - t, out

        with torch.no_grad():  # warm-up: first calls allocate and pick kernels
            bb.embed_images(px, interventions=[feature_edit(hook, sae, latents[0], 1.0, "set")])
        measure_steerability(bb, hook, [px], V, sae=sae, units=latents[:1], settings=settings)
        times_n, times_r, diff = [], [], 0.0
        for _ in range(args.repeats):
            tn, sn = timed(naive)
            tr, sr = timed(runner)
            times_n.append(tn)
            times_r.append(tr)
            diff = max(diff, float((sn - sr).abs().max()))
        n, r = statistics.median(times_n), statistics.median(times_r)
        k = len(latents)
        print(f"| {width:,} | {n:.2f} | {r:.2f} | {k / n:.3f} | {k / r:.3f} | **{n / r:.2f}x** | {diff:.1e} |")


if __name__ == "__main__":
    main()
