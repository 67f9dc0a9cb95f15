"""`sparsesteer evaluate`: registered here (above every stage) so that the suites that need a model
(`spliced`, `monosemanticity`, experiments/judge.py) can run; the model-free work stays in
`sae/commands.py`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..sae.config import EvaluateConfig
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter, add_overwrite

    e = sub.add_parser(
        "evaluate",
        help="measure an SAE on activations (FVU, L0, dead/dense, ...)",
        description="Reconstruction and sparsity metrics of an SAE over activations; writes JSON and Markdown.",
        formatter_class=HelpFormatter,
    )
    config_utils.add_arguments(
        e,
        EvaluateConfig,
        metavars={"sae": "DIR", "activations": "PATH", "out": "PATH", "model": "MODEL", "mono_model": "MODEL"},
    )
    add_overwrite(e, "Replace the files of an earlier evaluation at --out (eval.json/.md, judge.json/.md).")
    e.set_defaults(func=run_evaluate, output_args=())  # --out may name a file: checked in run_evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from ..sae.commands import run_evaluate as run
    from ..sae.config import EvaluateConfig
    from ..utils import config as config_utils
    from .judge import model_suites

    cfg = config_utils.from_args(EvaluateConfig, args, where="evaluate")
    return run(args, model_suites(cfg))
