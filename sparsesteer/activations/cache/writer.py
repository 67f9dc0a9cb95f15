"""`CacheWriter`: appends shards to a cache directory and resumes where an interrupted run stopped.

For each shard: write every file to a temporary name, fsync, rename into place, fsync the folders,
then replace manifest.json atomically (the commit point). A crash leaves either the old manifest
(the new files are garbage that the next writer deletes and rewrites) or the new one (every file it
lists is complete). The .npy bytes depend only on the array, so a resumed cache is byte-identical to
an uninterrupted one when the producer cuts shards at the same images.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...utils.errors import SparsesteerError, unknown
from ...utils.io import write_json, write_npy
from .settings import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_DTYPE,
    INDEX_ROLE,
    LABELS_DTYPE,
    LABELS_FILE,
    LOCK_FILE,
    MANIFEST,
    SHARD_FILE_RE,
    SHARDS_DIR,
    STORED_DTYPES,
    CacheSettings,
    acts_role,
    check_all_present,
    covered_images,
    first_difference,
    read_manifest,
    shard_file_name,
)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version() -> str:
    from ... import __version__

    return __version__


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable before the manifest that depends on them is committed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """A numpy view/copy of an array or torch tensor; torch bfloat16 becomes float32 (exact)."""
    if type(x).__module__.startswith("torch"):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything that is not array-like
        raise SparsesteerError(f"{what}: expected an array, got {type(x).__name__} ({e})") from None


def _bf16_bits(x: Any) -> np.ndarray:
    """uint16 bits of `x` rounded to bfloat16 by torch (round to nearest even), or taken as-is."""
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype != torch.bfloat16:
        t = t.to(torch.bfloat16)
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _nonfinite_rows(stored: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":  # exponent all ones = inf or nan
        bad = (stored & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(stored)
    return np.flatnonzero(bad.any(axis=1))


class CacheWriter:
    """Appends shards to a cache directory, resuming where an earlier run stopped.

    Use `CacheWriter.open(...)` as a context manager; it holds an exclusive lock on the directory
    (`.lock`) so that two producers never write the same cache.
    """

    def __init__(self, path: Path, settings: CacheSettings, manifest: dict[str, Any], lock_fd: int | None):
        self.path = path
        self.settings = settings
        self._manifest = manifest
        self._lock_fd = lock_fd
        self._pending_skipped: dict[int, dict[str, Any]] = {}

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, out_dir: str | os.PathLike, settings: CacheSettings | Mapping[str, Any], *, resume: bool = True
    ) -> CacheWriter:
        """Create a cache in `out_dir`, or reopen the one there (`resume=True`) if its settings match.

        A cache of different settings is refused (never mixed); a completed one is reopened with
        `completed` True so the caller can report it and skip the work.
        """
        if not isinstance(settings, CacheSettings):
            settings = CacheSettings.from_json(settings)
        path = Path(out_dir)
        if path.exists() and not path.is_dir():
            raise SparsesteerError(f"{path} exists and is not a directory; use another --out")
        path.mkdir(parents=True, exist_ok=True)
        if not holds_cache(path):  # refused before the lock: a folder it refuses gets no lock file
            stray = _stray(path)
            raise SparsesteerError(
                f"{path} is not empty ({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}) "
                f"and holds no activation cache (no {MANIFEST}); use another --out"
            )
        had_lock = (path / LOCK_FILE).exists()
        lock_fd = _acquire_lock(path)
        try:
            if (path / MANIFEST).exists():
                manifest, old = read_manifest(path)
                if old.sha256 != settings.sha256:
                    field, a, b = first_difference(old.to_json(), settings.to_json()) or ("?", "?", "?")
                    raise SparsesteerError(
                        f"{path} holds a cache of different settings (field {field}: {_short(a)} vs {_short(b)}); "
                        "use another --out, or pass --overwrite to replace it"
                    )
                if not resume:
                    raise SparsesteerError(
                        f"{path} already holds this activation cache ({covered_images(manifest)} of {old.n_images} images"
                        f"{', completed' if manifest['completed'] else ''}); resume it or use another --out"
                    )
                writer = cls(path, old, manifest, lock_fd)
                writer._check_and_clean()
            else:
                now = _now()
                manifest = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "settings": settings.to_json(),
                    "settings_sha256": settings.sha256,
                    "shards": [],
                    "skipped": [],
                    "labels": None,
                    "completed": False,
                    "created": now,
                    "updated": now,
                    "sparsesteer_version": _version(),
                }
                writer = cls(path, settings, manifest, lock_fd)
                write_json(path / MANIFEST, manifest)
        except BaseException:
            _release_lock(lock_fd)
            if not had_lock:  # a refused folder keeps no trace of the attempt
                (path / LOCK_FILE).unlink(missing_ok=True)
            raise
        return writer

    def _check_and_clean(self) -> None:
        """On resume: committed files must be there; uncommitted leftovers of a crash are removed."""
        check_all_present(self.path, self._manifest)
        shards = self.path / SHARDS_DIR
        for folder in [*(self.settings.hooks), INDEX_ROLE]:
            for f in (shards / folder).glob("*") if (shards / folder).is_dir() else []:
                m = SHARD_FILE_RE.match(f.name)
                if (m and int(m.group(1)) >= self.next_shard_index) or _is_own_scratch(f.name):
                    f.unlink()
        for f in self.path.iterdir():
            if _is_own_scratch(f.name) and f.name != LOCK_FILE:
                f.unlink()
        if not self.completed and (self.path / LABELS_FILE).exists():
            (self.path / LABELS_FILE).unlink()

    # -- state -------------------------------------------------------------------------------------

    @property
    def completed(self) -> bool:
        """True once `finish` has run: nothing more may be written."""
        return bool(self._manifest["completed"])

    @property
    def next_image(self) -> int:
        """First image index not covered by a committed shard: where the producer resumes."""
        return covered_images(self._manifest)

    @property
    def images_done(self) -> int:
        """Images covered by committed shards (written or recorded as skipped)."""
        return self.next_image

    @property
    def next_shard_index(self) -> int:
        return len(self._manifest["shards"])

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self._manifest["shards"])

    @property
    def manifest(self) -> dict[str, Any]:
        """The committed manifest (do not modify)."""
        return self._manifest

    # -- writing -----------------------------------------------------------------------------------

    def record_check(self, name: str, value: dict[str, Any]) -> None:
        """Keep a measurement of how the cache was made in manifest.json (`checks[name]`), e.g. the
        bf16 forward's difference from float32 (`bf16_check`)."""
        self._check_open()
        self._manifest.setdefault("checks", {})[name] = value
        self._commit()

    def add_skipped(self, image: int, source: str, error: str) -> None:
        """Record an unreadable image that gets no rows. It is committed with the shard whose image
        range contains it, so a crash before that re-tries the image instead of recording it twice."""
        self._check_open()
        image = int(image)
        if not self.next_image <= image < self.settings.n_images:
            raise SparsesteerError(
                f"add_skipped: image {image} is outside the images still to write "
                f"[{self.next_image}, {self.settings.n_images})"
            )
        self._pending_skipped[image] = {"image": image, "source": str(source), "error": str(error)}

    def write_shard(
        self,
        acts: Mapping[str, Any],
        image_idx: Any,
        token_idx: Any,
        *,
        n_images: int | None = None,
        check_finite: bool = True,
    ) -> dict[str, Any]:
        """Validate, write and commit the next shard; return its manifest record.

        acts: hook -> array/tensor [rows, d[hook]] (any float dtype; converted to the cache dtype).
        image_idx, token_idx: [rows] ints. Rows must be image-major: each image's rows are the
            `token_positions` in order, images increasing from `next_image`.
        n_images: images this shard covers, counting skipped ones (default: up to its last image).
            Images in the range without rows must have been passed to `add_skipped`.
        check_finite: reject NaN/Inf (including float16 overflow), naming hook and row.
        """
        self._check_open()
        record, newly_skipped = self.write_shard_files(
            self.next_shard_index,
            self.next_image,
            acts,
            image_idx,
            token_idx,
            n_images=n_images,
            check_finite=check_finite,
            skipped=list(self._pending_skipped.values()),
        )
        self.commit_shard(record, newly_skipped)
        for entry in newly_skipped:
            del self._pending_skipped[entry["image"]]
        return copy.deepcopy(record)

    def write_shard_files(
        self,
        shard_i: int,
        first: int,
        acts: Mapping[str, Any],
        image_idx: Any,
        token_idx: Any,
        *,
        n_images: int | None = None,
        check_finite: bool = True,
        skipped: Sequence[dict[str, Any]] = (),
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Validate and write the files of shard `shard_i` (covering images from `first`) without
        committing it: (its manifest record, the skipped images it covers). `commit_shard` commits
        it. Data-parallel caching (`torchrun ... cache`) has each rank write its shards' files this
        way, without the directory lock, and rank 0 commit them in order."""
        s = self.settings
        image_idx = self._index_array(image_idx, "image_idx")
        token_idx = self._index_array(token_idx, "token_idx")
        rows = len(image_idx)
        if len(token_idx) != rows:
            raise SparsesteerError(f"write_shard: image_idx has {rows} rows but token_idx has {len(token_idx)}")

        missing = [h for h in s.hooks if h not in acts]
        if missing:
            raise SparsesteerError(
                f"write_shard: no activations for hook {missing[0]!r} (the cache holds {list(s.hooks)})"
            )
        for h in acts:
            if h not in s.hooks:
                raise unknown("hook", h, s.hooks)

        # Image range and row layout.
        if rows and image_idx.min() < first:
            raise SparsesteerError(
                f"write_shard: image {image_idx.min()} is already in a committed shard (next image is {first})"
            )
        if n_images is None:
            if rows == 0:
                raise SparsesteerError("write_shard: a shard without rows needs n_images (the images it covers)")
            n_images = int(image_idx.max()) + 1 - first
        n_images = int(n_images)
        if n_images < 1 or first + n_images > s.n_images:
            raise SparsesteerError(
                f"write_shard: shard would cover images [{first}, {first + n_images}) "
                f"but the cache has {s.n_images} images"
            )
        end = first + n_images
        newly_skipped = sorted((e for e in skipped if first <= e["image"] < end), key=lambda e: e["image"])
        self._check_layout(image_idx, token_idx, first, n_images, {e["image"] for e in newly_skipped})

        stored = {h: self._convert(h, acts[h], rows, check_finite, image_idx, token_idx) for h in s.hooks}
        index = np.stack([image_idx, token_idx], axis=1).astype(INDEX_DTYPE)

        files: dict[str, dict[str, Any]] = {}
        for role, array in [*((acts_role(h), stored[h]) for h in s.hooks), (INDEX_ROLE, index)]:
            name = shard_file_name(role, shard_i)
            digest = write_npy(self.path / name, array)
            files[role] = {"name": name, "sha256": digest, "bytes": (self.path / name).stat().st_size}
        for role in files:
            _fsync_dir((self.path / files[role]["name"]).parent)

        record = {"index": shard_i, "first_image": first, "n_images": n_images, "rows": rows, "files": files}
        return record, newly_skipped

    def commit_shard(self, record: dict[str, Any], newly_skipped: list[dict[str, Any]]) -> None:
        """Append a shard written by `write_shard_files` to the manifest (the next one, in order)."""
        self._check_open()
        if record["index"] != self.next_shard_index or record["first_image"] != self.next_image:
            raise SparsesteerError(
                f"commit_shard: shard {record['index']} starts at image {record['first_image']} but the next shard "
                f"is {self.next_shard_index}, starting at image {self.next_image}"
            )
        self._manifest["shards"].append(record)
        self._manifest["skipped"].extend(newly_skipped)
        try:
            self._commit()
        except BaseException:  # keep memory == disk so the caller may retry
            self._manifest["shards"].pop()
            del self._manifest["skipped"][len(self._manifest["skipped"]) - len(newly_skipped) :]
            raise

    def finish(self, labels: Any = None) -> None:
        """Write labels.npy (int64 per image, -1 = unlabeled; None = all unlabeled), mark completed."""
        self._check_open()
        s = self.settings
        if self.next_image != s.n_images:
            raise SparsesteerError(f"cannot finish {self.path}: shards cover {self.next_image} of {s.n_images} images")
        if labels is None:
            labels_arr = np.full(s.n_images, -1, dtype=LABELS_DTYPE)
        else:
            raw = _to_numpy(labels, "labels")
            if raw.ndim != 1 or len(raw) != s.n_images:
                raise SparsesteerError(
                    f"finish: labels has shape {tuple(raw.shape)}; expected [{s.n_images}] (one per image)"
                )
            if raw.dtype.kind not in "iu":
                raise SparsesteerError(f"finish: labels must be integers, got {raw.dtype}")
            if len(raw) and raw.min() < -1:
                raise SparsesteerError(
                    f"finish: label {raw.min()} at image {int(raw.argmin())}; labels are >= 0, or -1 for unlabeled"
                )
            labels_arr = raw.astype(LABELS_DTYPE)
        digest = write_npy(self.path / LABELS_FILE, labels_arr)
        _fsync_dir(self.path)
        size = (self.path / LABELS_FILE).stat().st_size
        self._manifest["labels"] = {"name": LABELS_FILE, "sha256": digest, "bytes": size}
        self._manifest["completed"] = True
        try:
            self._commit()
        except BaseException:
            self._manifest["labels"] = None
            self._manifest["completed"] = False
            raise
        self.close()

    def close(self) -> None:
        """Release the directory lock (uncommitted work is simply not in the cache)."""
        _release_lock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------------

    def _commit(self) -> None:
        self._manifest["updated"] = _now()
        self._manifest["sparsesteer_version"] = _version()
        write_json(self.path / MANIFEST, self._manifest)  # the commit point (atomic rename)

    def _check_open(self) -> None:
        if self.completed:
            raise SparsesteerError(f"{self.path} is a completed activation cache; nothing more can be written")

    @staticmethod
    def _index_array(x: Any, what: str) -> np.ndarray:
        arr = _to_numpy(x, what)
        if arr.ndim != 1:
            raise SparsesteerError(f"write_shard: {what} has shape {tuple(arr.shape)}; expected [rows]")
        if arr.size and arr.dtype.kind not in "iu":
            raise SparsesteerError(f"write_shard: {what} must be integers, got {arr.dtype}")
        return arr.astype(np.int64)

    def _check_layout(
        self, image_idx: np.ndarray, token_idx: np.ndarray, first: int, n_images: int, skipped: set[int]
    ) -> None:
        """Rows must be image-major with `token_positions` per image; every image of the range has
        rows or was recorded as skipped."""
        s = self.settings
        tpi = len(s.token_positions)  # = tokens_per_image (CacheSettings checks), typed int
        rows = len(image_idx)
        if rows % tpi:
            raise SparsesteerError(f"write_shard: {rows} rows is not a multiple of tokens_per_image {tpi}")
        img = image_idx.reshape(-1, tpi)
        tok = token_idx.reshape(-1, tpi)
        per_image = img[:, 0]
        if rows:
            bad = np.flatnonzero((img != per_image[:, None]).ravel())
            if bad.size:
                r = int(bad[0])
                raise SparsesteerError(
                    f"write_shard: row {r} has image {image_idx[r]} but rows {r - r % tpi}..{r - r % tpi + tpi - 1} "
                    f"must all belong to one image ({tpi} tokens per image, image-major)"
                )
            bad = np.flatnonzero((tok != np.asarray(s.token_positions)[None, :]).ravel())
            if bad.size:
                r = int(bad[0])
                raise SparsesteerError(
                    f"write_shard: row {r} (image {image_idx[r]}) has token {token_idx[r]}; expected token "
                    f"{s.token_positions[r % tpi]} (each image's rows follow token_positions "
                    f"{list(s.token_positions)[:8]}"
                    f"{'...' if tpi > 8 else ''})"
                )
            if per_image.size > 1 and (np.diff(per_image) <= 0).any():
                i = int(np.flatnonzero(np.diff(per_image) <= 0)[0]) + 1
                raise SparsesteerError(
                    f"write_shard: image {per_image[i]} at row {i * tpi} follows image {per_image[i - 1]}; "
                    "images must increase"
                )
            if per_image[-1] >= first + n_images:
                raise SparsesteerError(
                    f"write_shard: image {per_image[-1]} is outside the shard's images [{first}, {first + n_images})"
                )
        present = set(per_image.tolist())
        both = sorted(present & skipped)
        if both:
            raise SparsesteerError(f"write_shard: image {both[0]} has rows but was recorded with add_skipped")
        absent = sorted(set(range(first, first + n_images)) - present - skipped)
        if absent:
            raise SparsesteerError(
                f"write_shard: image {absent[0]} of the shard's images [{first}, {first + n_images}) has no rows "
                f"and was not recorded with add_skipped ({len(absent)} such images)"
            )

    def _convert(
        self, hook: str, x: Any, rows: int, check_finite: bool, image_idx: np.ndarray, token_idx: np.ndarray
    ) -> np.ndarray:
        """Check shape and dtype of one hook's activations and convert them to the stored dtype."""
        s = self.settings
        d = s.d[hook]
        is_torch = type(x).__module__.startswith("torch")
        shape = tuple(x.shape) if hasattr(x, "shape") else None
        if shape is None:
            x = _to_numpy(x, f"acts[{hook!r}]")
            shape = x.shape
        if len(shape) != 2 or shape[1] != d:
            raise SparsesteerError(
                f"write_shard: activations of hook {hook!r} have shape {list(shape)}; "
                f"expected [rows, {d}] (d of {hook!r} is {d})"
            )
        if shape[0] != rows:
            raise SparsesteerError(
                f"write_shard: activations of hook {hook!r} have {shape[0]} rows but image_idx/token_idx have {rows}"
            )
        if is_torch:
            if not x.dtype.is_floating_point:
                raise SparsesteerError(
                    f"write_shard: activations of hook {hook!r} have dtype {x.dtype}; expected floating point"
                )
            source = x
        else:
            source = np.asarray(x)
            if source.dtype.kind != "f":
                raise SparsesteerError(
                    f"write_shard: activations of hook {hook!r} have dtype {source.dtype}; expected floating point"
                )
        if s.dtype == "bfloat16":
            stored = _bf16_bits(source)
        else:
            arr = _to_numpy(source, hook) if is_torch else source
            with np.errstate(over="ignore"):  # overflow to inf is reported below, naming the row
                stored = arr.astype(STORED_DTYPES[s.dtype], copy=False)
        stored = np.ascontiguousarray(stored, dtype=STORED_DTYPES[s.dtype])
        if check_finite and stored.size:
            bad = _nonfinite_rows(stored, s.dtype)
            if bad.size:
                r = int(bad[0])
                src_row = _to_numpy(source[r : r + 1], hook).astype(np.float64)
                where = f"row {r} (image {image_idx[r]}, token {token_idx[r]})"
                if np.isfinite(src_row).all():
                    raise SparsesteerError(
                        f"write_shard: activations of hook {hook!r} at {where} overflow {s.dtype} "
                        f"(max |x| = {np.abs(src_row).max():.4g}); store a wider dtype"
                    )
                raise SparsesteerError(
                    f"write_shard: activations of hook {hook!r} have NaN/Inf at {where} ({bad.size} such rows); "
                    "pass check_finite=False to store them anyway"
                )
        return stored


def holds_cache(path: Path) -> bool:
    """Is `path` an activation cache (its manifest), or a folder holding only a cache's scratch files
    (the lock, temporary files of a killed write)? Anything else is not a cache's to write into."""
    return (path / MANIFEST).exists() or not _stray(path)


def _stray(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not _is_own_scratch(p.name)) if path.is_dir() else []


def _is_own_scratch(name: str) -> bool:
    """The lock file and temporary files left by `utils.io.atomic_path` when a process was killed."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def _acquire_lock(path: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer is then up to the user
        return None
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SparsesteerError(
            f"{path} is being written by another process (its {LOCK_FILE} is locked); wait for it or use another --out"
        ) from None
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
