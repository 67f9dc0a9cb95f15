"""One output policy for every command that writes a directory: no earlier result is replaced silently.

    --out absent or empty                 -> written
    --out holding this command's own run  -> continued where the command resumes (cache, reproduce,
                                             an interrupted interpret, browse --serve of the same
                                             statistics); elsewhere refused with how to resume or restart
    anything else                         -> refused, naming the folder, what it holds and --overwrite;
                                             with --overwrite its contents are replaced

Each command calls `claim` once, after its flags are checked and before any expensive work (loading a
model, reading data), so a refusal costs nothing and leaves the folder as it was. Results written as
files into a folder the command does not own (`evaluate`'s eval.json beside an SAE) follow the same
rule file by file (`claim_files`). The user's page: docs/errors.md, "Output directories".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import SparsesteerError
from .io import check_writable_dir, is_temp_name

Claim = Literal["new", "own", "replace"]
"""What `claim` found: an absent or empty folder, the command's own run (continue it), or contents
that --overwrite replaces."""


@dataclass(frozen=True)
class OwnRun:
    """How a command recognises its own earlier run in its output folder."""

    what: str
    """The run, as a refusal names it: "... and holds no {what}" ("activation cache", "reproduce vs2 run")."""
    holds: Callable[[Path], bool]
    """Does this (non-empty) folder hold such a run?"""
    refusal: Callable[[Path], str] | None = None
    """None: rerunning the command continues the run. Otherwise the run is continued only on request
    (train --resume): the refusal's message, saying how to resume or restart it."""


def contents(path: Path) -> list[str]:
    """Names of the entries of `path` that count as results: everything but the temporary files a
    killed write leaves (`io.atomic_path`), which the next run deletes anyway."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not is_temp_name(p.name))


def _shown(names: Sequence[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def claim(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    own: OwnRun | None = None,
    flag: str = "--out",
    clear: bool = True,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> Claim:
    """Apply the output policy to the directory `out` (see the module docstring) before any work.

    Returns "new", "own" (continue the run there) or "replace" (--overwrite: the contents are deleted
    here unless `clear` is False, for a command that replaces them itself, atomically or later). Under
    torchrun only rank 0 deletes. `inputs`: paths the command reads, which --overwrite must not delete.
    Raises a one-line SparsesteerError naming the folder, what it holds and the flag that would change
    the answer.
    """
    path = check_writable_dir(out, what=flag)
    present = contents(path)
    if not present:
        return "new"
    if overwrite:
        check_overwritable(path, flag, inputs)
        if clear and os.environ.get("RANK", "0") == "0":
            clear_dir(path)
        return "replace"
    if own is not None and own.holds(path):
        if own.refusal is not None:
            raise SparsesteerError(own.refusal(path))
        return "own"
    holds_no = f" and holds no {own.what}" if own is not None else ""
    raise SparsesteerError(
        f"{flag} {out} is not empty (it holds {_shown(present)}){holds_no}: choose another {flag}, or pass "
        "--overwrite to replace its contents"
    )


def claim_files(paths: Sequence[str | os.PathLike], *, overwrite: bool = False, flag: str = "--out") -> None:
    """The same policy for results written as files into a folder shared with other things: refused
    while any of `paths` exists, unless `overwrite` (the files are then replaced as they are written)."""
    files = [Path(p) for p in paths]
    check_writable_dir(files[0].parent, what=flag, given=files[0])
    there = [f.name for f in files if f.exists()]
    if there and not overwrite:
        raise SparsesteerError(
            f"{flag} {files[0]}: {files[0].parent} already holds {', '.join(there)} (earlier results): choose "
            f"another {flag}, or pass --overwrite to replace them"
        )


def check_overwritable(out: Path, flag: str = "--out", inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """--overwrite deletes the contents of `out`: never of the file system root, the home directory or a
    directory holding the current one, nor an input of the command."""
    res = out.resolve()
    if res == Path(res.anchor) or res == Path.home().resolve() or Path.cwd().resolve().is_relative_to(res):
        raise SparsesteerError(
            f"--overwrite would delete everything in {out}, which is the file system root, your home or holds the "
            f"current directory: choose a directory of its own for {flag}"
        )
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve().is_relative_to(res):
            raise SparsesteerError(
                f"--overwrite would delete {given}, which this command reads and which lies in {flag} {out}: "
                f"choose another {flag}"
            )


def clear_dir(path: str | os.PathLike) -> None:
    """Delete the contents of `path` (the directory itself is kept), for --overwrite."""
    path = Path(path)
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
