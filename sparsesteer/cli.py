"""The `sparsesteer` command line: one entry point, one subcommand per pipeline stage.

Each stage owns its subcommands in a `commands.py` next to its code; this file only lists them.
A command module exposes `register(subparsers)`, which adds its parsers and sets `func` to the
function that runs them. Heavy imports (torch, transformers) happen inside those functions so that
`--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .utils.cli import HelpFormatter, check_outputs, os_error_message
from .utils.errors import SparsesteerError

# Order = order in `sparsesteer --help`, which follows the pipeline.
COMMAND_MODULES = [
    "sparsesteer.data.commands",  # download
    "sparsesteer.models.commands",  # zeroshot
    "sparsesteer.activations.commands",  # cache, verify
    "sparsesteer.sae.commands",  # train
    "sparsesteer.experiments.judge_commands",  # evaluate (its model suites chain sae, steering, interpret)
    "sparsesteer.steering.commands",  # steer
    "sparsesteer.interpret.commands",  # interpret
    "sparsesteer.experiments.browse_commands",  # browse (--serve --model chains models, sae, steering)
    "sparsesteer.experiments.commands",  # reproduce
    "sparsesteer.experiments.testbed.commands",  # testbed build|measure
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sparsesteer",
        description="Sparse autoencoders for vision transformers: cache activations, train SAEs, "
        "measure them, and steer models with their features.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sparsesteer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """Our stage messages (INFO) on stderr, once each. Libraries keep their own handlers: a root
    handler as well would print every library warning twice."""
    log = logging.getLogger("sparsesteer")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.quiet:
        os.environ["SPARSESTEER_QUIET"] = "1"
    _log_to_stderr()
    try:
        check_outputs(args)  # before any work: an unwritable --out fails now, not after an hour
        result = args.func(args)
    except SparsesteerError as e:
        print(f"sparsesteer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed mid-run (disk full, permissions): one line, no traceback
        print(f"sparsesteer {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
