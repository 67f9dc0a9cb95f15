"""`sparsesteer reproduce EXPERIMENT`: one subcommand per paper, from the experiment registry."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..utils.errors import unknown
from . import registry


def register(sub: argparse._SubParsersAction) -> None:
    from ..utils import config as config_utils
    from ..utils.cli import HelpFormatter, add_overwrite

    experiments = {name: registry.get(name) for name in registry.names()}
    p = sub.add_parser(
        "reproduce",
        help="rerun a paper table end to end (ours beside the paper's numbers)",
        description="Rerun a paper's table with one command: data, caching, SAE training, tuning on a validation "
        "part of TRAIN, evaluation on test, results.json / results.md / plots. Rerunning skips stages that are "
        "up to date.\n\nexperiments:\n" + "\n".join(f"  {e.name}: {e.summary}" for e in experiments.values()),
        epilog="".join(e.examples for e in experiments.values()),
        formatter_class=HelpFormatter,
    )
    which = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for e in experiments.values():
        q = which.add_parser(
            e.name, help=e.summary, description=e.summary, epilog=e.examples, formatter_class=HelpFormatter
        )
        q.add_argument(
            "--out", required=True, metavar="DIR", help="run directory (results.md, results.json, plots/, caches, SAEs)"
        )
        q.add_argument(
            "--stage",
            default=None,
            metavar="NAME",
            help="run one stage alone: " + ", ".join(s.name for s in e.stages),
        )
        q.add_argument("--config", metavar="TOML", help="TOML/JSON file of settings; flags override it")
        add_overwrite(q)
        config_utils.add_arguments(q.add_argument_group("settings"), e.config)
        q.set_defaults(func=run)


def _run_of(experiment: registry.Experiment) -> Callable[[Path], bool]:
    """Does a folder hold a run of `experiment`? Its config.json (written first by every run) has
    that experiment's settings: more of them than of any other experiment's (a field added since
    the run does not make it foreign)."""

    def holds(out: Path) -> bool:
        try:
            keys = set(json.loads((out / "config.json").read_text()))
        except (OSError, ValueError, TypeError):
            return False

        def overlap(name: str) -> float:
            fields = {f.name for f in dataclasses.fields(registry.get(name).config)}
            return len(keys & fields) / len(keys | fields)

        best = max(registry.names(), key=overlap)
        return best == experiment.name and overlap(best) > 0.5

    return holds


def run(args: argparse.Namespace) -> int:
    from ..utils import config as config_utils
    from ..utils import outputs

    e = registry.get(args.experiment)
    data = config_utils.load_file(args.config) if args.config else {}
    where = f"{e.name} settings"
    cfg = config_utils.from_dict(e.config, {**data, **config_utils.overrides(args, e.config)}, where=where)
    if args.stage is not None and args.stage not in {s.name for s in e.stages}:  # before the inputs are checked
        raise unknown("stage", args.stage, [s.name for s in e.stages])
    own = outputs.OwnRun(f"reproduce {e.name} run", _run_of(e))  # continued: its current stages are skipped
    inputs = [getattr(cfg, k, None) for k in ("sae", "sae_dir", "vocab", "data_root")]
    outputs.claim(args.out, overwrite=args.overwrite, own=own, inputs=inputs)
    results = e.run(cfg, args.out, args.stage)
    if results.exists():
        print(results.read_text())
        print(f"wrote {results} and {results.with_suffix('.json')}")
    return 0
