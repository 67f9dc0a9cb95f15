"""The typographic-attack generator (`typo:` specs) on folder datasets built here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers import make_folder_dataset
from PIL import Image

from sparsesteer.data import available_splits, limit_dataset, open_dataset, parse_spec
from sparsesteer.data.typographic import TypographicDataset, default_font, to_rgb, word_classes
from sparsesteer.utils.errors import SparsesteerError


@pytest.fixture
def folder(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", (3, 3, 2, 2), size=40)
    make_folder_dataset(tmp_path / "ds", (1, 1, 1, 1), split="test", size=40, seed=1)
    # one flat-colour RGBA image (alpha composited onto white, like the preprocessor does)
    Image.new("RGBA", (48, 36), (10, 200, 30, 128)).save(root / "train" / "class_2" / "flat.png")
    return root


def _changed_box(clean: Image.Image, attacked: Image.Image):
    diff = np.any(np.asarray(clean, dtype=np.int16) != np.asarray(attacked, dtype=np.int16), axis=2)
    ys, xs = np.nonzero(diff)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


@pytest.mark.parametrize("box", [0, 1, 0.5])
def test_the_word_is_drawn_inside_its_box_only_and_labels_are_unchanged(folder, box):
    ds = open_dataset(f"typo:seed=7,box={box}:folder:{folder}", "train")
    base = open_dataset(f"folder:{folder}", "train")
    assert isinstance(ds, TypographicDataset) and len(ds) == len(base) == 11
    assert ds.classes == base.classes and np.array_equal(ds.labels(), base.labels())
    typo = ds.attribute_array("typo_class")
    for i in range(len(ds)):
        ex, clean = ds[i], base[i]
        assert ex.label == clean.label and ex.index == i and ex.attrs["typo_class"] == typo[i]
        assert typo[i] != ex.label and ds.text(i) == ds.classes[typo[i]]
        assert ex.image.mode == "RGB" and ex.image.size == clean.image.size
        r = ds.rendering(i, ex.image.size)
        assert r.word == ds.text(i) and r.typo_class == typo[i]
        changed = _changed_box(to_rgb(clean.image), ex.image)
        assert changed is not None, f"image {i}: no pixel changed"
        x0, y0, x1, y1 = r.box
        assert x0 <= changed[0] and y0 <= changed[1] and changed[2] <= x1 and changed[3] <= y1, (changed, r.box)
        assert 0 <= x0 < x1 <= ex.image.width and 0 <= y0 < y1 <= ex.image.height
        if r.box_color is not None:  # the filled box covers most of its area
            assert changed == (x0, y0, x1, y1)
        assert np.array_equal(np.asarray(ds.clean(i).image), np.asarray(clean.image))  # pairs up by index
    if box == 1:
        assert all(ds.rendering(i, (40, 40)).box_color is not None for i in range(len(ds)))
    if box == 0:
        assert all(ds.rendering(i, (40, 40)).box_color is None for i in range(len(ds)))


def test_deterministic_given_the_seed_reopenable_and_picklable(folder):
    a = open_dataset(f"typo:folder:{folder}", "train", seed=3)
    b = open_dataset(f"typo:seed=3:folder:{folder}", "train")
    c = open_dataset(f"typo:seed=4:folder:{folder}", "train")
    again = open_dataset(a.name, "train")  # the name is a spec that reopens it
    assert a.name == b.name == again.name and a.name.startswith("typo:seed=3,")
    clone = pickle.loads(pickle.dumps(a))
    different = 0
    for i in range(len(a)):
        pa = np.asarray(a[i].image)
        assert np.array_equal(pa, np.asarray(b[i].image)) and np.array_equal(pa, np.asarray(again[i].image))
        assert np.array_equal(pa, np.asarray(clone[i].image))
        different += not np.array_equal(pa, np.asarray(c[i].image))
    assert different >= len(a) - 1
    assert not np.array_equal(a.attribute_array("typo_class"), c.attribute_array("typo_class"))
    d = a.describe()
    assert d["name"] == a.name and d["typo"]["seed"] == 3 and d["base"]["name"] == f"folder:{folder.resolve()}"
    assert d["classes_sha256"] == d["base"]["classes_sha256"] and len(d["typo"]["font_sha256"]) == 64
    # a --limit subset keeps the pairing: its j-th example is the full set's example indices[j]
    sub = limit_dataset(a, 4, seed=0)
    for j in range(len(sub)):
        k = sub.base_index(j)
        assert np.array_equal(np.asarray(sub[j].image), np.asarray(a[k].image))
        assert sub[j].attrs["typo_class"] == a[k].attrs["typo_class"]


def test_words_are_uniform_over_the_other_classes():
    labels = np.repeat(np.arange(5), 400)
    words = word_classes(labels, 5, seed=11)
    assert not np.any(words == labels)
    for c in range(5):
        counts = np.bincount(words[labels == c], minlength=5)
        others = np.delete(counts, c)
        assert counts[c] == 0 and others.min() > 60 and others.max() < 140  # each other class: 100 expected
    unlabeled = word_classes(np.full(300, -1), 5, seed=11)
    assert set(unlabeled) == set(range(5))
    assert np.array_equal(word_classes(labels[:7], 5, 11), words[:7])  # word of image i: independent of the length


def test_spec_parsing_and_splits(folder):
    assert parse_spec("typo:cifar10").kind == "typo"
    assert available_splits(f"typo:box=1:folder:{folder}") == ["test", "train"]
    ds = open_dataset(f"typo:size=0.2,box=1:folder:{folder}", "test")
    assert ds.options.size == (0.2, 0.2) and ds.split == "test"
    with pytest.raises(SparsesteerError, match=r"unknown typo option 'sed' \(did you mean 'seed'\?\)"):
        open_dataset(f"typo:sed=1:folder:{folder}", "train")
    with pytest.raises(SparsesteerError, match="options must be followed by ':' and the dataset"):
        parse_spec("typo:seed=1")
    with pytest.raises(SparsesteerError, match="cannot be attacked again"):
        parse_spec("typo:typo:cifar10")
    with pytest.raises(SparsesteerError, match="unknown dataset 'cifar1000'"):
        parse_spec("typo:seed=2:cifar1000")
    with pytest.raises(SparsesteerError, match="size must satisfy"):
        open_dataset(f"typo:size=0.5-0.1:folder:{folder}", "train")
    with pytest.raises(SparsesteerError, match="option seed is 1 in the spec but 2 as a keyword"):
        open_dataset(f"typo:seed=1:folder:{folder}", "train", seed=2)


def test_bad_class_lists_and_fonts(tmp_path, folder):
    make_folder_dataset(tmp_path / "one", (2,))
    with pytest.raises(SparsesteerError, match=r"1 class name\(s\) \('class 0'\).*at least two classes"):
        open_dataset(f"typo:folder:{tmp_path / 'one'}", "train")
    missing = tmp_path / "nope.ttf"
    with pytest.raises(SparsesteerError, match=f"cannot load the font {missing}"):
        open_dataset(f"typo:folder:{folder}", "train", font=str(missing))
    not_a_font = tmp_path / "fake.ttf"
    not_a_font.write_text("not a font")
    with pytest.raises(SparsesteerError, match=f"cannot load the font {not_a_font}"):
        open_dataset(f"typo:font={not_a_font}:folder:{folder}", "train")
    # another TrueType file works and is named in the spec
    mono = default_font().with_name("DejaVuSansMono.ttf")
    ds = open_dataset(f"typo:font={mono}:folder:{folder}", "train")
    assert f"font={mono}" in ds.name and ds[0].image.mode == "RGB"
    assert default_font().is_file()
