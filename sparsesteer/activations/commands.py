"""Subcommands of the activations stage: `sparsesteer verify` (and, later, `sparsesteer cache`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any


def register(subparsers: Any) -> None:
    from ..cli import HelpFormatter

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
