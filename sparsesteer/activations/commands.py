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
    from ..data.batches import default_workers
    from ..data.datasets import default_data_root
    from ..models.hook_names import TOKEN_SELECTIONS
    from ..utils.cli import HelpFormatter
    from .cache import DTYPES
    from .produce import DEFAULT_SHARD_MB

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
    c.add_argument(
        "--model", required=True, help="Hugging Face hub id or save_pretrained directory (CLIP, SigLIP, DINOv2)"
    )
    c.add_argument("--dataset", required=True, help="built-in name (cifar100, ...), folder:PATH or hf:REPO_ID")
    c.add_argument("--split", required=True, help="dataset split, e.g. train or test")
    c.add_argument(
        "--hook",
        required=True,
        action="append",
        dest="hooks",
        metavar="HOOK",
        help="hook point, repeatable: blocks.{i}.resid_post|resid_pre|mlp_out|attn_out (0-based) or head",
    )
    c.add_argument(
        "--tokens",
        required=True,
        choices=TOKEN_SELECTIONS,
        help="rows kept per image: cls (1), patch (the patch tokens) or all (CLS, registers, patches); head needs cls",
    )
    c.add_argument(
        "--out", required=True, metavar="DIR", help="cache directory (created; resumed when it holds this cache)"
    )
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="storage dtype (the model runs in float32)")
    c.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    c.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="cache a class-stratified sample of N images, drawn with --limit-seed (default: all)",
    )
    c.add_argument("--limit-seed", type=int, default=0, help="seed of the --limit sample")
    c.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-decoding processes, 0 = decode in the main process "
        f"(default: half the CPUs, at most 8; here {default_workers()})",
    )
    c.add_argument(
        "--on-bad-image",
        default="error",
        choices=("error", "skip"),
        help="unreadable image: stop with an error, or skip it and list it in the manifest",
    )
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    c.add_argument(
        "--data-root",
        default=None,
        help=f"where built-in datasets live (default: $SPARSESTEER_DATA or {default_data_root()})",
    )
    c.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model (default: main)")
    c.add_argument(
        "--shard-images",
        type=int,
        default=None,
        metavar="N",
        help=f"images per shard (default: about {DEFAULT_SHARD_MB} MiB per shard; a resumed cache keeps its own)",
    )
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
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a sentence")
    p.set_defaults(func=run_verify)


def run_cache(args: argparse.Namespace) -> int:
    from .produce import cache_activations

    cache = cache_activations(
        args.model, args.dataset, args.split, args.hooks, args.tokens, args.out,
        dtype=args.dtype, batch_size=args.batch_size, limit=args.limit, limit_seed=args.limit_seed, workers=args.workers,
        on_bad_image=args.on_bad_image, device=args.device, data_root=args.data_root,
        revision=args.revision, shard_images=args.shard_images,
    )  # fmt: skip
    size = sum(f["bytes"] for s in cache.manifest["shards"] for f in s["files"].values())
    skipped = f", {len(cache.skipped)} unreadable images skipped (listed in manifest.json)" if cache.skipped else ""
    print(
        f"{cache.path}: {cache.n_images} images, {cache.n_rows:,} rows per hook ({', '.join(cache.hooks)}), "
        f"{cache.n_shards} shards, {size / 2**20:,.1f} MiB{skipped}"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from .cache import ActivationCache

    cache = ActivationCache.open(args.dir, verify="none")
    report = cache.verify()
    if args.json:
        print(json.dumps({"path": str(cache.path), **dataclasses.asdict(report)}))
        return 0
    state = "complete" if report.completed else f"INCOMPLETE ({report.images_done} of {report.n_images} images)"
    print(f"{cache.path}: OK, {report.files} files, {report.bytes:,} bytes checked; cache {state}")
    return 0
