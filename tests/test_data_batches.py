"""image_batches: order, pixels equal to the preprocessor's, ranges, workers, unreadable images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from helpers import make_folder_dataset

from sparsesteer.data import Preprocessor, open_dataset
from sparsesteer.data.batches import ImageBatch, SkippedImage, default_workers, image_batches
from sparsesteer.utils.errors import SparsesteerError

PRE = Preprocessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


def reference(ds, indices) -> np.ndarray:
    return np.stack([PRE(ds[int(i)].image) for i in indices])


@pytest.fixture
def folder_ds(tmp_path):
    return open_dataset(f"folder:{make_folder_dataset(tmp_path / 'data')}", "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_in_order_equal_the_preprocessor(folder_ds, workers):
    batches = list(image_batches(folder_ds, PRE, batch_size=3, workers=workers))
    assert [(b.start, b.stop) for b in batches] == [(0, 3), (3, 6), (6, 7)]
    assert all(isinstance(b, ImageBatch) and b.skipped == [] for b in batches)
    pixels = torch.cat([b.pixels for b in batches])
    assert pixels.dtype == torch.float32 and pixels.shape == (7, 3, 16, 16)
    np.testing.assert_array_equal(pixels.numpy(), reference(folder_ds, range(7)))
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), np.arange(7))
    np.testing.assert_array_equal(torch.cat([b.labels for b in batches]).numpy(), folder_ds.labels())
    np.testing.assert_array_equal(folder_ds.labels(), [0, 0, 0, 1, 1, 2, 2])


def test_index_range_and_batch_size_larger_than_range(folder_ds):
    (b,) = image_batches(folder_ds, PRE, batch_size=64, start=2, stop=5, workers=1)
    assert (b.start, b.stop) == (2, 5) and b.indices.tolist() == [2, 3, 4]
    np.testing.assert_array_equal(b.pixels.numpy(), reference(folder_ds, [2, 3, 4]))
    assert list(image_batches(folder_ds, PRE, start=7, stop=7)) == []
    with pytest.raises(SparsesteerError, match=r"image range \[3, 9\) is outside the dataset's 7 images"):
        list(image_batches(folder_ds, PRE, start=3, stop=9))


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_an_error_naming_the_file_and_the_skip_option(tmp_path, workers):
    ds = open_dataset(f"folder:{make_folder_dataset(tmp_path, corrupt={(1, 0)})}", "train")
    bad = ds.source(3)
    assert bad.endswith("class_1/img_0.jpg")
    with pytest.raises(SparsesteerError) as e:
        list(image_batches(ds, PRE, batch_size=2, workers=workers))
    msg = str(e.value)
    assert bad in msg and "--on-bad-image skip" in msg and "Traceback" not in msg


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_leaves_unreadable_images_out_and_lists_them(tmp_path, workers):
    ds = open_dataset(f"folder:{make_folder_dataset(tmp_path, corrupt={(0, 2), (1, 0)})}", "train")
    batches = list(image_batches(ds, PRE, batch_size=2, workers=workers, on_bad_image="skip"))
    assert [(b.start, b.stop) for b in batches] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    b = batches[1]  # images 2 and 3 are both unreadable: an empty batch that still says so
    assert b.pixels.shape == (0, 3, 16, 16) and b.labels.shape == (0,) and b.indices.tolist() == []
    assert [s.index for s in b.skipped] == [2, 3]
    assert all(isinstance(s, SkippedImage) and s.source == ds.source(s.index) for s in b.skipped)
    assert "cannot read image" in b.skipped[0].error
    kept = np.concatenate([b.indices for b in batches])
    assert kept.tolist() == [0, 1, 4, 5, 6]
    np.testing.assert_array_equal(torch.cat([b.pixels for b in batches]).numpy(), reference(ds, kept))
    np.testing.assert_array_equal(torch.cat([b.labels for b in batches]).numpy(), ds.labels()[kept])


def test_chunk_restarts_batching_at_each_boundary(folder_ds):
    batches = list(image_batches(folder_ds, PRE, batch_size=2, start=1, chunk=3, workers=0))
    assert [(b.start, b.stop) for b in batches] == [(1, 3), (3, 4), (4, 6), (6, 7)]
    np.testing.assert_array_equal(torch.cat([b.pixels for b in batches]).numpy(), reference(folder_ds, range(1, 7)))


def test_spans_are_batched_each_as_if_read_alone(folder_ds):
    """Several ranges through one loader (`train --model` reads a window's chunks so): batching restarts
    at each range (and at each chunk within it), ranges come in the order given."""
    batches = list(image_batches(folder_ds, PRE, batch_size=2, spans=[(4, 7), (0, 3), (3, 3)], workers=0))
    assert [(b.start, b.stop) for b in batches] == [(4, 6), (6, 7), (0, 2), (2, 3)]
    want = reference(folder_ds, [4, 5, 6, 0, 1, 2])
    np.testing.assert_array_equal(torch.cat([b.pixels for b in batches]).numpy(), want)
    chunked = list(image_batches(folder_ds, PRE, batch_size=2, spans=[(1, 7)], chunk=3, workers=0))
    assert [(b.start, b.stop) for b in chunked] == [(1, 3), (3, 4), (4, 6), (6, 7)]
    with pytest.raises(SparsesteerError, match=r"image range \[6, 99\) is outside"):
        list(image_batches(folder_ds, PRE, spans=[(0, 2), (6, 99)]))


def test_bad_arguments(folder_ds):
    with pytest.raises(SparsesteerError, match=r"unknown --on-bad-image value 'skp' \(did you mean 'skip'\?\)"):
        list(image_batches(folder_ds, PRE, on_bad_image="skp"))
    with pytest.raises(SparsesteerError, match="batch size must be an integer >= 1"):
        list(image_batches(folder_ds, PRE, batch_size=0))
    with pytest.raises(SparsesteerError, match="workers must be an integer >= 0"):
        list(image_batches(folder_ds, PRE, workers=-1))
    with pytest.raises(SparsesteerError, match="chunk must be an integer >= 1"):
        list(image_batches(folder_ds, PRE, chunk=0))


def test_variable_size_preprocessing_cannot_be_batched(folder_ds):
    no_crop = Preprocessor(size={"shortest_edge": 16}, do_center_crop=False)
    with pytest.raises(SparsesteerError, match="different sizes"):
        list(image_batches(folder_ds, no_crop, batch_size=7, workers=0))


def test_default_workers_and_picklable_parts(folder_ds):
    assert 0 <= default_workers() <= 8
    clone = pickle.loads(pickle.dumps((folder_ds, PRE)))
    np.testing.assert_array_equal(clone[1](clone[0][4].image), PRE(folder_ds[4].image))


def test_real_cifar10_jpegs(cifar10_jpeg):
    """The real JPEGs through one worker: same pixels as the preprocessor in this process, labels
    from the class folders (airplane = 0, automobile = 1, ...)."""
    ds = open_dataset(f"folder:{cifar10_jpeg}", "test")
    clip = Preprocessor()  # CLIP's 224 px recipe: the 32 px images are upsampled
    picks = [0, 1, 1000, 9999]
    batches = [b for s in picks for b in image_batches(ds, clip, batch_size=4, start=s, stop=s + 1, workers=1)]
    pixels = torch.cat([b.pixels for b in batches]).numpy()
    assert pixels.shape == (4, 3, 224, 224)
    np.testing.assert_array_equal(pixels, np.stack([clip(ds[i].image) for i in picks]))
    assert torch.cat([b.labels for b in batches]).tolist() == [0, 0, 1, 9]
    assert ds.classes[:2] == ["airplane", "automobile"]
