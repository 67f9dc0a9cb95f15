"""Reading a cache: `ActivationCache` (memory-mapped shards, lazy checksums, verify) and `RowView`,
the token-filtered `RowSource` that the trainer and the loaders read rows from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ...utils.errors import SparsesteerError, unknown
from .settings import (
    INDEX_DTYPE,
    INDEX_ROLE,
    INT32_MAX,
    LABELS_DTYPE,
    MANIFEST,
    STORED_DTYPES,
    TOKEN_SELECTIONS,
    VERIFY_MODES,
    CacheSettings,
    acts_role,
    check_all_present,
    check_sha256,
    covered_images,
    manifest_files,
    read_manifest,
)

if TYPE_CHECKING:
    import torch


class Rows(NamedTuple):
    """A whole view read into memory."""

    x: torch.Tensor
    """[n_rows, d] activations."""
    labels: np.ndarray | None
    """int64 [n_rows] label of each row's image (-1 unlabeled), or None when the cache has no labels."""


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
        manifest, settings = read_manifest(path)
        cache = cls(path, manifest, settings, verify)
        if verify != "none":
            check_all_present(path, manifest)
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
        return covered_images(self.manifest)

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
    def classes(self) -> list[str] | None:
        """Class names of the labels (format version 2), or None (unlabeled, or a version-1 cache)."""
        return None if self.settings.classes is None else list(self.settings.classes)

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
            check_sha256(self.path, entry)
            self._verified.add(name)
        return self.path / name

    def verify(self) -> VerifyReport:
        """Hash every listed file (shards, index, labels); raise naming the first that does not match."""
        from ...utils.progress import progress

        entries = manifest_files(self.manifest)
        total = 0
        with progress(total=sum(e["bytes"] for e in entries), unit="B", unit_scale=True, desc="verify") as bar:
            for entry in entries:
                check_sha256(self.path, entry)
                self._verified.add(entry["name"])
                total += entry["bytes"]
                bar.update(entry["bytes"])
        # the checksums prove the files unchanged, not the manifest: its row counts must match the
        # arrays' headers too (an edited `rows` would otherwise surface mid-training)
        for i, shard in enumerate(self.manifest["shards"]):
            for role in shard["files"]:
                self._mmap(role, i)
        _ = self.labels
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


def _as_json(tokens: str | tuple[int, ...]) -> str | list[int]:
    return tokens if isinstance(tokens, str) else list(tokens)


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
        dtype = np.int32 if not ids.size or ids.max() <= INT32_MAX else np.int64
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

    def read_all(self, dtype: torch.dtype | None = None) -> Rows:
        """The whole view in memory: (x [n_rows, d] float32 by default, labels or None). For the
        small final-CLS views steering and tuning work on; stream big views with `read`."""
        import torch

        x = self.read(0, self.n_rows).to(dtype or torch.float32)
        return Rows(x, self.labels(0, self.n_rows))

    def describe(self) -> dict[str, Any]:
        """Where the rows come from: path, hook, tokens, width, and the model/dataset/split that made them."""
        s = self.cache.settings
        dataset = s.dataset or {}
        return {
            "path": str(self.cache.path),
            "hook": self.hook,
            "tokens": self.tokens if self.tokens is not None else _as_json(s.tokens),  # the cache's own rows
            "n_rows": self.n_rows,
            "d": self.d,
            "dtype": self.cache.dtype,
            "settings_sha256": self.cache.settings_sha256,
            "model": s.model,
            "dataset": dataset.get("name"),
            "split": s.split,
            **({"subset": dataset["subset"]} if "subset" in dataset else {}),
            "classes": list(s.classes) if s.classes is not None else None,
        }

    def __repr__(self) -> str:
        return f"RowView({self.describe()})"
