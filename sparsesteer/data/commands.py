"""`sparsesteer download NAME --data-root DIR [--force]`: fetch and verify a built-in dataset.

Imports stay light (no torch, no transformers) so that `--help` is fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..utils import config as config_utils
from ..utils.cli import HelpFormatter
from .download import MANUAL, REGISTRY, SHIPPED


@dataclass(frozen=True, kw_only=True)
class DownloadConfig:
    """Settings of `sparsesteer download`."""

    name: str
    """Built-in dataset to fetch."""
    data_root: str | None = None
    """Directory that holds the datasets; None = $SPARSESTEER_DATA or ~/.cache/sparsesteer/data."""
    force: bool = False
    """Download and extract again even if already verified."""


def register(subparsers: argparse._SubParsersAction) -> None:
    lines = "\n".join(
        [f"  {name:<14} {src.provenance}" for name, src in REGISTRY.items()]
        + [f"  {name:<14} not scriptable: fetch it by hand (the command says where)" for name in MANUAL]
        + [f"  {name:<14} {note}" for name, note in SHIPPED.items()]
    )
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
    config_utils.add_arguments(parser, DownloadConfig, exclude=("name",), metavars={"data_root": "DIR"})
    names = [*REGISTRY, *MANUAL, *SHIPPED]
    parser.add_argument("name", choices=names, metavar="NAME", help="dataset: " + ", ".join(names))
    parser.set_defaults(func=run_download, output_args=("data_root",))


def run_download(args: argparse.Namespace) -> int:
    from .datasets import default_data_root
    from .download import download, marker_path

    cfg = config_utils.from_args(DownloadConfig, args, where="download settings")
    root = Path(cfg.data_root).expanduser() if cfg.data_root else default_data_root()
    folder = download(cfg.name, root, force=cfg.force)
    if cfg.name in SHIPPED:
        print(json.dumps({"dataset": args.name, "path": str(folder), "shipped": True, "note": SHIPPED[cfg.name]}))
        return 0
    marker = marker_path(cfg.name, root)
    print(json.dumps({"dataset": args.name, "path": str(folder), "marker": str(marker)}))
    return 0
