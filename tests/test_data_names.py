"""Shipped class-name lists: counts, order, sources cited, spot checks."""

from __future__ import annotations

from importlib import resources

import pytest

from sparsesteer.data import classnames
from sparsesteer.data.names import SHIPPED, tiny_imagenet_wnids
from sparsesteer.utils.errors import SparsesteerError


@pytest.mark.parametrize("name,count", [("cifar10", 10), ("cifar100", 100), ("tiny-imagenet", 200),
                                        ("cub200", 200), ("waterbirds", 2)])  # fmt: skip
def test_counts_unique_and_cited(name, count):
    names = classnames(name)
    assert len(names) == count and len(set(names)) == count
    assert all(n == n.strip() and n and "_" not in n for n in names)
    text = (resources.files("sparsesteer.data") / "classnames" / f"{name}.txt").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("#") and any("github.com" in c or "data.caltech.edu" in c for c in comments)


def test_spot_checks():
    assert classnames("cifar10")[0] == "airplane" and classnames("cifar10")[9] == "truck"
    c100 = classnames("cifar100")
    assert (c100[1], c100[47], c100[83], c100[99]) == ("aquarium fish", "maple tree", "sweet pepper", "worm")
    assert c100 == sorted(c100, key=lambda n: n.replace(" ", "_"))  # the meta order is alphabetical
    cub = classnames("cub200")
    assert (cub[0], cub[16], cub[199]) == ("Black footed Albatross", "Cardinal", "Common Yellowthroat")
    assert classnames("waterbirds") == ["landbird", "waterbird"]


def test_tiny_imagenet_wnids_sorted_with_readable_names():
    wnids = tiny_imagenet_wnids()
    assert wnids == sorted(wnids) and len(set(wnids)) == 200
    table = dict(zip(wnids, classnames("tiny-imagenet")))
    assert table["n01443537"] == "goldfish"
    assert table["n02124075"] == "Egyptian Mau"
    assert table["n04067472"] == "fishing casting reel"
    assert table["n12267677"] == "acorn"
    assert "n02480855" not in table  # gorilla is an ImageNet-1k class but not a Tiny-ImageNet one


def test_unknown_list():
    assert "celeba" not in SHIPPED
    with pytest.raises(SparsesteerError, match=r"unknown class-name list 'cifar-100' \(did you mean 'cifar100'\?\)"):
        classnames("cifar-100")
