"""Benchmark: activation caching (`sparsesteer cache`) against a naive transformers loop.

Both run in this process on the same randomly initialised CLIP with ViT-B/32 shapes at 224 px
(`make_random_clip`), the same images and batch size:

- naive: decode + preprocess each batch in the main process (sparsesteer's Preprocessor, the same
  pixels), `model.vision_model(pixel_values, output_hidden_states=True)` over the whole tower, keep
  `hidden_states[L + 1]` (= blocks.L.resid_post) for all tokens as numpy in memory;
- sparsesteer: `cache_activations(...)` into a fresh directory: decoding in DataLoader workers,
  forward stopped after the hook, rows written as fsynced .npy shards with sha256 and manifest.

Tokens: `all` (50 rows of 768 per image) for both. Images: the real CIFAR-10 test JPEGs at
../shared/data/cifar10-jpeg when present, else generated 32 x 32 JPEGs. The speed of a shared
(virtual) CPU drifts by up to 2x over seconds to minutes, so the model first runs untimed for 20 s,
then each hook gets several (naive, producer) pairs in ABBA order; the table shows median speeds
and the median of the per-pair ratios.

Memory: the producer runs in a fresh child process for each of two dataset sizes; after loading
the model it resets the kernel's peak-RSS mark and reports the peak reached while caching (main
process; each decoding worker holds at most `prefetch` batches). It must not grow with the size:
it is one shard buffer (~64 MiB) plus the batches in flight.

    python benchmarks/cache.py                       # defaults below
    python benchmarks/cache.py --images 192 --pairs 4 --memory-sizes 512 2048 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
HOOKS = ("blocks.5.resid_post", "blocks.11.resid_post")
TOKENS = "all"


def dataset_spec(tmp: Path, n: int) -> tuple[str, str]:
    """(spec, split) of at least n images: real CIFAR-10 test JPEGs, or generated ones."""
    if (CIFAR10_JPEG / "test").is_dir():
        return f"folder:{CIFAR10_JPEG}", "test"
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp / "jpegs"
    for i in range(n):
        folder = root / "test" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return f"folder:{root}", "test"


def naive(bb, spec: str, split: str, hook: str, n: int, batch_size: int) -> float:
    """Images/s of the plain loop (see module docstring)."""
    import torch

    from sparsesteer.data import open_dataset

    ds = open_dataset(spec, split)
    layer = int(hook.split(".")[1])
    kept = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            images = [ds[i].image for i in range(start, min(start + batch_size, n))]
            pixels = torch.from_numpy(bb.preprocessor.batch(images))
            out = bb.model.vision_model(pixel_values=pixels, output_hidden_states=True)
            kept.append(out.hidden_states[layer + 1].reshape(-1, bb.d_model).numpy().copy())
    return n / (time.perf_counter() - t0)


def produce(bb, spec: str, split: str, hook: str, n: int, batch_size: int, workers: int, out: Path) -> float:
    """Images/s of `cache_activations` into a fresh directory (backbone loaded beforehand, as for naive)."""
    from sparsesteer.activations.produce import CacheConfig, cache_activations

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = CacheConfig(
        model=bb.model_id,
        dataset=spec,
        split=split,
        hooks=(hook,),
        tokens=TOKENS,
        out=str(out),
        batch_size=batch_size,
        limit=n,
        workers=workers,
    )
    cache = cache_activations(cfg, backbone=bb)
    dt = time.perf_counter() - t0
    assert cache.completed and cache.n_rows == n * 50
    return n / dt


def load(model_dir: Path, batch_size: int):
    """The backbone, warmed up with one untimed batch (first-call allocations and kernel setup)."""
    import torch

    from sparsesteer.models import load_backbone

    bb = load_backbone(model_dir)
    with torch.no_grad():
        bb.model.vision_model(pixel_values=torch.zeros(batch_size, 3, 224, 224))
    return bb


def burn(bb, batch_size: int, seconds: float) -> None:
    """Run the model untimed for a while: a CPU that boosts after idling settles to its sustained speed."""
    import torch

    x = torch.zeros(batch_size, 3, 224, 224)
    t0 = time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - t0 < seconds:
            bb.model.vision_model(pixel_values=x)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args: argparse.Namespace) -> None:
    """In a fresh process: load + warm up, reset the peak-RSS mark, cache N images, print the peak
    RSS reached while caching (VmHWM after `clear_refs`), so model loading does not hide growth."""
    bb = load(Path(args.model_dir), args.batch_size)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    base = _status_mib("VmRSS")
    ips = produce(bb, args.spec, args.split, HOOKS[0], args.child_memory, args.batch_size, args.workers, Path(args.out))
    print(
        json.dumps(
            {
                "images": args.child_memory,
                "rss_before_mib": base,
                "peak_rss_mib": _status_mib("VmHWM"),
                "images_per_s": ips,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=384, help="images per throughput measurement")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="decoding workers of the producer")
    p.add_argument("--pairs", type=int, default=4, help="(naive, producer) measurement pairs per hook, in ABBA order")
    p.add_argument("--memory-sizes", type=int, nargs=2, default=[512, 2048], help="two dataset sizes for peak RSS")
    p.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--split", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("SPARSESTEER_QUIET", "1")
    if args.child_memory:
        return child_memory(args)

    import torch
    import transformers

    from sparsesteer.models.tiny import make_random_clip

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        model_dir = make_random_clip(tmp / "clip-b32", "ViT-B/32")
        spec, split = dataset_spec(tmp, max(args.images, *args.memory_sizes))
        print(f"model: random CLIP ViT-B/32 (224 px, 50 tokens, d 768); images: {spec} [{split}]; tokens: {TOKENS}")
        print(
            f"batch size {args.batch_size}; producer workers {args.workers}; torch threads {torch.get_num_threads()}; "
            f"CPUs {os.cpu_count()}; {args.images} images per run, {args.pairs} pairs per hook\n"
        )

        bb = load(model_dir, args.batch_size)
        burn(bb, args.batch_size, seconds=20)
        rows = []
        for hook in HOOKS:
            speeds: dict[str, list[float]] = {"naive": [], "producer": []}
            for i in range(args.pairs):  # ABBA order: drift of a shared machine's speed hits both alike
                for kind in ("naive", "producer") if i % 2 == 0 else ("producer", "naive"):
                    if kind == "naive":
                        speeds[kind].append(naive(bb, spec, split, hook, args.images, args.batch_size))
                    else:
                        speeds[kind].append(
                            produce(bb, spec, split, hook, args.images, args.batch_size, args.workers, tmp / "out")
                        )
            ratios = [b / a for a, b in zip(speeds["naive"], speeds["producer"])]
            rows.append(
                (
                    hook,
                    np.median(speeds["naive"]),
                    np.median(speeds["producer"]),
                    np.median(ratios),
                    min(ratios),
                    max(ratios),
                )
            )
        del bb
        print(
            "| hook | tokens | naive loop (img/s, median) | sparsesteer cache (img/s, median) | ratio (median of pairs) "
            "| ratio range |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for hook, a, b, r, lo, hi in rows:
            print(f"| {hook} | {TOKENS} | {a:.1f} | {b:.1f} | {r:.2f}x | {lo:.2f}-{hi:.2f} |")

        print(
            "\n| images cached (blocks.5.resid_post, all tokens) | RSS before (MiB) | peak RSS while caching (MiB) | img/s |"
        )
        print("|---:|---:|---:|---:|")
        for n in args.memory_sizes:
            cmd = [
                sys.executable,
                __file__,
                "--child-memory",
                str(n),
                "--model-dir",
                str(model_dir),
                "--spec",
                spec,
                "--split",
                split,
                "--out",
                str(tmp / "mem"),
                "--batch-size",
                str(args.batch_size),
                "--workers",
                str(args.workers),
            ]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"| {n} | {res['rss_before_mib']:.0f} | {res['peak_rss_mib']:.0f} | {res['images_per_s']:.1f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
