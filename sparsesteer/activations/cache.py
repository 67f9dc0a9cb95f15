"""The on-disk activation cache: a writer that resumes, a memory-mapped reader, and verification.

A cache is a directory (full description in docs/formats.md, "Activation cache"):

    manifest.json                       settings, per-shard files with sha256, skipped images, completed
    shards/<hook>/00000.npy ...         activations [rows, d] of each hook, one file per hook per shard
    shards/index/00000.npy ...          int32 [rows, 2] = (image index, token index) of each row
    labels.npy                          int64 [n_images], -1 when unlabeled (written by `finish`)

Rows are image-major: every image contributes `tokens_per_image` consecutive rows, one per entry of
`token_positions`, in that order. The manifest is the commit point: shard files are written and
renamed first, then the manifest that lists them is replaced atomically, so a crash leaves either
the old manifest (the new files are garbage that a resumed writer removes and rewrites) or the new
one (the files are complete and fsynced). Every file is a plain `.npy` whose bytes depend only on its
content, so an interrupted-and-resumed cache is byte-identical to an uninterrupted one.

numpy has no bfloat16: bfloat16 caches store the raw bits as uint16 and reads view them as
`torch.bfloat16`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..utils import config as cfg
from ..utils.errors import SparsesteerError, unknown
from ..utils.io import sha256_file, write_json, write_npy

if TYPE_CHECKING:
    import torch

FORMAT = "sparsesteer-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS_FILE = "labels.npy"
SHARDS_DIR = "shards"
INDEX_ROLE = "index"
LOCK_FILE = ".lock"

DType = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
TOKEN_SELECTIONS = ("cls", "patch", "all")
VERIFY_MODES = ("lazy", "all", "none")
# Explicit little-endian dtypes so that the .npy header (and hence the sha256) is the same everywhere.
STORED_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # the raw bfloat16 bits
}
INDEX_DTYPE = np.dtype("<i4")
LABELS_DTYPE = np.dtype("<i8")
_INT32_MAX = 2**31 - 1
_SHARD_FILE_RE = re.compile(r"^(\d+)\.npy$")


def acts_role(hook: str) -> str:
    """Manifest role of a hook's activation file in a shard's `files`."""
    return f"acts:{hook}"


def shard_file_name(role: str, index: int) -> str:
    """Path of a shard file relative to the cache directory, e.g. `shards/blocks.3.resid_post/00007.npy`."""
    folder = INDEX_ROLE if role == INDEX_ROLE else role.removeprefix("acts:")
    return f"{SHARDS_DIR}/{folder}/{index:05d}.npy"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSettings:
    """Everything that defines a cache's content. Two runs with equal settings (same
    `settings_sha256`) produce the same bytes, which is what makes resuming safe; a writer refuses
    to add shards to a cache whose settings differ."""

    hooks: tuple[str, ...]
    """Hook points cached (e.g. `blocks.11.resid_post`); each gets its own file per shard."""
    d: dict[str, int]
    """Activation width of each hook (hook -> d)."""
    tokens: str | tuple[int, ...]
    """Token selection that produced `token_positions`: `cls`, `patch`, `all`, or explicit token indices."""
    token_positions: tuple[int, ...]
    """Model token indices kept for every image, in stored row order (e.g. (0,) for cls, 1..49 for patch)."""
    cls_position: int | None
    """Index of the CLS token in the model's token sequence; None for models without one (SigLIP)."""
    n_images: int
    """Images planned (the size of the dataset split); image indices run 0 .. n_images-1."""
    dtype: DType = "float32"
    """Storage dtype of the activations; bfloat16 is stored as its uint16 bits."""
    tokens_per_image: int | None = None
    """Rows per image; always len(token_positions) (filled in when omitted)."""
    model: dict[str, Any] | None = None
    """{id, revision, arch} of the model that produced the activations; None for arrays written by hand."""
    dataset: dict[str, Any] | None = None
    """The dataset spec (JSON, opaque to the cache)."""
    split: str | None = None
    """Dataset split the images come from."""
    preprocessing: dict[str, Any] | None = None
    """Image preprocessing (JSON, opaque to the cache)."""

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> SparsesteerError:
            return SparsesteerError(f"cache settings: field {field}: {why}")

        def as_index(x: Any, field: str) -> int:
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or not 0 <= x <= _INT32_MAX:
                raise fail(field, f"expected a token/image index (int >= 0), got {x!r}")
            return int(x)

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass

        hooks = (self.hooks,) if isinstance(self.hooks, str) else tuple(self.hooks)
        if not hooks:
            raise fail("hooks", "at least one hook is needed")
        for h in hooks:
            if not isinstance(h, str) or not h or h == INDEX_ROLE or h.startswith(".") or "/" in h or "\\" in h:
                raise fail("hooks", f"{h!r} cannot be a hook name (it names a folder under shards/)")
        if len(set(hooks)) != len(hooks):
            raise fail("hooks", f"duplicate hook in {list(hooks)}")
        set_("hooks", hooks)

        if not isinstance(self.d, Mapping) or set(self.d) != set(hooks):
            got = sorted(self.d) if isinstance(self.d, Mapping) else self.d
            raise fail("d", f"needs exactly one width per hook {list(hooks)}, got {got}")
        d = {}
        for h in hooks:
            w = self.d[h]
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w <= 0:
                raise fail(f"d.{h}", f"expected a positive int, got {w!r}")
            d[h] = int(w)
        set_("d", d)

        positions = tuple(as_index(t, "token_positions") for t in self.token_positions)
        if not positions or len(set(positions)) != len(positions):
            raise fail("token_positions", f"needs distinct token indices, got {list(positions)}")
        set_("token_positions", positions)

        cls_position = None if self.cls_position is None else as_index(self.cls_position, "cls_position")
        set_("cls_position", cls_position)

        tokens = self.tokens
        if isinstance(tokens, str):
            if tokens not in TOKEN_SELECTIONS:
                raise unknown("token selection", tokens, TOKEN_SELECTIONS)
            if tokens == "cls" and (cls_position is None or positions != (cls_position,)):
                raise fail(
                    "token_positions", f"tokens='cls' keeps only cls_position {cls_position}, got {list(positions)}"
                )
            if tokens == "patch" and cls_position in positions:
                raise fail("token_positions", f"tokens='patch' cannot keep the CLS token {cls_position}")
            if tokens == "all" and cls_position is not None and cls_position not in positions:
                raise fail("token_positions", f"tokens='all' must keep the CLS token {cls_position}")
        else:
            tokens = tuple(as_index(t, "tokens") for t in tokens)
            if tokens != positions:
                raise fail(
                    "tokens", f"explicit token indices {list(tokens)} must equal token_positions {list(positions)}"
                )
        set_("tokens", tokens)

        if self.dtype not in DTYPES:
            raise unknown("cache dtype", str(self.dtype), DTYPES)
        if self.tokens_per_image is None:
            set_("tokens_per_image", len(positions))
        elif self.tokens_per_image != len(positions):
            raise fail("tokens_per_image", f"{self.tokens_per_image} != len(token_positions) = {len(positions)}")
        if isinstance(self.n_images, bool) or not isinstance(self.n_images, (int, np.integer)) or self.n_images < 1:
            raise fail("n_images", f"expected a positive int, got {self.n_images!r}")
        set_("n_images", int(self.n_images))
        if self.n_images > _INT32_MAX:
            raise fail("n_images", f"{self.n_images} images do not fit the int32 row index")
        if self.split is not None and not isinstance(self.split, str):
            raise fail("split", f"expected a string, got {self.split!r}")
        for name in ("model", "dataset", "preprocessing"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise fail(name, f"expected a JSON object or null, got {value!r}")
            if value is not None:
                set_(name, dict(value))
        try:
            _canonical_json(self.to_json())
        except (TypeError, ValueError) as e:
            raise SparsesteerError(f"cache settings are not plain JSON: {e}") from None

    def to_json(self) -> dict[str, Any]:
        """The settings as stored in manifest.json (field order = declaration order)."""
        return cfg.to_dict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "cache settings") -> CacheSettings:
        """Settings from a manifest's `settings` (or a user dict); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise SparsesteerError(f"{where}: expected a JSON object, got {data!r}")
        return cfg.from_dict(cls, dict(data), where=where)

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of `to_json()`: equal settings <=> equal hash."""
        return hashlib.sha256(_canonical_json(self.to_json())).hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted field, old value, new value) where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}{key}", old.get(key, "<absent>"), new.get(key, "<absent>")
            diff = _first_difference(old[key], new[key], f"{path}{key}.")
            if diff:
                return diff
        return None
    return None if old == new else (path.rstrip("."), old, new)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from .. import __version__

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


# --------------------------------------------------------------------------------------------------
# Manifest reading (shared by writer and reader)
# --------------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> tuple[dict[str, Any], CacheSettings]:
    """Load and check manifest.json: format, version, settings hash, shard records."""
    mpath = path / MANIFEST
    if not path.is_dir() or not mpath.is_file():
        raise SparsesteerError(f"{path} is not an activation cache (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SparsesteerError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise SparsesteerError(f"{mpath} is not an activation cache manifest (format {got!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = "; upgrade sparsesteer" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise SparsesteerError(
            f"{mpath}: unsupported format_version {version!r} (this sparsesteer reads {FORMAT_VERSION}){hint}"
        )
    for key in ("settings", "settings_sha256", "shards", "skipped", "completed"):
        if key not in manifest:
            raise SparsesteerError(f"{mpath}: missing field {key!r}")
    settings = CacheSettings.from_json(manifest["settings"], where=f"{mpath}: settings")
    if settings.sha256 != manifest["settings_sha256"]:
        raise SparsesteerError(
            f"{mpath}: settings do not match settings_sha256 (the manifest was edited by hand?); re-create the cache"
        )
    roles = {acts_role(h) for h in settings.hooks} | {INDEX_ROLE}
    next_image = 0
    for i, shard in enumerate(manifest["shards"]):
        where = f"{mpath}: shards[{i}]"
        try:
            ok = (
                shard["index"] == i
                and shard["first_image"] == next_image
                and isinstance(shard["n_images"], int)
                and isinstance(shard["rows"], int)
                and shard["rows"] % settings.tokens_per_image == 0
                and shard["rows"] // settings.tokens_per_image <= shard["n_images"]
                and set(shard["files"]) == roles
                and all({"name", "sha256", "bytes"} <= set(f) for f in shard["files"].values())
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise SparsesteerError(
                f"{where} is malformed or out of sequence (expected first_image {next_image}, files {sorted(roles)})"
            )
        next_image += shard["n_images"]
    if next_image > settings.n_images:
        raise SparsesteerError(f"{mpath}: shards cover {next_image} images but the cache plans {settings.n_images}")
    if manifest["completed"] and (next_image != settings.n_images or not manifest.get("labels")):
        raise SparsesteerError(
            f"{mpath}: marked completed but covers {next_image} of {settings.n_images} images or has no labels"
        )
    return manifest, settings


def _manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the manifest lists: shard files in order, then labels."""
    files = [f for shard in manifest["shards"] for f in shard["files"].values()]
    if manifest.get("labels"):
        files.append(manifest["labels"])
    return files


def _check_present(path: Path, entry: dict[str, Any]) -> Path:
    """Cheap check (stat) that a listed file exists with its recorded size."""
    fpath = path / entry["name"]
    if not fpath.is_file():
        raise SparsesteerError(
            f"{fpath} is missing (listed in {MANIFEST}); the activation cache is damaged: re-create it"
        )
    size = fpath.stat().st_size
    if size != entry["bytes"]:
        raise SparsesteerError(
            f"{fpath} has {size} bytes but {MANIFEST} says {entry['bytes']}: "
            "the activation cache is corrupted; re-create it"
        )
    return fpath


def _check_sha256(path: Path, entry: dict[str, Any]) -> Path:
    fpath = _check_present(path, entry)
    digest = sha256_file(fpath)
    if digest != entry["sha256"]:
        raise SparsesteerError(
            f"{fpath}: sha256 {digest[:12]}... does not match {MANIFEST} ({entry['sha256'][:12]}...): "
            "the activation cache is corrupted; re-create it"
        )
    return fpath


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------


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
        lock_fd = _acquire_lock(path)
        try:
            if (path / MANIFEST).exists():
                manifest, old = _read_manifest(path)
                if old.sha256 != settings.sha256:
                    field, a, b = _first_difference(old.to_json(), settings.to_json()) or ("?", "?", "?")
                    raise SparsesteerError(
                        f"{path} holds a cache of different settings (field {field}: {_short(a)} vs {_short(b)}); "
                        "use another --out"
                    )
                if not resume:
                    raise SparsesteerError(
                        f"{path} already holds this activation cache ({_images_done(manifest)} of {old.n_images} images"
                        f"{', completed' if manifest['completed'] else ''}); resume it or use another --out"
                    )
                writer = cls(path, old, manifest, lock_fd)
                writer._check_and_clean()
            else:
                stray = [p.name for p in path.iterdir() if not _is_own_scratch(p.name)]
                if stray:
                    raise SparsesteerError(
                        f"{path} is not empty ({', '.join(sorted(stray)[:3])}{', ...' if len(stray) > 3 else ''}) "
                        "and holds no activation cache "
                        f"(no {MANIFEST}); use another --out"
                    )
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
            raise
        return writer

    def _check_and_clean(self) -> None:
        """On resume: committed files must be there; uncommitted leftovers of a crash are removed."""
        for entry in _manifest_files(self._manifest):
            _check_present(self.path, entry)
        shards = self.path / SHARDS_DIR
        for folder in [*(self.settings.hooks), INDEX_ROLE]:
            for f in (shards / folder).glob("*") if (shards / folder).is_dir() else []:
                m = _SHARD_FILE_RE.match(f.name)
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
        return _images_done(self._manifest)

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
        s = self.settings
        first = self.next_image
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
        self._check_layout(image_idx, token_idx, first, n_images)

        stored = {h: self._convert(h, acts[h], rows, check_finite, image_idx, token_idx) for h in s.hooks}
        index = np.stack([image_idx, token_idx], axis=1).astype(INDEX_DTYPE)

        shard_i = self.next_shard_index
        files: dict[str, dict[str, Any]] = {}
        for role, array in [*((acts_role(h), stored[h]) for h in s.hooks), (INDEX_ROLE, index)]:
            name = shard_file_name(role, shard_i)
            digest = write_npy(self.path / name, array)
            files[role] = {"name": name, "sha256": digest, "bytes": (self.path / name).stat().st_size}
        for role in files:
            _fsync_dir((self.path / files[role]["name"]).parent)

        record = {"index": shard_i, "first_image": first, "n_images": n_images, "rows": rows, "files": files}
        end = first + n_images
        newly_skipped = [self._pending_skipped[i] for i in sorted(self._pending_skipped) if i < end]
        self._manifest["shards"].append(record)
        self._manifest["skipped"].extend(newly_skipped)
        try:
            self._commit()
        except BaseException:  # keep memory == disk so the caller may retry
            self._manifest["shards"].pop()
            del self._manifest["skipped"][len(self._manifest["skipped"]) - len(newly_skipped) :]
            raise
        for entry in newly_skipped:
            del self._pending_skipped[entry["image"]]
        return copy.deepcopy(record)

    def finish(self, labels: Any = None) -> None:
        """Write labels.npy (int64 per image, -1 = unlabeled; None = all unlabeled), mark completed."""
        self._check_open()
        s = self.settings
        if self.next_image != s.n_images:
            raise SparsesteerError(
                f"cannot finish {self.path}: shards cover {self.next_image} of {s.n_images} images"
            )
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

    def _check_layout(self, image_idx: np.ndarray, token_idx: np.ndarray, first: int, n_images: int) -> None:
        """Rows must be image-major with `token_positions` per image; every image of the range has
        rows or was recorded as skipped."""
        s = self.settings
        tpi = s.tokens_per_image
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
            if per_image[0] < first:
                raise SparsesteerError(
                    f"write_shard: image {per_image[0]} is already in a committed shard (next image is {first})"
                )
            if per_image[-1] >= first + n_images:
                raise SparsesteerError(
                    f"write_shard: image {per_image[-1]} is outside the shard's images [{first}, {first + n_images})"
                )
        skipped = set(self._pending_skipped)
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


def _images_done(manifest: dict[str, Any]) -> int:
    shards = manifest["shards"]
    return shards[-1]["first_image"] + shards[-1]["n_images"] if shards else 0


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


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class RowSource(Protocol):
    """What the trainer and loaders read: a sequence of activation rows of one hook."""

    n_rows: int
    d: int

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) in view order, as a new tensor in the stored dtype."""
        ...

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        """int64 label of each of those rows; None when there are no labels."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description: path, hook, tokens, n_rows, d, dtype, settings_sha256."""
        ...


@dataclass(frozen=True)
class VerifyReport:
    """What `ActivationCache.verify` checked."""

    files: int
    """Files whose sha256 matched the manifest."""
    bytes: int
    """Bytes hashed."""
    completed: bool
    """Whether the cache is complete (an incomplete cache verifies, but trainers refuse it by default)."""
    images_done: int
    """Images covered by committed shards."""
    n_images: int
    """Images planned."""


class ActivationCache:
    """Read-only access to a cache directory: memory-mapped shards, checksums, row views."""

    def __init__(self, path: Path, manifest: dict[str, Any], settings: CacheSettings, verify: str):
        self.path = path
        self.manifest = manifest
        self.settings = settings
        self._verify_mode = verify
        self._verified: set[str] = set()
        self._mmaps: dict[tuple[str, int], np.ndarray] = {}
        self._labels: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: str = "lazy") -> ActivationCache:
        """Open a cache. verify='lazy' checks that every file exists with its size now and each
        file's sha256 when it is first read; 'all' hashes everything now; 'none' trusts the files."""
        if verify not in VERIFY_MODES:
            raise unknown("verify mode", verify, VERIFY_MODES)
        path = Path(path)
        manifest, settings = _read_manifest(path)
        cache = cls(path, manifest, settings, verify)
        if verify != "none":
            for entry in _manifest_files(manifest):
                _check_present(path, entry)
        if verify == "all":
            cache.verify()
        return cache

    # -- description -------------------------------------------------------------------------------

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.settings.hooks

    @property
    def d(self) -> dict[str, int]:
        """Width per hook."""
        return dict(self.settings.d)

    @property
    def dtype(self) -> str:
        """'float32', 'float16' or 'bfloat16' (reads return this torch dtype)."""
        return self.settings.dtype

    @property
    def n_images(self) -> int:
        """Images planned (see `images_done` for an incomplete cache)."""
        return self.settings.n_images

    @property
    def images_done(self) -> int:
        return _images_done(self.manifest)

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def tokens_per_image(self) -> int:
        return int(self.settings.tokens_per_image)  # type: ignore[arg-type]

    @property
    def completed(self) -> bool:
        return bool(self.manifest["completed"])

    @property
    def settings_sha256(self) -> str:
        return self.manifest["settings_sha256"]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self.manifest["skipped"])

    @property
    def labels(self) -> np.ndarray | None:
        """int64 [n_images] (-1 = unlabeled), or None while the cache is incomplete."""
        entry = self.manifest.get("labels")
        if not entry:
            return None
        if self._labels is None:
            fpath = self._checked(entry)
            labels = np.load(fpath, allow_pickle=False)
            if labels.dtype != LABELS_DTYPE or labels.shape != (self.n_images,):
                raise SparsesteerError(
                    f"{fpath} holds {labels.dtype} {list(labels.shape)}; expected int64 [{self.n_images}]"
                )
            labels.setflags(write=False)
            self._labels = labels
        return self._labels

    # -- files -------------------------------------------------------------------------------------

    def shard(self, hook: str, i: int) -> np.ndarray:
        """Read-only memmap [rows, d] of shard `i` of `hook` (uint16 bits for bfloat16 caches)."""
        if hook not in self.hooks:
            raise unknown("hook", hook, self.hooks)
        return self._mmap(acts_role(hook), i)

    def index(self, i: int) -> np.ndarray:
        """Read-only memmap int32 [rows, 2] = (image index, token index) of shard `i`."""
        return self._mmap(INDEX_ROLE, i)

    def _mmap(self, role: str, i: int) -> np.ndarray:
        key = (role, i)
        mm = self._mmaps.get(key)
        if mm is not None:
            return mm
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} out of range: {self.path} has {self.n_shards} shards")
        shard = self.manifest["shards"][i]
        fpath = self._checked(shard["files"][role])
        try:
            mm = np.load(fpath, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise SparsesteerError(
                f"{fpath} is not a valid .npy file ({e}): the activation cache is corrupted"
            ) from None
        if role == INDEX_ROLE:
            want_dtype, want_shape = INDEX_DTYPE, (shard["rows"], 2)
        else:
            want_dtype, want_shape = STORED_DTYPES[self.dtype], (shard["rows"], self.settings.d[role[5:]])
        if mm.dtype != want_dtype or mm.shape != want_shape:
            raise SparsesteerError(
                f"{fpath} holds {mm.dtype} {list(mm.shape)}; {MANIFEST} implies {want_dtype} {list(want_shape)}: "
                "the activation cache is corrupted"
            )
        self._mmaps[key] = mm
        return mm

    def _checked(self, entry: dict[str, Any]) -> Path:
        """Path of a listed file, hashing it first when verify='lazy' and it was not checked yet."""
        name = entry["name"]
        if self._verify_mode == "lazy" and name not in self._verified:
            _check_sha256(self.path, entry)
            self._verified.add(name)
        return self.path / name

    def verify(self) -> VerifyReport:
        """Hash every listed file (shards, index, labels); raise naming the first that does not match."""
        from ..utils.progress import progress

        entries = _manifest_files(self.manifest)
        total = 0
        with progress(total=sum(e["bytes"] for e in entries), unit="B", unit_scale=True, desc="verify") as bar:
            for entry in entries:
                _check_sha256(self.path, entry)
                self._verified.add(entry["name"])
                total += entry["bytes"]
                bar.update(entry["bytes"])
        return VerifyReport(
            files=len(entries),
            bytes=total,
            completed=self.completed,
            images_done=self.images_done,
            n_images=self.n_images,
        )

    # -- rows --------------------------------------------------------------------------------------

    def rows(self, hook: str | None = None, tokens: str | list[int] | tuple[int, ...] | None = None) -> RowView:
        """A `RowSource` over the rows of `hook` (optional when the cache has one hook), optionally
        restricted to `tokens`: 'cls', 'patch', 'all' or a list of token indices."""
        if hook is None:
            if len(self.hooks) != 1:
                raise SparsesteerError(f"{self.path} holds several hooks ({', '.join(self.hooks)}); choose one")
            hook = self.hooks[0]
        elif hook not in self.hooks:
            raise unknown("hook", hook, self.hooks)
        return RowView(self, hook, tokens, self._token_filter(tokens))

    def _token_filter(self, tokens: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
        """Token positions to keep, or None for every row."""
        positions = self.settings.token_positions
        cls_pos = self.settings.cls_position
        held = f"it holds tokens {_describe_positions(positions)} (tokens={self.settings.tokens!r})"
        if tokens is None or tokens == "all":
            return None
        if isinstance(tokens, str):
            if tokens == "cls":
                if cls_pos is None:
                    raise SparsesteerError(f"{self.path}: the model has no CLS token, so there are no cls rows")
                if cls_pos not in positions:
                    raise SparsesteerError(f"{self.path} has no cls rows (token {cls_pos}); {held}")
                keep: tuple[int, ...] = (cls_pos,)
            elif tokens == "patch":
                keep = tuple(p for p in positions if p != cls_pos)
                if not keep:
                    raise SparsesteerError(f"{self.path} has no patch rows; {held}")
            else:
                raise unknown("token selection", tokens, TOKEN_SELECTIONS)
        else:
            wanted = [int(t) for t in tokens]
            absent = [t for t in wanted if t not in positions]
            if absent:
                raise SparsesteerError(f"{self.path} has no rows for token {absent[0]}; {held}")
            if not wanted:
                raise SparsesteerError("rows: empty token list")
            wanted_set = set(wanted)
            keep = tuple(p for p in positions if p in wanted_set)  # storage order
        return None if len(keep) == len(positions) else keep

    # Memmaps are re-opened after unpickling (e.g. in DataLoader workers) instead of being copied.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mmaps"] = {}
        state["_labels"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ActivationCache({str(self.path)!r}, hooks={list(self.hooks)}, dtype={self.dtype}, rows={self.n_rows}, "
            f"images={self.images_done}/{self.n_images}{'' if self.completed else ', incomplete'})"
        )


def _describe_positions(positions: tuple[int, ...]) -> str:
    p = list(positions)
    if len(p) > 2 and p == list(range(p[0], p[0] + len(p))):
        return f"{p[0]}..{p[-1]}"
    return str(p[:8])[1:-1] + (", ..." if len(p) > 8 else "")


@dataclass(frozen=True)
class _Kept:
    """The rows of one shard kept by a token filter, stored compactly: when (as the writer
    guarantees) they repeat per image, row k is `base + (k // m) * stride + pattern[k % m]`;
    otherwise an explicit int32/int64 row-id array."""

    base: int = 0
    stride: int = 0
    pattern: np.ndarray | None = None
    ids: np.ndarray | None = None

    @classmethod
    def from_ids(cls, ids: np.ndarray, m: int) -> _Kept:
        if ids.size and ids.size % m == 0:
            grid = ids.reshape(-1, m)
            starts = grid[:, 0]
            stride = int(starts[1] - starts[0]) if len(starts) > 1 else 0
            pattern = grid[0] - starts[0]
            regular = (starts == starts[0] + stride * np.arange(len(starts))).all()
            if regular and (grid - starts[:, None] == pattern).all():
                return cls(base=int(starts[0]), stride=stride, pattern=pattern.astype(np.int64))
        dtype = np.int32 if not ids.size or ids.max() <= _INT32_MAX else np.int64
        return cls(ids=ids.astype(dtype))

    def select(self, a: int, b: int) -> slice | np.ndarray:
        """Shard row ids of kept rows [a, b): a slice when they are evenly spaced."""
        if self.ids is not None:
            return self.ids[a:b]
        assert self.pattern is not None
        m = len(self.pattern)
        if b <= a:
            return slice(0, 0)
        if m == 1:
            return slice(self.base + a * self.stride, self.base + (b - 1) * self.stride + 1, self.stride or 1)
        if self.stride == m and (self.pattern == np.arange(m)).all():  # kept rows are contiguous
            return slice(self.base + a, self.base + b)
        k = np.arange(a, b)
        return self.base + (k // m) * self.stride + self.pattern[k % m]


class RowView:
    """Rows of one hook of a cache, optionally filtered by token, in storage order (a `RowSource`).

    Per-shard row counts come from the manifest (each image has one row per token position), so
    building a view reads no data; the row ids a filter keeps in a shard are computed from its
    index file the first time that shard is read, then kept compactly (`_Kept`).
    """

    def __init__(self, cache: ActivationCache, hook: str, tokens: Any, keep: tuple[int, ...] | None):
        self.cache = cache
        self.hook = hook
        self.tokens = list(tokens) if isinstance(tokens, (list, tuple)) else tokens
        self._keep = keep
        self.d = cache.settings.d[hook]
        tpi = cache.tokens_per_image
        m = tpi if keep is None else len(keep)
        counts = [s["rows"] // tpi * m for s in cache.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.n_rows = int(self._offsets[-1])
        self._kept: dict[int, _Kept] = {}

    def __len__(self) -> int:
        return self.n_rows

    def _select(self, shard: int, a: int, b: int) -> slice | np.ndarray:
        if self._keep is None:
            return slice(a, b)
        kept = self._kept.get(shard)
        if kept is None:
            tokens = self.cache.index(shard)[:, 1]
            ids = np.flatnonzero(np.isin(tokens, self._keep))
            expected = int(self._offsets[shard + 1] - self._offsets[shard])
            if ids.size != expected:
                raise SparsesteerError(
                    f"{self.cache.path / self.cache.manifest['shards'][shard]['files'][INDEX_ROLE]['name']}: "
                    f"{ids.size} rows of tokens {list(self._keep)[:8]} where the manifest implies {expected}: "
                    "the activation cache is corrupted"
                )
            kept = self._kept[shard] = _Kept.from_ids(ids, len(self._keep))
        return kept.select(a, b)

    def _segments(self, start: int, stop: int):
        """(shard, selection within the shard, output offset, count) covering view rows [start, stop)."""
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise TypeError(f"read: start and stop must be ints, got {start!r}, {stop!r}")
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for a view of {self.n_rows} rows")
        offsets = self._offsets
        shard = int(np.searchsorted(offsets, start, side="right")) - 1
        pos = int(start)
        while pos < stop:
            lo, hi = int(offsets[shard]), int(offsets[shard + 1])
            if hi > pos:
                b = min(stop, hi)
                yield shard, self._select(shard, pos - lo, b - lo), pos - start, b - pos
                pos = b
            shard += 1

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the view as a new [stop - start, d] tensor in the stored dtype."""
        import torch

        stored = STORED_DTYPES[self.cache.dtype].newbyteorder("=")
        out = np.empty((int(stop) - int(start) if stop >= start else 0, self.d), dtype=stored)
        for shard, sel, lo, n in self._segments(start, stop):
            mm = self.cache.shard(self.hook, shard)
            if isinstance(sel, slice):
                out[lo : lo + n] = mm[sel]
            else:
                np.take(mm, sel, axis=0, out=out[lo : lo + n], mode="clip")  # ids are in range; 'raise' would buffer
        if self.cache.dtype == "bfloat16":
            return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(out)

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        """int64 label of each row in [start, stop) (the label of its image), or None without labels."""
        labels = self.cache.labels
        if labels is None:
            return None
        images = np.empty(max(int(stop) - int(start), 0), dtype=np.int64)
        for shard, sel, lo, n in self._segments(start, stop):
            images[lo : lo + n] = self.cache.index(shard)[sel, 0]
        return labels[images]

    def row_index(self, start: int, stop: int) -> np.ndarray:
        """(image index, token index) int64 [rows, 2] of rows [start, stop): where each row comes from."""
        out = np.empty((max(int(stop) - int(start), 0), 2), dtype=np.int64)
        for shard, sel, lo, n in self._segments(start, stop):
            out[lo : lo + n] = self.cache.index(shard)[sel]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.cache.path),
            "hook": self.hook,
            "tokens": self.tokens if self.tokens is not None else "all",
            "n_rows": self.n_rows,
            "d": self.d,
            "dtype": self.cache.dtype,
            "settings_sha256": self.cache.settings_sha256,
        }

    def __repr__(self) -> str:
        return f"RowView({self.describe()})"
