"""Rows/s and GB/s of the trainer's shuffled stream over a float16 activation cache, against a plain
sequential read of the same shard files (the reference), in the same run. The figures feed
docs/scaling.md (read bandwidth: when a GPU would be read-bound).

    python benchmarks/stream_read.py [--rows 400000] [--d 768] [--repeats 3]

The cache is written to a temporary directory and read while in the page cache (a server's RAM
holds one layer of ImageNet x 50 tokens in float16: 98 GB); disk reads are slower (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sparsesteer.activations.cache import ActivationCache, CacheSettings, CacheWriter
from sparsesteer.activations.loader import ShuffledBatches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tpi, per_shard = 50, 1000
    n_images = args.rows // tpi
    with tempfile.TemporaryDirectory() as tmp:
        s = CacheSettings(
            hooks=("blocks.0.resid_post",),
            d={"blocks.0.resid_post": args.d},
            tokens="all",
            token_positions=tuple(range(tpi)),
            cls_position=0,
            n_images=n_images,
            dtype="float16",
            model={"id": "random", "revision": None, "arch": "clip"},
            dataset={"name": "random", "len": n_images},
            split="train",
            preprocessing={},
            classes=None,
        )
        rng = np.random.default_rng(0)
        with CacheWriter.open(Path(tmp) / "c", s) as w:
            for first in range(0, n_images, per_shard):
                n = min(per_shard, n_images - first)
                acts = rng.standard_normal((n * tpi, args.d), dtype=np.float32)
                img = np.repeat(np.arange(first, first + n), tpi)
                tok = np.tile(np.arange(tpi), n)
                w.write_shard({"blocks.0.resid_post": acts}, img, tok)
            w.finish()
        cache = ActivationCache.open(Path(tmp) / "c", verify="none")
        view = cache.rows()
        files = sorted((Path(tmp) / "c" / "shards" / "blocks.0.resid_post").glob("*.npy"))
        nbytes = view.n_rows * args.d * 2

        def stream() -> None:
            it = ShuffledBatches(view, args.batch, seed=0).iter_from(0)
            for _ in range(view.n_rows // args.batch):
                next(it)

        def plain() -> None:
            for f in files:
                np.array(np.load(f, mmap_mode="r"))

        t_stream, t_plain = [], []
        plain()  # warm the page cache
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            stream()
            t_stream.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain()
            t_plain.append(time.perf_counter() - t0)
        ts, tp = statistics.median(t_stream), statistics.median(t_plain)
        print(
            f"float16 cache, {view.n_rows:,} rows x d {args.d} ({nbytes / 1e9:.2f} GB), batch {args.batch}, page cache"
        )
        print("| read | rows/s | GB/s |")
        print("|---|---:|---:|")
        print(f"| ShuffledBatches (float32 batches out) | {view.n_rows / ts:,.0f} | {nbytes / ts / 1e9:.2f} |")
        print(
            f"| plain sequential np.load of the shards (reference) | {view.n_rows / tp:,.0f} | {nbytes / tp / 1e9:.2f} |"
        )
        print(f"stream / plain time: {ts / tp:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
