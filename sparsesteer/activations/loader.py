"""Activation sources and the shuffled, bounded-memory batch stream the trainer reads.

A *source* is anything with `n_rows`, `d`, `read(start, stop)` and `labels(start, stop)`: an
in-memory tensor, a `.npy` file of shape [N, d] (memory-mapped), or a view of an activation cache
directory (`sparsesteer.activations.cache`).

The batch stream is a pure function of (seed, position), which is what makes resuming exact:
- each epoch visits the source's chunks (contiguous runs of `chunk_rows` rows) in an order drawn
  from (seed, epoch);
- consecutive chunks are grouped into windows of at most `buffer_rows` rows; a window is read
  into memory and its rows are permuted with a generator drawn from (seed, epoch, window);
- batches are consecutive slices of the concatenated permuted windows, across window and epoch
  boundaries.
A source that fits in the buffer is therefore fully shuffled every epoch; a larger one is read
sequentially in big contiguous pieces with a bounded buffer, while the next window is prefetched
in a background thread.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..utils import io
from ..utils.errors import SparsesteerError
from .cache import RowSource


class TensorSource:
    """An in-memory [N, d] array, optionally with [N] labels."""

    def __init__(self, acts: Tensor | np.ndarray, labels: Tensor | np.ndarray | None = None, *, name: str = "tensor"):
        acts = torch.as_tensor(acts)
        _check_2d(acts.shape, name)
        self.acts = acts
        self.n_rows, self.d = acts.shape
        self._labels = None
        if labels is not None:
            lab = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64).reshape(-1)
            if lab.shape[0] != self.n_rows:
                raise SparsesteerError(f"{name}: {lab.shape[0]} labels for {self.n_rows} rows")
            self._labels = lab
        self.name = name

    def read(self, start: int, stop: int) -> Tensor:
        return self.acts[start:stop].clone()

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        return None if self._labels is None else self._labels[start:stop].copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "tensor", "name": self.name, "n_rows": self.n_rows, "d": self.d, "dtype": str(self.acts.dtype)}


class NpySource:
    """A 2-D `.npy` file, memory-mapped (never loaded whole); optional labels `.npy` of length N."""

    def __init__(self, path: str | Path, labels: str | Path | None = None):
        self.path = Path(path)
        try:
            self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SparsesteerError(f"cannot read {self.path} as a .npy array: {e}") from None
        _check_2d(self.array.shape, str(self.path))
        if self.array.dtype.kind != "f":
            raise SparsesteerError(f"{self.path}: expected floating-point activations, got dtype {self.array.dtype}")
        self.n_rows, self.d = self.array.shape
        self._labels = None
        if labels is not None:
            lab = io.read_npy(labels, what="labels array")
            if lab.dtype.kind not in "iub":
                raise SparsesteerError(f"{labels}: labels must be integers, got dtype {lab.dtype}")
            lab = lab.astype(np.int64).reshape(-1)
            if lab.shape[0] != self.n_rows:
                raise SparsesteerError(f"{labels}: {lab.shape[0]} labels for {self.n_rows} rows in {self.path}")
            self._labels = lab

    def read(self, start: int, stop: int) -> Tensor:
        return torch.from_numpy(np.array(self.array[start:stop]))

    def labels(self, start: int, stop: int) -> np.ndarray | None:
        return None if self._labels is None else self._labels[start:stop].copy()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "npy",
            "path": str(self.path.resolve()),
            "n_rows": self.n_rows,
            "d": self.d,
            "dtype": str(self.array.dtype),
        }


def _check_2d(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise SparsesteerError(f"{name}: activations must be a 2-D [rows, d] array, got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise SparsesteerError(f"{name}: activations are empty (shape {tuple(shape)})")


def open_source(
    activations: str | Path | Tensor | np.ndarray | RowSource,
    *,
    hook: str | None = None,
    tokens: str | None = None,
    labels: str | Path | None = None,
    verify: str = "lazy",
    require_complete: bool = True,
) -> RowSource:
    """A RowSource from a tensor/array, a `.npy` file, or an activation cache directory."""
    if isinstance(activations, (Tensor, np.ndarray)):
        if hook or tokens:
            raise SparsesteerError("--hook/--tokens apply to activation cache directories, not to arrays")
        return TensorSource(activations, labels=io.read_npy(labels, what="labels array") if labels else None)
    if isinstance(activations, RowSource):
        return activations
    path = Path(activations)
    if path.is_file() and path.suffix == ".npy":
        if hook or tokens:
            raise SparsesteerError(f"{path} is a single .npy array: --hook/--tokens do not apply")
        return NpySource(path, labels=labels)
    if path.is_dir() and (path / "manifest.json").is_file():
        from .cache import ActivationCache

        cache = ActivationCache.open(path, verify=verify)
        if require_complete and not cache.completed:
            raise SparsesteerError(
                f"{path} is an incomplete activation cache: finish it by rerunning `sparsesteer cache` with the same settings"
            )
        return cache.rows(hook, tokens)
    if not path.exists():
        raise SparsesteerError(f"activations not found: {path}")
    raise SparsesteerError(
        f"{path} is neither a .npy file of shape [N, d] nor an activation cache directory (no manifest.json)"
    )


class Batch(NamedTuple):
    """One training batch."""

    x: Tensor
    """[B, d] float32 activations."""
    labels: Tensor | None
    """[B] int64 labels (-1 unlabeled), or None when the source has none."""
    rows: np.ndarray
    """[B] source row index of each sample (for error messages)."""


@dataclass(frozen=True)
class _Window:
    epoch: int
    index: int
    chunks: tuple[int, ...]
    n_rows: int


class ShuffledBatches:
    """Deterministic shuffled batches of a RowSource with a bounded in-memory buffer."""

    def __init__(
        self,
        source: RowSource,
        batch_size: int,
        *,
        seed: int = 0,
        buffer_bytes: int = 512 << 20,
        chunk_bytes: int = 4 << 20,
        prefetch: bool = True,
    ):
        if batch_size < 1:
            raise SparsesteerError(f"batch size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        row_bytes = source.d * 4
        # a source may fix its chunk (a model-backed one reads whole images: `stream.ModelRows`)
        self.chunk_rows = max(1, min(source.n_rows, getattr(source, "chunk_rows", None) or chunk_bytes // row_bytes))
        self.n_chunks = math.ceil(source.n_rows / self.chunk_rows)
        buffer_rows = max(self.chunk_rows, buffer_bytes // row_bytes)
        self.chunks_per_window = max(1, buffer_rows // self.chunk_rows)
        self.prefetch = prefetch

    # -- the stream as a pure function of position
    def _chunk_len(self, c: int) -> int:
        return min(self.chunk_rows, self.source.n_rows - c * self.chunk_rows)

    def _windows(self, epoch: int) -> list[_Window]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_chunks)
        out = []
        for w, s in enumerate(range(0, self.n_chunks, self.chunks_per_window)):
            chunks = tuple(int(c) for c in order[s : s + self.chunks_per_window])
            out.append(_Window(epoch, w, chunks, sum(self._chunk_len(c) for c in chunks)))
        return out

    def _load(self, win: _Window) -> tuple[Tensor, np.ndarray | None, np.ndarray]:
        """Rows of a window, permuted: (acts, labels, source row ids)."""
        spans = [(c * self.chunk_rows, c * self.chunk_rows + self._chunk_len(c)) for c in sorted(win.chunks)]
        # read in file order; the permutation below decides the order. A model-backed source reads
        # a window's chunks in one pass of its decoding workers (`stream.ModelRows.read_many`).
        read_many = getattr(self.source, "read_many", None)
        parts = read_many(spans) if read_many else [self.source.read(s, e) for s, e in spans]
        labs = [self.source.labels(s, e) for s, e in spans]
        rows = [np.arange(s, e) for s, e in spans]
        perm = np.random.default_rng([self.seed, win.epoch, win.index + 1]).permutation(win.n_rows)
        acts = torch.cat(parts).index_select(0, torch.from_numpy(perm))  # faster than [perm] on CPU
        row_ids = np.concatenate(rows)[perm]
        labels = _concat_labels(labs)
        return acts, None if labels is None else labels[perm], row_ids

    def iter_from(self, position: int = 0) -> Iterator[Batch]:
        """Infinite stream of batches starting at sample `position` of the stream."""
        n = self.source.n_rows
        epoch, offset = divmod(position, n)
        windows = self._windows(epoch)
        starts = np.cumsum([0] + [w.n_rows for w in windows])
        w = bisect.bisect_right(starts.tolist(), offset) - 1
        offset -= int(starts[w])

        def upcoming() -> Iterator[_Window]:
            nonlocal epoch
            yield from windows[w:]
            while True:
                epoch += 1
                yield from self._windows(epoch)

        pool = concurrent.futures.ThreadPoolExecutor(1) if self.prefetch else None
        try:
            wins = upcoming()
            current = self._load(next(wins))
            pending = pool.submit(self._load, next(wins)) if pool else None
            pend_acts: list[Tensor] = []
            pend_labels: list[np.ndarray | None] = []
            pend_rows: list[np.ndarray] = []
            have = 0
            while True:
                acts, labels, rows = current
                take_from = offset
                offset = 0
                while take_from < acts.shape[0]:
                    need = self.batch_size - have
                    stop = min(acts.shape[0], take_from + need)
                    pend_acts.append(acts[take_from:stop])
                    pend_labels.append(None if labels is None else labels[take_from:stop])
                    pend_rows.append(rows[take_from:stop])
                    have += stop - take_from
                    take_from = stop
                    if have == self.batch_size:
                        yield _make_batch(pend_acts, pend_labels, pend_rows)
                        pend_acts, pend_labels, pend_rows, have = [], [], [], 0
                if pool is not None and pending is not None:  # both or neither (prefetch)
                    current = pending.result()
                    pending = pool.submit(self._load, next(wins))
                else:
                    current = self._load(next(wins))
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def _make_batch(acts: list[Tensor], labels: list[np.ndarray | None], rows: list[np.ndarray]) -> Batch:
    x = (torch.cat(acts) if len(acts) > 1 else acts[0]).to(torch.float32)
    lab = _concat_labels(labels)
    return Batch(x, None if lab is None else torch.from_numpy(lab), np.concatenate(rows))


def _concat_labels(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """The labels of consecutive reads joined, or None from a source without labels (a source has
    labels for every read or for none: a mix is a bug in the source, not unlabeled data)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise RuntimeError("a row source gave labels for some reads and None for others")
    return np.concatenate(present)


def sample_rows(source: RowSource, n: int, *, seed: int = 0, chunk_rows: int = 4096) -> Tensor:
    """About `n` rows spread over the source (random contiguous chunks), as float32, for
    initialisation statistics (geometric median, mean norm) without reading everything."""
    if source.n_rows <= n:
        return source.read(0, source.n_rows).to(torch.float32)
    # a source with a chunk grid (`stream.ModelRows`) is sampled in its own chunks, which the stream
    # then reads again (kept by `ModelRows.keeping`, not recomputed)
    chunk_rows = min(getattr(source, "chunk_rows", None) or chunk_rows, n)
    n_chunks = math.ceil(source.n_rows / chunk_rows)
    take = np.sort(np.random.default_rng([seed, 7]).choice(n_chunks, size=math.ceil(n / chunk_rows), replace=False))
    parts = [source.read(int(c) * chunk_rows, min(source.n_rows, (int(c) + 1) * chunk_rows)) for c in take]
    return torch.cat(parts)[:n].to(torch.float32)


def describe_row(source: RowSource, row: int) -> str:
    """Where row `row` of a source comes from, for error messages: 'source row R', plus the image
    and token it belongs to for a cache view, and the file or cache it is read from."""
    text = f"source row {row}"
    row_index = getattr(source, "row_index", None)
    if row_index is not None:
        image, token = (int(v) for v in row_index(row, row + 1)[0])
        text += f": image {image}, token {token}"
    path = source.describe().get("path")
    return text + (f" of {path}" if path else "")
