"""`sparsesteer browse`: the feature browser of `sparsesteer interpret`'s statistics. Registered
here (above every stage) because --serve --model chains models, SAE and steering
(experiments/browse.py); the site writer and the server live in interpret/browser/."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsesteer browse --stats runs/stats --out runs/site                  # open runs/site/index.html
  sparsesteer browse --stats runs/stats --out runs/site --serve --port 8000
  sparsesteer browse --stats runs/stats --sae runs/sae --out runs/site --serve --model openai/clip-vit-base-patch32
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter
    from .browse import BrowseConfig

    p = sub.add_parser(
        "browse",
        help="feature browser: a static site of latent statistics, optionally served with a live model",
        description="Write a static site (works from file:// and any static host) of the statistics of "
        "`sparsesteer interpret`: a paged, searchable index of latents and a page per latent (top images with "
        "heatmaps, histogram, labels, words, neighbours). --serve serves it on 127.0.0.1; with --model the "
        "server also steers a latent on a few images and lists the latents firing on a clicked patch.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(
        p,
        BrowseConfig,
        metavars={"stats": "STATS", "out": "SITE", "sae": "DIR", "model": "MODEL", "dataset": "D", "port": "P"},
    )
    p.set_defaults(func=run, output_args=("out",))


def run(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .browse import BrowseConfig, run_browse

    cfg = config_utils.from_args(BrowseConfig, args, where="browse")
    result = run_browse(cfg)
    s = result.get("summary")
    if s is not None:
        print(
            f"wrote {s.path}: {s.n_latents} latents ({s.n_pages} index pages per order, {s.n_chunks} data files of "
            f"{s.chunk_size} latents), {s.n_images} thumbnails; open {s.path / 'index.html'}"
        )
    return 0
