"""Subcommands of the activations stage: `sparsesteer cache` and `sparsesteer verify`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

CACHE_EXAMPLES = """examples:
  sparsesteer cache --model openai/clip-vit-base-patch32 --dataset cifar100 --split train \\
      --hook blocks.11.resid_post --tokens cls --out runs/c100-b32-cls
  sparsesteer cache --model facebook/dinov2-base --dataset cifar100 --split train --hook head --tokens cls --out runs/c100-dino
  sparsesteer cache --model MODEL --dataset folder:/data/imgs --split val --hook blocks.5.resid_post \\
      --hook blocks.8.resid_post --tokens all --dtype bfloat16 --out runs/patches

Rerun the same command to resume an interrupted run (settings must match; shards already written
are kept). See docs/caching.md for hooks, token selections and disk use.
"""


def register(subparsers: Any) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter, add_overwrite
    from .produce import CacheConfig, VerifyConfig

    c = subparsers.add_parser(
        "cache",
        help="run a model over a dataset and cache hook activations to disk",
        description="Run a vision transformer over a dataset split and write the activations at one or more "
        "hook points into an activation cache directory (manifest.json + .npy shards + labels.npy), one "
        "forward pass per batch for all hooks, stopping after the deepest. Resumable: rerunning the same "
        "command continues where an interrupted run stopped and produces the same bytes.",
        epilog=CACHE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(c, CacheConfig, flags={"hooks": "--hook"}, metavars={"out": "DIR", "limit": "N"})
    add_overwrite(c)
    c.set_defaults(func=run_cache)

    p = subparsers.add_parser(
        "verify",
        help="check every checksum of an activation cache",
        description="Hash every file an activation cache's manifest.json lists (activation shards, row "
        "index, labels) and compare with the recorded sha256. Exits 2 naming the first file that is "
        "missing, truncated or corrupted.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="activation cache directory (holds manifest.json)")
    config_utils.add_arguments(p, VerifyConfig, exclude=("dir",))
    p.set_defaults(func=run_verify)


def run_cache(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from ..utils import distributed, outputs
    from ..utils.device import resolve_device
    from .cache.writer import holds_cache
    from .produce import CacheConfig, cache_activations

    cfg = config_utils.from_args(CacheConfig, args, where="cache settings")
    # before the model loads; a cache there is resumed (its settings are compared once the model is known)
    outputs.claim(cfg.out, overwrite=args.overwrite, own=outputs.OwnRun("activation cache", holds_cache))
    world = distributed.init(resolve_device(cfg.device))  # a no-op outside torchrun
    try:
        cache = cache_activations(cfg)
    finally:
        distributed.shutdown()
    if world.rank != 0:
        return 0
    size = sum(f["bytes"] for s in cache.manifest["shards"] for f in s["files"].values())
    skipped = f", {len(cache.skipped)} unreadable images skipped (listed in manifest.json)" if cache.skipped else ""
    print(
        f"{cache.path}: {cache.n_images} images, {cache.n_rows:,} rows per hook ({', '.join(cache.hooks)}), "
        f"{cache.n_shards} shards, {size / 2**20:,.1f} MiB{skipped}"
    )
    check = cache.manifest.get("checks", {}).get("bf16_check")
    if cache.settings.forward == "bfloat16" and check:
        for hook, c in check.items():
            print(
                f"  bf16 forward vs float32 (first batch, {c['rows']} rows of {hook}): relative RMS difference "
                f"{c['rel_rms']:.2e}, max |diff| {c['max_abs']:.3g}, min cosine {c['cos_min']:.6f}"
            )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .cache import ActivationCache
    from .produce import VerifyConfig

    cfg = config_utils.from_args(VerifyConfig, args, where="verify settings")
    cache = ActivationCache.open(cfg.dir, verify="none")
    report = cache.verify()
    if cfg.json:
        print(json.dumps({"path": str(cache.path), **dataclasses.asdict(report)}))
        return 0
    state = "complete" if report.completed else f"INCOMPLETE ({report.images_done} of {report.n_images} images)"
    print(f"{cache.path}: OK, {report.files} files, {report.bytes:,} bytes checked; cache {state}")
    return 0
