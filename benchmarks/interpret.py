"""Benchmark: the whole `sparsesteer interpret` command, as a user runs it, against a plain SAE
encode of the same rows.

A random all-token activation cache (ViT-B/32 shapes: 50 tokens of 768 per image, CLS at 0) and a
random TopK SAE saved to disk:

- encode: the rows already in memory, `sae.encode` chunk by chunk (nothing else), in this process;
- interpret: `python -m sparsesteer interpret --sae SAE --activations CACHE --out OUT` with its
  defaults (statistics pass, 10 decoder neighbours, frequency plot, stats.safetensors), a fresh
  process timed from start to exit (imports and SAE loading included); its peak RSS from wait4.

The CPU speed of a shared VM drifts, so the runs alternate in ABBA pairs after an untimed warm-up
encode; the table shows median times and the median of the per-pair ratios (target: <= 1.5x), the
stored bytes per latent (stats.safetensors) and the peak RSS. `--profile` runs the command once in
this process under cProfile and prints where its time goes.

    python benchmarks/interpret.py                         # defaults below
    python benchmarks/interpret.py --images 2000 --latents 49152 --pairs 1
    python benchmarks/interpret.py --latents 49152 --profile
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
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


def run_interpret(sae_dir: Path, cache: Path, out: Path, threads: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the command in a fresh process."""
    cmd = [sys.executable, "-m", "sparsesteer", "interpret", "--sae", str(sae_dir), "--activations", str(cache)]
    cmd += ["--out", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"interpret failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def profile(sae_dir: Path, cache: Path, out: Path) -> None:
    import cProfile
    import pstats

    from sparsesteer.cli import main as cli

    argv = ["interpret", "--sae", str(sae_dir), "--activations", str(cache), "--out", str(out), "--overwrite"]
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(cli, argv)
    print(f"interpret in this process: {time.perf_counter() - t:.2f} s")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096, help="the command's default --batch-size")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="run the command once under cProfile instead")
    args = p.parse_args()

    import torch

    from sparsesteer.activations.cache import ActivationCache
    from sparsesteer.sae import SAEConfig, build

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sae = build(SAEConfig(arch="topk", d_in=args.d, n_latents=args.latents, k=args.k))
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp) / "cache", args.images, args.tokens, args.d)
        sae_dir = sae.save(Path(tmp) / "sae", hook="blocks.11.resid_post", tokens="all")
        out = Path(tmp) / "stats"
        if args.profile:
            profile(sae_dir, cache, out)
            return
        view = ActivationCache.open(cache).rows()
        chunk = max(args.batch_size // args.tokens, 1) * args.tokens
        chunks = [view.read(a, min(a + chunk, view.n_rows)) for a in range(0, view.n_rows, chunk)]

        def encode() -> float:
            t = time.perf_counter()
            with torch.no_grad():
                for x in chunks:
                    sae.encode(x)
            return time.perf_counter() - t

        encode()  # warm-up
        enc, cmd, ratios, rss = [], [], [], []
        for i in range(args.pairs):
            if i % 2 == 0:
                a = encode()
                b, r = run_interpret(sae_dir, cache, out, args.threads)
            else:
                b, r = run_interpret(sae_dir, cache, out, args.threads)
                a = encode()
            enc.append(a)
            cmd.append(b)
            rss.append(r)
            ratios.append(b / a)
        stored = (out / "stats.safetensors").stat().st_size
    print(
        f"{view.n_rows} rows ({args.images} images x {args.tokens} tokens) of {args.d}; {args.latents} latents, "
        f"k={args.k}, batch {args.batch_size}, {args.threads} threads; interpret with its defaults"
    )
    print("| run | median s | rows/s |")
    print("|---|---|---|")
    for name, ts in (("encode alone (rows in memory)", enc), ("`sparsesteer interpret` (whole command)", cmd)):
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {view.n_rows / m:,.0f} |")
    print(
        f"\nratio interpret / encode: median {statistics.median(ratios):.2f}x "
        f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        f"stats.safetensors: {stored:,} bytes = {stored / args.latents:,.0f} bytes per latent; "
        f"peak RSS of interpret: {max(rss) / 2**20:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
