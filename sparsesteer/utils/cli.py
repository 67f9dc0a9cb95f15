"""What every command shares: the help formatter and the option groups that several commands take.

Only `*/commands.py` modules import this; the stage libraries never parse flags.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .errors import SparsesteerError


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


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail before any work when `path` cannot become a writable directory: it is a file, a parent
    is a file, or the nearest existing parent refuses a new file (read-only, permissions)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SparsesteerError(f"{flag} {path}: is a file; expected a directory (or a path that does not exist yet)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SparsesteerError(f"{flag} {path}: {parent} is a file, so the directory cannot be created")
    try:  # a real write: os.access says yes to root on a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".sparsesteer-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SparsesteerError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e})") from None
    return path


def check_outputs(args: argparse.Namespace) -> None:
    """`check_output_dir` for every output flag a command declares (default: --out)."""
    for name in getattr(args, "output_args", OUTPUT_ARGS):
        value = getattr(args, name, None)
        if value is not None:
            check_output_dir(value, "--" + name.replace("_", "-"))


def os_error_message(e: OSError) -> str:
    """One line for an OSError that escaped a command (disk full, permissions, a vanished file)."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"
