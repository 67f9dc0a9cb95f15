"""Benchmark: `sparsesteer evaluate --suite default` (sae/judge.py) against the SAE encode of the same rows.

A TopK SAE of 3,072 latents (d_in 768, k 32, random init) over a cache of 10,000 rows: 200 labelled
images (10 classes) x 50 tokens (CLS + a 7 x 7 patch grid, ViT-B/32 shapes), so the default suite is
reconstruction (per token type), preservation, sparse probing and localisation. Timed:

- encode: `sae.encode` over every row, in the same batches, reading the same cache view;
- judge: the whole default suite (one streamed pass + the probe fits);
- probes: the probe fits inside judge (preservation's softmax probe; sparse probing's ranking and
  k-sparse probes), timed by wrapping them.

Target (issue 11): judge - probes <= 3x encode. Pairs run in ABBA order; medians are reported.

    python benchmarks/evaluate.py [--pairs 3] [--rows-per-image 50] [--images 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter
from sparsesteer.sae import SAEConfig, build
from sparsesteer.sae import judge as judge_mod


def make_cache(path: Path, images: int, side: int, d: int) -> Path:
    rng = np.random.default_rng(0)
    m = side * side + 1
    s = CacheSettings(
        hooks=("blocks.5.resid_post",),
        d={"blocks.5.resid_post": d},
        tokens="all",
        token_positions=tuple(range(m)),
        cls_position=0,
        n_images=images,
        dtype="float32",
        model={"id": "bench", "revision": "0", "arch": "clip"},
        dataset={"name": "bench"},
        split="train",
    )
    with CacheWriter.open(path, s) as w:
        acts = rng.normal(size=(images * m, d)).astype(np.float32)
        w.write_shard({"blocks.5.resid_post": acts}, np.repeat(np.arange(images), m), np.tile(np.arange(m), images))
        w.finish(rng.integers(0, 10, images))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--side", type=int, default=7)
    ap.add_argument("--latents", type=int, default=3072)
    ap.add_argument("--batch-size", type=int, default=4096)
    a = ap.parse_args()
    d = 768
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=d, n_latents=a.latents, k=32)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        view = ActivationCache.open(make_cache(Path(tmp) / "c", a.images, a.side, d)).rows()
        n = view.n_rows
        patches = list(range(1, a.side * a.side + 1))
        st = judge_mod.JudgeSettings(batch_size=a.batch_size)
        probe_time = [0.0]

        def timed(fn):
            def wrapper(*args, **kw):
                t = time.perf_counter()
                try:
                    return fn(*args, **kw)
                finally:
                    probe_time[0] += time.perf_counter() - t

            return wrapper

        judge_mod.fit_softmax_probe = timed(judge_mod.fit_softmax_probe)
        judge_mod.sparse_probing = timed(judge_mod.sparse_probing)

        @torch.no_grad()
        def encode() -> float:
            t = time.perf_counter()
            step = a.batch_size // 50 * 50
            for s in range(0, n, step):
                sae.encode(view.read(s, min(n, s + step)).float())
            return time.perf_counter() - t

        def judge() -> tuple[float, float]:
            probe_time[0] = 0.0
            t = time.perf_counter()
            judge_mod.judge(sae, view, settings=st, cls_position=0, patch_positions=patches)
            return time.perf_counter() - t, probe_time[0]

        encode()
        judge()  # warm-up
        enc, jud, prb = [], [], []
        for i in range(a.pairs):
            order = (encode, judge) if i % 2 == 0 else (judge, encode)
            for f in order:
                r = f()
                if f is encode:
                    enc.append(r)
                else:
                    jud.append(r[0])
                    prb.append(r[1])
        e, j, p = statistics.median(enc), statistics.median(jud), statistics.median(prb)
        ratios = [(jj - pp) / ee for jj, pp, ee in zip(jud, prb, enc)]
        print(f"rows {n:,} ({a.images} images x {a.side * a.side + 1} tokens), latents {a.latents:,}, d_in {d}")
        print("| step | median s |\n|---|---|")
        print(f"| SAE encode of the rows | {e:.3f} |\n| judge, default suite (all) | {j:.3f} |")
        print(f"| of which probe fits | {p:.3f} |\n| judge - probe fits | {j - p:.3f} |")
        print(f"ratio (judge - probes) / encode: median {statistics.median(ratios):.2f}x (pairs {ratios})")


if __name__ == "__main__":
    main()
