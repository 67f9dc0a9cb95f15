"""`--limit`: a seeded class-stratified sample (hand-worked cases and properties)."""

import numpy as np
import pytest

from sparsesteer.data.subset import Subset, limit_dataset, stratified_sample
from sparsesteer.utils.errors import SparsesteerError


def test_class_sorted_labels_give_every_class():
    labels = np.repeat(np.arange(10), 100)  # a class-sorted folder: the first 50 would be one class
    idx = stratified_sample(labels, 50, seed=0)
    assert len(idx) == 50 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10


def test_largest_remainder_by_hand():
    # shares 6/10, 3/10, 1/10 of n=4: exact 2.4, 1.2, 0.4 -> floors 2, 1, 0; one left goes to the largest
    # fractional part (0.4, class 2)
    labels = np.array([0] * 6 + [1] * 3 + [2])
    idx = stratified_sample(labels, 4, seed=3)
    assert np.bincount(labels[idx], minlength=3).tolist() == [2, 1, 1]


def test_fewer_images_than_classes_picks_distinct_classes_and_depends_on_seed():
    labels = np.repeat(np.arange(8), 5)
    picks = {tuple(labels[stratified_sample(labels, 3, seed)]) for seed in range(6)}
    assert all(len(set(p)) == 3 for p in picks) and len(picks) > 1


def test_deterministic_and_whole_split():
    labels = np.random.default_rng(1).integers(-1, 4, 200)
    a, b = stratified_sample(labels, 37, 5), stratified_sample(labels, 37, 5)
    assert np.array_equal(a, b) and len(a) == 37 and len(np.unique(a)) == 37
    assert np.array_equal(stratified_sample(labels, 500, 0), np.arange(200))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_limit(bad):
    with pytest.raises(SparsesteerError, match="--limit must be a positive integer"):
        stratified_sample(np.zeros(4), bad)


def test_subset_dataset_views_the_base(tmp_path):
    from PIL import Image

    from sparsesteer.data import open_dataset

    for ci, name in enumerate(["a", "b", "c"]):
        (tmp_path / "test" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (4, 4), (ci * 80, i * 60, 0)).save(tmp_path / "test" / name / f"{i}.png")
    ds = open_dataset(f"folder:{tmp_path}", "test")
    assert limit_dataset(ds, None) is ds and limit_dataset(ds, 12) is ds
    sub = limit_dataset(ds, 6, seed=2)
    assert isinstance(sub, Subset) and len(sub) == 6
    assert np.bincount(sub.labels()).tolist() == [2, 2, 2]
    for i in range(len(sub)):
        j = sub.base_index(i)
        assert sub.source(i) == ds.source(j) and sub[i].label == ds[j].label
        assert np.array_equal(np.asarray(sub[i].image), np.asarray(ds[j].image))
    desc = sub.describe()
    assert desc["len"] == 12 and desc["subset"]["n"] == 6 and desc["subset"]["seed"] == 2
