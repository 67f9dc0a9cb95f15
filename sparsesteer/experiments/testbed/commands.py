"""`sparsesteer testbed build|measure`: train the testbed CLIP with planted mechanisms, and measure
its targets (experiments/testbed/)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sparsesteer download cifar10 && sparsesteer testbed build --dataset cifar10 --out runs/testbed
  sparsesteer testbed build --dataset folder:data/cifar10-jpeg --split train-all --out runs/testbed
  sparsesteer testbed measure --model runs/testbed/model --dataset cifar10 --out runs/testbed/eval
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ...utils import config as config_utils
    from ...utils.cli import HelpFormatter
    from .build import BuildConfig
    from .measure import MeasureConfig

    p = sub.add_parser(
        "testbed",
        help="the testbed CLIP: train it with planted mechanisms, measure its targets",
        description="A small CLIP trained on CIFAR-10 with two planted mechanisms whose ground truth is "
        "known per image: the true class word rendered on a share of the training images (a reading "
        "shortcut) and a magenta frame tied to the vehicle classes (a spurious cue).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = actions.add_parser(
        "build",
        help="train the testbed CLIP (seeded; a rerun resumes from the last checkpoint)",
        description="Train the testbed CLIP on DATASET [SPLIT] with the planted mechanisms, checkpointing "
        "as it goes (the same command again resumes, bit-identically on CPU), then measure its targets on "
        "the test split. OUT/model is a save_pretrained directory: give it as --model to any command.",
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(b, BuildConfig, metavars={"dataset": "D", "out": "DIR"}, exclude=("shape",))
    b.set_defaults(func=run_build, output_args=("out",))
    m = actions.add_parser(
        "measure",
        help="measure a testbed model's targets on a test split",
        description="Zero-shot top-1 clean and under a misleading word, and group accuracy with the frame "
        "independent of the class, each against its target.",
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(m, MeasureConfig, metavars={"model": "MODEL", "dataset": "D", "out": "DIR"})
    m.set_defaults(func=run_measure, output_args=("out",))


def run_build(args: argparse.Namespace) -> int:
    from ...utils import config as config_utils
    from .build import BuildConfig, build
    from .measure import MeasureConfig, measure

    cfg = config_utils.from_args(BuildConfig, args, where="testbed build")
    model = build(cfg)
    figures = measure(
        MeasureConfig(
            model=str(model),
            dataset=cfg.dataset,
            data_root=cfg.data_root,
            out=str(model.parent / "eval"),
            limit=cfg.limit,
            overwrite=True,  # OUT/eval belongs to the build: measured again on every rerun
        )
    )
    print(f"wrote {model} (give it as --model); targets: {model.parent / 'eval' / 'testbed_metrics.md'}")
    for row in figures["targets"]:
        print(
            f"  {row['target']}: {row['measured']:.4f} (needed >= {row['needed']:.2f}) {'pass' if row['pass'] else 'FAIL'}"
        )
    return 0


def run_measure(args: argparse.Namespace) -> int:
    from ...utils import config as config_utils
    from .measure import MeasureConfig, measure

    figures = measure(config_utils.from_args(MeasureConfig, args, where="testbed measure"))
    for row in figures["targets"]:
        print(
            f"  {row['target']}: {row['measured']:.4f} (needed >= {row['needed']:.2f}) {'pass' if row['pass'] else 'FAIL'}"
        )
    return 0
