"""`sparsesteer download NAME --data-root DIR [--force]`: fetch and verify a built-in dataset.

Imports stay light (no torch, no transformers) so that `--help` is fast.
"""

from __future__ import annotations

import argparse
import json

from ..utils.cli import HelpFormatter
from .datasets import default_data_root
from .download import REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    lines = "\n".join(f"  {name:<14} {src.provenance}" for name, src in REGISTRY.items())
    parser = subparsers.add_parser(
        "download",
        help="fetch a built-in dataset from its canonical source and verify its checksum",
        description=(
            "Download a built-in dataset into DATA_ROOT in its canonical layout, verify the published "
            "checksum, extract it safely and mark it complete. Rerunning is a no-op once verified.\n\n"
            f"datasets:\n{lines}"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("name", choices=list(REGISTRY), metavar="NAME", help="dataset: " + ", ".join(REGISTRY))
    parser.add_argument(
        "--data-root",
        default=str(default_data_root()),
        help="directory that holds the datasets ($SPARSESTEER_DATA or ~/.cache/sparsesteer/data)",
    )
    parser.add_argument("--force", action="store_true", help="download and extract again even if already verified")
    parser.set_defaults(func=run_download, output_args=("data_root",))


def run_download(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .download import download, marker_path

    folder = download(args.name, args.data_root, force=args.force)
    marker = marker_path(args.name, Path(args.data_root).expanduser())
    print(json.dumps({"dataset": args.name, "path": str(folder), "marker": str(marker)}))
    return 0
