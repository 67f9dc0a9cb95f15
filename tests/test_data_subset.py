"""Samples of a split: `--limit`'s seeded class-stratified sample (hand-worked cases and properties),
the group-balanced rule, and every rule's record replayed."""

import numpy as np
import pytest

from sparsesteer.data.datasets import ImageDataset
from sparsesteer.data.subset import RULES, Subset, draw, limit_dataset, replay, stratified_sample
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


class Labelled(ImageDataset):
    """Labels and one attribute, no images: what the sampling rules read."""

    def __init__(self, labels, place):
        self.name, self.split, self.root, self.classes = "labelled", "test", "", ["a", "b", "c"]
        self.attributes = ["place"]
        self._labels = np.asarray(labels, dtype=np.int64)
        self._attrs = {"place": np.asarray(place, dtype=np.int64)}

    def _load_image(self, i):
        raise AssertionError("the sampling rules never decode an image")

    def source(self, i):
        return str(i)


def labelled(seed=0, n=60):
    rng = np.random.default_rng(seed)
    return Labelled(rng.integers(0, 3, n), rng.integers(0, 2, n))


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("by", [("label",), ("label", "place")])
def test_every_rule_records_its_name_and_replays_to_the_same_sample(rule, by):
    import json

    ds = labelled()
    sub = draw(ds, rule, 13, seed=4, by=by)
    assert isinstance(sub, Subset) and len(sub) == 13
    record = json.loads(json.dumps(sub.describe()["subset"]))  # as written to a manifest or report
    assert record["rule"] == rule and record.get("by", ["label"]) == list(by)
    assert np.array_equal(replay(labelled(), record), sub.indices)


def test_the_rules_draw_differently_so_the_name_matters():
    ds = labelled()
    strat, bal = draw(ds, "class-stratified", 13, 4), draw(ds, "group-balanced", 13, 4)
    assert not np.array_equal(strat.indices, bal.indices)
    wrong = {**bal.describe()["subset"], "rule": "class-stratified"}  # a record naming another rule
    with pytest.raises(SparsesteerError, match="draws another sample"):
        replay(ds, wrong)


def test_group_balanced_over_label_and_attribute_is_2_label_plus_attribute():
    from sparsesteer.data.subset import balanced_sample

    ds = labelled(seed=3)
    groups = 2 * ds.labels() + ds.attribute_array("place")
    assert np.array_equal(
        draw(ds, "group-balanced", 20, 7, by=("label", "place")).indices, balanced_sample(groups, 20, 7)
    )


def test_replay_refuses_a_record_of_other_data_or_an_unknown_rule():
    record = draw(labelled(), "group-balanced", 13, 4).describe()["subset"]
    with pytest.raises(SparsesteerError, match="draws another sample"):
        replay(labelled(seed=1), record)  # other labels, same size
    with pytest.raises(SparsesteerError, match="drawn from 60 images"):
        replay(labelled(n=50), record)
    with pytest.raises(SparsesteerError, match="unknown sampling rule 'round-robin'"):
        replay(labelled(), {**record, "rule": "round-robin"})


def test_rows_the_caller_lists_are_recorded_as_such_not_as_a_sampling_rule():
    ds = labelled()
    given = Subset(ds, np.array([3, 1, 4]), seed=0, n_asked=3).describe()["subset"]  # e.g. a latent's top images
    assert given["rule"] == "indices"
    with pytest.raises(
        SparsesteerError, match="unknown sampling rule 'indices'; valid: class-stratified, group-balanced"
    ):
        replay(ds, given)
