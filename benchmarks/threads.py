"""Benchmark: torch intra-op threads beside DataLoader workers and beside outside load.

1. Caching (`cache_activations`, a random CLIP ViT-B/32 tower at 224 px, decoding in W worker
   processes): the main process's forward with all the CPUs' intra-op threads (torch's default)
   against CPUs - W threads (`utils.threads.intra_op_threads`, what the producer does), in ABAB
   pairs; images/s, medians.
2. The SAE training step (TopK, d 768, 3,072 latents, k 64, batch 4,096) idle and beside one
   busy process (a spinning Python loop: another user's job), with all CPUs' threads and with
   one fewer; seconds per step, medians. The spinning process runs only during the loaded runs.

Images: the real CIFAR-10 test JPEGs at ../shared/data/cifar10-jpeg when present, else generated.

    python benchmarks/threads.py [--images 96] [--pairs 3] [--workers 1] [--steps 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparsesteer.activations.produce import CacheConfig, cache_activations
from sparsesteer.models import load_backbone
from sparsesteer.models.tiny import make_random_clip
from sparsesteer.sae import SAEConfig
from sparsesteer.sae.train import Member, TrainConfig, train_step

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "test"


def dataset(root: Path, n: int) -> str:
    if CIFAR.is_dir():
        files = sorted(CIFAR.rglob("*.jpg"))[:n] or sorted(CIFAR.rglob("*.png"))[:n]
        source = "CIFAR-10 test JPEGs"
    else:
        files, source = [], "generated 32x32 JPEGs"
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "test" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.open(files[i]) if files else Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        img.convert("RGB").save(d / f"{i:05d}.jpg")
    print(f"# images: {n} {source}")
    return f"folder:{root}"


def cache_speed(bb, data: str, out: Path, workers: int, threads: int | None) -> float:
    cfg = CacheConfig(
        model=bb.model_id, dataset=data, split="test", hooks=("blocks.11.resid_post",), tokens="all",
        out=str(out), workers=workers, batch_size=32, intra_op_threads=threads,
    )  # fmt: skip
    t = time.perf_counter()
    cache = cache_activations(cfg, backbone=bb)
    return cache.n_images / (time.perf_counter() - t)


def spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def step_time(threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=4096, lr=5e-4, device="cpu", bf16=False)
    m = Member(SAEConfig(arch="topk", d_in=768, n_latents=3072, k=64), dev, cfg, n_classes=1)
    x = torch.randn(4096, 768)
    train_step(m, x, None, 5e-4, cfg, dev)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(m, x, None, 5e-4, cfg, dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    cpus = torch.get_num_threads()
    print(f"# torch {torch.__version__}, {cpus} intra-op threads by default, {args.workers} decoding worker(s)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bb = load_backbone(make_random_clip(tmp / "clip", "ViT-B/32"))
        data = dataset(tmp / "data", args.images)
        cache_speed(bb, data, tmp / "warm", args.workers, None)  # warm-up
        speeds: dict[str, list[float]] = {"all": [], "reduced": []}
        for p in range(args.pairs):
            for name, threads in (("all", cpus), ("reduced", None)):
                speeds[name].append(cache_speed(bb, data, tmp / f"{name}{p}", args.workers, threads))
        reduced = max(1, cpus - args.workers)
        a, r = statistics.median(speeds["all"]), statistics.median(speeds["reduced"])
        print("\n| caching, ViT-B/32, all tokens | images/s |")
        print("|---|---:|")
        print(f"| {cpus} intra-op threads + {args.workers} worker(s) | {a:.1f} |")
        print(f"| {reduced} intra-op thread(s) + {args.workers} worker(s) (the producer's default) | {r:.1f} |")
        print(f"| ratio (default / all threads) | **{r / a:.2f}x** |")
    torch.set_num_threads(cpus)
    print("\n| SAE step, 3,072 latents | idle (s) | beside 1 busy process (s) | slowdown |")
    print("|---|---:|---:|---:|")
    ctx = mp.get_context("spawn")
    for threads in sorted({cpus, max(1, cpus - 1)}, reverse=True):
        idle = step_time(threads, args.steps)
        stop = ctx.Event()
        proc = ctx.Process(target=spin, args=(stop,))
        proc.start()
        time.sleep(1.0)
        try:
            loaded = step_time(threads, args.steps)
        finally:
            stop.set()
            proc.join()
        print(f"| {threads} thread(s) | {idle:.3f} | {loaded:.3f} | {loaded / idle:.2f}x |", flush=True)
    torch.set_num_threads(cpus)


if __name__ == "__main__":
    main()
