"""`cifar10-sample`: the real CIFAR-10 images shipped as package data, opened with no data root and
no download; its card, its integrity checks, and the testbed CLIP run on it end to end."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import tomllib

import numpy as np
import pytest
from conftest import CIFAR10_JPEG, ROOT

from sparsesteer.data import classnames, open_dataset
from sparsesteer.data import sample as sample_mod
from sparsesteer.data.datasets import UnreadableImage
from sparsesteer.utils.errors import SparsesteerError

FOLDER = sample_mod.shipped_dir()


@pytest.mark.parametrize("split", ["train", "test"])
def test_opens_with_cifar10_classes_and_100_per_class_without_a_data_root(split, tmp_path):
    ds = open_dataset("cifar10-sample", split, data_root=tmp_path / "nothing-here")
    assert ds.classes == classnames("cifar10")
    assert len(ds) == 1000 and np.bincount(ds.labels(), minlength=10).tolist() == [100] * 10
    for i in range(0, 1000, 97):  # the label is the class folder the file lies in
        assert ds.source(i).split("/")[-2] == ds.classes[ds[i].label]
    ex = ds[0]
    assert ex.image.size == (32, 32) and ex.image.mode == "RGB"
    card = json.loads((FOLDER / "card.json").read_text())
    assert ds.describe()["manifest_sha256"] == card["manifest_sha256"]


def test_card_describes_source_choice_and_manifest():
    card = json.loads((FOLDER / "card.json").read_text())
    assert card["source"]["url"] == "https://www.cs.toronto.edu/~kriz/cifar.html"
    assert card["selection"]["seed"] == 0 and card["selection"]["per_class"] == 100
    assert card["counts"] == {s: dict.fromkeys(classnames("cifar10"), 100) for s in ("train", "test")}
    assert card["manifest_sha256"] == hashlib.sha256((FOLDER / "SHA256SUMS").read_bytes()).hexdigest()
    assert "/work/" not in (FOLDER / "card.json").read_text()
    lines = (FOLDER / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 2000
    for line in lines[::50]:
        digest, rel = line.split("  ")
        assert hashlib.sha256((FOLDER / rel).read_bytes()).hexdigest() == digest
    size = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert size < 3e6, size


def test_package_data_ships_every_file_of_the_sample():
    """A wheel holds what [tool.setuptools.package-data] matches: every file of the folder must match."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["sparsesteer.data"]
    package = ROOT / "sparsesteer" / "data"
    assert FOLDER == package / "cifar10_sample"
    files = [p.relative_to(package).as_posix() for p in FOLDER.rglob("*") if p.is_file()]
    assert len(files) == 2002
    unmatched = [
        f for f in files if not any(fnmatch.fnmatchcase(f, g) and f.count("/") == g.count("/") for g in patterns)
    ]
    assert unmatched == []


def test_the_choice_is_the_cards_seeded_rule():
    """Per split and class: the 100 of the source's 1,000 names with the smallest sha256 of
    'SEED/SPLIT/CLASS/FILE' (what scripts/make_cifar10_sample.py picks; needs no source images)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "scripts" / "make_cifar10_sample.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for split in ("train", "test"):
        for cls in ("airplane", "frog"):
            picked = make.choose([f"{n:04d}.jpg" for n in range(1000)], 0, split, cls, 100)
            shipped = sorted(p.name for p in (FOLDER / split / cls).iterdir())
            assert shipped == [f"{int(n[:4]):05d}.jpg" for n in picked]
    if (CIFAR10_JPEG / "train").is_dir():  # the bytes are the source's, unchanged
        assert (FOLDER / "test/frog/" / shipped[0]).read_bytes() == (
            CIFAR10_JPEG / "test" / "frog" / f"{int(shipped[0][:5]):04d}.jpg"
        ).read_bytes()


def test_planted_wraps_it():
    ds = open_dataset("planted:word=1,words=misleading:cifar10-sample", "test")
    assert len(ds) == 1000 and ds.classes == classnames("cifar10")
    assert ds.attribute_array("word").tolist() == [1] * 1000
    assert ds[3].image.size == (32, 32)


def test_download_has_nothing_to_do(tmp_path, capsys):
    from sparsesteer.cli import main
    from sparsesteer.data import download as dl
    from sparsesteer.data.registry import ensure_dataset

    assert dl.is_installed("cifar10-sample", tmp_path)
    assert dl.download("cifar10-sample", tmp_path) == FOLDER
    assert len(ensure_dataset("cifar10-sample", "test", data_root=tmp_path)) == 1000
    assert main(["download", "cifar10-sample", "--data-root", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shipped"] is True and out["path"] == str(FOLDER)
    assert list(tmp_path.iterdir()) == []  # nothing written under the data root
    assert set(dl.SHIPPED) == set(sample_mod.SHIPPED_DATASETS)


@pytest.fixture
def copy(tmp_path):
    """A copy of the shipped sample and a dataset class that reads it."""
    folder = tmp_path / "sample"
    shutil.copytree(FOLDER, folder)
    return folder, type("Copy", (sample_mod.Cifar10Sample,), {"FOLDER": folder})


def test_a_missing_or_extra_file_names_the_file(copy):
    folder, cls = copy
    assert len(cls(None, "test")) == 1000
    victim = sorted((folder / "test" / "cat").iterdir())[7]
    victim.unlink()
    with pytest.raises(SparsesteerError, match=rf"{victim} is missing \(99 files .* 100 listed\).*reinstall"):
        cls(None, "test")
    assert len(cls(None, "train")) == 1000  # the other split is whole
    (folder / "train" / "dog" / "extra.jpg").write_bytes(b"")
    with pytest.raises(SparsesteerError, match=r"train/dog/extra.jpg is not in SHA256SUMS"):
        cls(None, "train")


def test_altered_bytes_name_the_file_when_read(copy):
    folder, cls = copy
    ds = cls(None, "test")
    path = folder / ds._files[5]
    path.write_bytes(path.read_bytes()[:-3] + b"\0\0\0")
    ds[4]  # the others read fine
    with pytest.raises(UnreadableImage, match=rf"{path} has sha256 .* but SHA256SUMS records") as info:
        ds[5]
    assert info.value.source == str(path)


def test_an_edited_manifest_or_missing_card_is_refused(copy):
    folder, cls = copy
    sums = folder / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("test/cat/", "test/dog/", 1))
    with pytest.raises(SparsesteerError, match=r"SHA256SUMS has sha256 .* but card.json records"):
        cls(None, "test")
    (folder / "card.json").unlink()
    with pytest.raises(SparsesteerError, match=r"card.json is missing: the shipped sample is damaged"):
        cls(None, "test")


@pytest.mark.skipif(not (ROOT / "sparsesteer/models/testbed_model/card.json").is_file(), reason="no shipped testbed")
def test_zeroshot_of_the_testbed_on_the_sample_runs_offline_above_chance(tmp_path, capsys):
    from sparsesteer.cli import main

    out = tmp_path / "zs"
    argv = ["zeroshot", "--model", "testbed", "--dataset", "cifar10-sample", "--split", "test", "--limit", "200"]
    assert main([*argv, "--workers", "0", "--device", "cpu", "--text-cache", "none", "--out", str(out)]) == 0
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["n_images"] == 200
    assert result["topk"]["top1"] > 0.25  # chance is 0.10; the shipped testbed gets ~0.49 on the sample
