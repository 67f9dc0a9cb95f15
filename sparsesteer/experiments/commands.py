"""`sparsesteer reproduce EXPERIMENT`: one command per paper table."""

from __future__ import annotations

import argparse

EXPERIMENTS = {
    "vs2": "Table 1 (+ Table 7) of Visual Sparse Steering: zero-shot, SAE_REC, VS2, VS2+PASS, VS2++ and baselines",
}

EXAMPLES = """examples:
  sparsesteer reproduce vs2 --model openai/clip-vit-base-patch32 --dataset cifar100 --out runs/vs2-c100-b32
  sparsesteer reproduce vs2 --model openai/clip-vit-base-patch16 --dataset cub200 --out runs/vs2-cub-b16
  sparsesteer reproduce vs2 --dataset folder:/data/pets --retriever clip --no-in-forward --out runs/pets
  sparsesteer reproduce vs2 --out runs/vs2-c100-b32 --stage report      # one stage alone
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter
    from .vs2_config import VS2Config

    p = sub.add_parser(
        "reproduce",
        help="rerun a paper table end to end (ours beside the paper's numbers)",
        description="Rerun a paper's table with one command: data, caching, SAE training, tuning on a validation "
        "part of TRAIN, evaluation on test, results.json / results.md / plots. Rerunning skips stages that are "
        "up to date.\n\nexperiments:\n" + "\n".join(f"  {k}: {v}" for k, v in EXPERIMENTS.items()),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which table")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="run directory (results.md, results.json, plots/, caches, SAEs)"
    )
    p.add_argument(
        "--stage",
        default=None,
        metavar="NAME",
        help="run one stage alone: cache, retrieval, sae, zeroshot, tune, evaluate, inforward, report",
    )
    p.add_argument("--config", metavar="TOML", help="TOML/JSON file of settings; flags override it")
    config_utils.add_arguments(p.add_argument_group("settings"), VS2Config)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from .vs2_config import VS2Config
    from .vs2_table import VS2Experiment

    data = config_utils.load_file(args.config) if args.config else {}
    cfg = config_utils.from_dict(VS2Config, {**data, **config_utils.overrides(args, VS2Config)}, where="vs2 settings")
    results = VS2Experiment(cfg, args.out).run(args.stage)
    if results.exists():
        print(results.read_text())
        print(f"wrote {results} and {results.with_suffix('.json')}")
    return 0
