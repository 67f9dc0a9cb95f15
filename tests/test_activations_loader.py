"""The shuffled batch stream: every row once per epoch, deterministic, resumable, bounded."""

import itertools

import numpy as np
import pytest
import torch

from sparsesteer.activations.loader import NpySource, ShuffledBatches, TensorSource, open_source, sample_rows
from sparsesteer.utils.errors import SparsesteerError


def rows_of(stream, n_batches):
    return np.concatenate([b.rows for b in itertools.islice(stream, n_batches)])


@pytest.mark.parametrize("buffer_rows", [1000, 64])  # one window per epoch / many windows
def test_each_epoch_visits_every_row_exactly_once(buffer_rows):
    n, d, bs = 1000, 4, 50
    acts = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, d)
    src = TensorSource(acts, labels=np.arange(n) % 7)
    stream = ShuffledBatches(
        src, bs, seed=3, buffer_bytes=buffer_rows * d * 4, chunk_bytes=16 * d * 4, prefetch=buffer_rows < 1000
    )
    batches = list(itertools.islice(stream.iter_from(0), 2 * n // bs))
    rows = np.concatenate([b.rows for b in batches])
    for epoch in range(2):
        assert sorted(rows[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(rows[:n], np.arange(n))  # shuffled
    assert not np.array_equal(rows[:n], rows[n:])  # reshuffled each epoch
    # values and labels travel with their rows
    for b in batches:
        assert torch.equal(b.x[:, 0], torch.from_numpy(b.rows).float())
        assert torch.equal(b.labels, torch.from_numpy(b.rows % 7))


def test_a_source_with_labels_for_some_reads_only_is_an_error():
    """Labels for some chunks and None for others is a broken source, never a silently unlabeled stream."""

    class Patchy(TensorSource):
        def labels(self, start, stop):
            return None if start == 0 else super().labels(start, stop)

    src = Patchy(torch.zeros(100, 2), labels=np.arange(100))
    with pytest.raises(RuntimeError, match="labels for some reads and None for others"):
        next(ShuffledBatches(src, 10, chunk_bytes=10 * 2 * 4, prefetch=False).iter_from(0))


def test_windows_are_bounded_and_deterministic():
    n, d = 3000, 8
    src = TensorSource(torch.randn(n, d))
    s = ShuffledBatches(src, 100, seed=1, buffer_bytes=500 * d * 4, chunk_bytes=100 * d * 4)
    assert all(w.n_rows <= 500 for w in s._windows(0))
    a = rows_of(ShuffledBatches(src, 100, seed=1, buffer_bytes=500 * d * 4, chunk_bytes=100 * d * 4).iter_from(0), 60)
    b = rows_of(s.iter_from(0), 60)
    assert np.array_equal(a, b)
    c = rows_of(ShuffledBatches(src, 100, seed=2, buffer_bytes=500 * d * 4, chunk_bytes=100 * d * 4).iter_from(0), 60)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("position", [0, 70, 500, 2999, 3000, 4321])
def test_starting_at_a_position_continues_the_same_stream(position):
    n, d, bs = 3000, 2, 70
    src = TensorSource(torch.randn(n, d))
    kw = dict(seed=5, buffer_bytes=700 * d * 4, chunk_bytes=50 * d * 4)
    full = rows_of(ShuffledBatches(src, bs, **kw).iter_from(0), 140)
    resumed = rows_of(ShuffledBatches(src, bs, **kw).iter_from(position), 20)
    assert np.array_equal(resumed, full[position : position + 20 * bs])


def test_npy_source_is_memory_mapped_and_validated(tmp_path):
    arr = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    src = open_source(tmp_path / "a.npy")
    assert isinstance(src, NpySource) and isinstance(src.array, np.memmap)
    assert torch.equal(src.read(10, 20), torch.from_numpy(arr[10:20]))
    np.save(tmp_path / "one_d.npy", np.zeros(10, np.float32))
    with pytest.raises(SparsesteerError, match=r"2-D \[rows, d\].*\(10,\)"):
        open_source(tmp_path / "one_d.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(SparsesteerError, match="empty"):
        open_source(tmp_path / "empty.npy")
    with pytest.raises(SparsesteerError, match="not found"):
        open_source(tmp_path / "missing.npy")
    np.save(tmp_path / "labels.npy", np.zeros(99, np.int64))
    with pytest.raises(SparsesteerError, match="99 labels for 100 rows"):
        open_source(tmp_path / "a.npy", labels=tmp_path / "labels.npy")


def test_sample_rows_is_spread_and_sized():
    src = TensorSource(torch.arange(100_000, dtype=torch.float32)[:, None])
    s = sample_rows(src, 5000, chunk_rows=500)
    assert s.shape == (5000, 1)
    assert s.min() < 20_000 and s.max() > 80_000  # not just the first rows
    assert len(torch.unique(s)) == 5000
