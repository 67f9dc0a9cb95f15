"""Atomic, verified file writing: nothing half-written ever looks complete.

Every file is written to a temporary name in the same directory, flushed and fsynced, then renamed
over its final name (`os.replace` is atomic on POSIX). A reader therefore sees either the old file or
the whole new one. Every file the package writes goes through `atomic_path`, which also gives it the
mode `open()` would (0666 less the umask at that moment), whatever wrote the temporary file:
mkstemp and safetensors' `save_file` both make 0600 files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SparsesteerError


def umask() -> int:
    """The process umask now. Linux shows it in /proc/self/status, which reads it without changing
    it; elsewhere it is set and restored (the only portable way, but a file another thread creates
    in between would get mode 0666)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 minus the process umask: the mode `open()` would give a new file."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success give it `file_mode()` and rename it over
    `path`, else delete it. The body may write the temporary file in any way, even by replacing it
    (as safetensors' `save_file` does): the mode is set at the commit, so every output gets the
    umask's mode (mkstemp alone would leave 0600, unreadable to the rest of a shared group)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write() names no file; say which one (disk full: which disk)
            e.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def is_temp_name(name: str) -> bool:
    """Is `name` that of a temporary file `atomic_path` leaves when its process is killed mid-write?"""
    return bool(_TEMP_RE.match(name))


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` leaves when its process is killed mid-write
    (`.NAME.XXXXXXXX.tmp`) anywhere under `root`; return them. Call it only on a directory the
    caller's run owns, before it writes there: a concurrent writer's temporary file would go too."""
    root = Path(root)
    if not root.is_dir():
        return []
    gone = [p for p in root.rglob(".*.tmp") if p.is_file() and not p.is_symlink() and _TEMP_RE.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is a user error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise SparsesteerError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SparsesteerError(f"{path} is not valid JSON: {e}") from None


def write_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """Write `array` as .npy atomically and return the sha256 of the written file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        digest = sha256_file(tmp)
    return digest


def read_npy(path: str | os.PathLike, *, what: str = "array", mmap: bool = False) -> np.ndarray:
    """np.load that never unpickles (allow_pickle=False) and turns a missing, truncated or pickled
    (object-dtype) file into one SparsesteerError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SparsesteerError(f"{what} {path}: no such file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SparsesteerError(f"cannot read {path} as a .npy {what}: {e}") from None


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes in `algo` (any name hashlib knows: sha256, md5, ...), read in chunks."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, algo).hexdigest()
    except ValueError:
        raise SparsesteerError(f"unknown hash algorithm {algo!r}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """file_digest(path, "sha256")."""
    return file_digest(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    """file_digest(path, "md5")."""
    return file_digest(path, "md5")


def check_writable_dir(path: str | os.PathLike, *, what: str = "--out", given: str | os.PathLike | None = None) -> Path:
    """Make sure `path` is (or can be created as) a writable directory, before any work starts.

    Raises a one-line SparsesteerError naming `what` and its value `given` (default: `path`) when
    `path` or one of its parents is a file, or when the nearest existing directory refuses a new
    file. Besides the permission bits, it really creates and removes a probe file there, because
    root passes `os.access` on a read-only file system. Leaves nothing behind.
    """
    path = Path(path).expanduser()
    given = Path(given) if given is not None else path
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = f"{given}" if probe == given else f"{given}: {probe}"
        raise SparsesteerError(f"{what} {where} is a file, not a directory; choose another {what}")
    why = None if os.access(probe, os.W_OK | os.X_OK) else "permission denied"
    if why is None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".sparsesteer-write-check-", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            why = (e.strerror or str(e)).lower()
    if why is not None:
        raise SparsesteerError(f"{what} {given}: {probe} is not writable ({why}); choose another {what}")
    return path
