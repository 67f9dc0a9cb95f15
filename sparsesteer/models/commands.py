"""`sparsesteer zeroshot`: flags -> `ZeroShotConfig` -> `zeroshot_run.zeroshot` (the workflow)."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLES = """examples:
  sparsesteer zeroshot --model openai/clip-vit-base-patch32 --dataset cifar100 --split test
  sparsesteer zeroshot --model openai/clip-vit-base-patch16 --dataset cub200 --split test --templates ensemble --out runs/zs
"""


def register(subparsers: Any) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter, add_overwrite
    from .zeroshot_run import ZeroShotConfig

    z = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification accuracy of a CLIP/SigLIP model on a dataset",
        description="Classify every image of a dataset split by cosine similarity between its image embedding and "
        "the text embeddings of class-name prompts. Writes zeroshot.json + zeroshot.md (top-1/top-5 and a "
        "per-class table) and predictions.jsonl (top-5 classes per image) to --out.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(z, ZeroShotConfig, metavars={"out": "DIR", "text_cache": "DIR", "limit": "N"})
    add_overwrite(z)
    z.set_defaults(func=run_zeroshot, output_args=("out", "text_cache"))


def run_zeroshot(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .zeroshot_run import TOPK, ZeroShotConfig, zeroshot

    run = zeroshot(config_utils.from_args(ZeroShotConfig, args, where="zeroshot settings"), overwrite=args.overwrite)
    r = run.result
    print(
        f"zero-shot {r.meta['dataset']} [{r.meta['split']}], {r.n_images} images, templates {r.meta['templates']}: "
        f"top-1 {100 * r.topk[1]:.2f} %, top-{TOPK} {100 * r.topk[TOPK]:.2f} %"
    )
    if run.skipped:
        print(
            f"{len(run.skipped)} unreadable images left out (listed in {run.predictions_path.parent / 'skipped.jsonl'})"
        )
    print(f"wrote {run.json_path}, {run.markdown_path}, {run.predictions_path}")
    return 0
