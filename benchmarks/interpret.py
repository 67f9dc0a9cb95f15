"""Benchmark: the streaming statistics pass of `sparsesteer interpret` against the SAE encode of
the same rows alone.

A random all-token activation cache (ViT-B/32 shapes: 50 tokens of 768 per image, CLS at 0) and a
random TopK SAE; both runs in this process, same chunks:

- encode: the rows already in memory, `sae.encode` chunk by chunk (nothing else);
- stats: `latent_stats(sae, view)`: reading the rows from the memory-mapped cache, encoding,
  frequency / sum / max / histogram, and the running top-n per latent for the max, cls and patch
  rankings with per-patch activations.

The CPU speed of a shared VM drifts, so the runs alternate in ABBA pairs after an untimed warm-up;
the table shows median times and the median of the per-pair ratios (target: <= 1.5x).

    python benchmarks/interpret.py                         # defaults below
    python benchmarks/interpret.py --images 2000 --latents 49152 --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_cache(path: Path, n_images: int, tokens: int, d: int) -> Path:
    from sparsesteer.activations.cache import CacheSettings, CacheWriter

    rng = np.random.default_rng(0)
    s = CacheSettings(
        hooks=("blocks.11.resid_post",),
        d={"blocks.11.resid_post": d},
        tokens="all",
        token_positions=tuple(range(tokens)),
        cls_position=0,
        n_images=n_images,
        dtype="float32",
        model={"id": "random"},
        dataset={"name": "random"},
        split="train",
    )
    per = 200
    with CacheWriter.open(path, s) as w:
        for first in range(0, n_images, per):
            n = min(per, n_images - first)
            acts = rng.standard_normal((n * tokens, d), dtype=np.float32)
            w.write_shard(
                {"blocks.11.resid_post": acts},
                np.repeat(np.arange(first, first + n), tokens),
                np.tile(np.arange(tokens), n),
            )
        w.finish(rng.integers(0, 100, n_images))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.interpret.stats import latent_stats
    from sparsesteer.sae import SAEConfig, build

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=args.d, n_latents=args.latents, k=args.k))
    with tempfile.TemporaryDirectory() as tmp:
        view = ActivationCache.open(make_cache(Path(tmp) / "cache", args.images, args.tokens, args.d)).rows()
        chunk = max(args.batch_size // args.tokens, 1) * args.tokens
        chunks = [view.read(a, min(a + chunk, view.n_rows)) for a in range(0, view.n_rows, chunk)]

        def encode() -> float:
            t = time.perf_counter()
            with torch.no_grad():
                for x in chunks:
                    sae.encode(x)
            return time.perf_counter() - t

        def stats() -> float:
            t = time.perf_counter()
            latent_stats(sae, view, top_n=args.top_n, batch_size=args.batch_size, progress=False)
            return time.perf_counter() - t

        encode(), stats()  # warm-up
        enc, st, ratios = [], [], []
        for i in range(args.pairs):
            if i % 2 == 0:
                a, b = encode(), stats()
            else:
                b, a = stats(), encode()
            enc.append(a)
            st.append(b)
            ratios.append(b / a)
    print(
        f"{view.n_rows} rows ({args.images} images x {args.tokens} tokens) of {args.d}; {args.latents} latents, "
        f"k={args.k}, top-n {args.top_n}, batch {args.batch_size}, {args.threads} threads"
    )
    print("| run | median s | rows/s |")
    print("|---|---|---|")
    for name, ts in (("encode alone (rows in memory)", enc), ("statistics pass (read + encode + stats)", st)):
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {view.n_rows / m:,.0f} |")
    print(
        f"\nratio stats / encode: median {statistics.median(ratios):.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
