"""What every command shares: the help formatter and the option groups that several commands take.

Only `*/commands.py` modules import this; the stage libraries never parse flags.
"""

from __future__ import annotations

import argparse

from .io import check_writable_dir


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep descriptions' line breaks; show each option's default once (options built from config
    dataclasses already state theirs; None/False defaults say nothing useful)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or "%(default)" in text:
            return text
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


OUTPUT_ARGS = ("out",)
"""Flags that name a directory a command writes into; a command adds more with
`parser.set_defaults(output_args=("out", "data_root"))`."""


def check_outputs(args: argparse.Namespace) -> None:
    """`io.check_writable_dir` for every output flag a command declares (default: --out); a text cache
    turned off ('none') is not a directory."""
    for name in getattr(args, "output_args", OUTPUT_ARGS):
        value = getattr(args, name, None)
        if value is not None and not (name == "text_cache" and str(value).lower() == "none"):
            check_writable_dir(value, what="--" + name.replace("_", "-"))


def add_overwrite(parser: argparse.ArgumentParser, help: str | None = None) -> None:  # noqa: A002 (argparse's name)
    """--overwrite, as every command that writes an --out takes it (the policy: utils/outputs.py)."""
    parser.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            help
            or "Replace what --out holds (without it a command writes only into a new or empty directory, or "
            "continues its own run there)."
        )
        + " (default: %(default)s)",
    )


def os_error_message(e: OSError) -> str:
    """One line for an OSError that escaped a command (disk full, permissions, a vanished file)."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"
