"""RTA-100, PAINT's typographic set and the Disentangling set, read from miniature copies of their
published layouts (archives installed through `download` from file:// URLs; nothing leaves the machine)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
from PIL import Image

from sparsesteer.data import available_splits, open_dataset
from sparsesteer.data import download as dl
from sparsesteer.data.download import REGISTRY, Resource, download, git_blob_sha1
from sparsesteer.utils.errors import SparsesteerError


def _png(color=(200, 10, 10), size=(12, 10)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _install(monkeypatch, tmp_path, name: str, archive) -> None:
    """Point the registry entry at a local archive; its git blob id is computed by git itself when available."""
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", str(archive)], capture_output=True, text=True, check=True)
        blob = out.stdout.strip()
        assert git_blob_sha1(archive) == blob  # our git-sha1 checksum is git's own blob id
    else:
        blob = git_blob_sha1(archive)
    old = REGISTRY[name]
    res = dataclasses.replace(old.resources[0], url=archive.as_uri(), checksum=f"git-sha1:{blob}")
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(old, resources=(res,)))


RTA = {
    "ours/data/label=dog_text=cat.png": (10, 10, 200),
    "ours/data/label=cat_text=dog.png": (10, 200, 10),
    "ours/data/label=cup_text=iPod.jpg": (200, 200, 10),
    "ours/data/label=dog_text=flower pot.png": (90, 90, 90),
}


def test_rta100_from_its_archive(tmp_path, monkeypatch):
    members = {name: _png(color) for name, color in RTA.items()}
    members["ours/data/.DS_Store"] = b"junk"
    members["__MACOSX/ours/data/._label=dog_text=cat.png"] = b"resource fork"
    archive = _zip(tmp_path / "rta100.zip", members)
    _install(monkeypatch, tmp_path, "rta100", archive)
    root = tmp_path / "data"
    download("rta100", root)
    ds = open_dataset("rta100", "test", data_root=root)
    assert available_splits("rta100") == ["test"] and len(ds) == 4
    assert ds.classes == sorted({"dog", "cat", "cup", "iPod", "flower pot"})
    for i in range(len(ds)):
        name = ds.source(i).rsplit("/", 1)[1]
        label, text = name[len("label=") : name.rindex(".")].split("_text=")
        assert ds.classes[ds[i].label] == label and ds.text(i) == text
        assert ds[i].attrs["typo_class"] == ds.classes.index(text)
        assert ds[i].image.getpixel((0, 0))[:3] == RTA[ds.source(i).split("rta100/", 1)[1]]
    assert np.array_equal(ds.attribute_array("typo_class"), [ds.classes.index(ds.text(i)) for i in range(4)])
    with pytest.raises(SparsesteerError, match="rta100: unknown split 'train'"):
        open_dataset("rta100", "train", data_root=root)
    # a second word on top of the written one would make typo_class ambiguous: refused
    with pytest.raises(SparsesteerError, match="already has an attribute 'typo_class'"):
        open_dataset("typo:rta100", "test", data_root=root)


def test_rta100_missing_or_malformed(tmp_path, monkeypatch):
    with pytest.raises(SparsesteerError, match=f"sparsesteer download rta100 --data-root {tmp_path}"):
        open_dataset("rta100", "test", data_root=tmp_path)
    archive = _zip(tmp_path / "rta100.zip", {"data/IMG_1.png": _png()})
    _install(monkeypatch, tmp_path, "rta100", archive)
    with pytest.raises(SparsesteerError, match="holds no images named label=<object>_text=<word>"):
        download("rta100", tmp_path / "data")
    assert not dl.is_installed("rta100", tmp_path / "data")
    # a file whose bytes differ from the pinned blob is refused
    monkeypatch.setitem(
        REGISTRY,
        "rta100",
        dataclasses.replace(
            REGISTRY["rta100"],
            resources=(Resource(archive.as_uri(), "rta100.zip", "git-sha1:" + "0" * 40, dest="rta100"),),
        ),
    )
    with pytest.raises(SparsesteerError, match="checksum mismatch"):
        download("rta100", tmp_path / "data2")


def test_paint_typographic_set(tmp_path, monkeypatch):
    members = {
        "typographic_attacks/label=apple_text=ipod.png": _png((1, 2, 3)),
        "typographic_attacks/label=ipod_text=apple.jpeg": _png((4, 5, 6)),
        "typographic_attacks/notes/IMG_0001.png": _png(),  # not in the naming scheme: skipped
    }
    archive = _zip(tmp_path / "typographic_attack_data.zip", members)
    _install(monkeypatch, tmp_path, "paint-typo", archive)
    root = tmp_path / "data"
    download("paint-typo", root)
    ds = open_dataset("paint-typo", "test", data_root=root)
    assert ds.classes == ["apple", "ipod"] and list(ds.labels()) == [0, 1]
    assert list(ds.attribute_array("typo_class")) == [1, 0] and [ds.text(i) for i in range(2)] == ["ipod", "apple"]
    assert ds.describe()["skipped_files"] == 1 and ds.describe()["name"] == "paint-typo"


def _disentangling(folder, *, annotations="annotations.json", images="images", classes=None):
    folder.mkdir(parents=True)
    entries = {
        "IMG_2934.JPG": {"true object": "cup", "typographic attack label": "good"},
        "IMG_2935.JPG": {"true object": "mug", "typographic attack label": "cup"},
        "IMG_2936.JPG": {"true object": "cup", "typographic attack label": "mug"},
    }
    (folder / annotations).write_text(json.dumps(entries))
    if classes is not None:
        (folder / "classes.json").write_text(json.dumps(classes))
    for k, name in enumerate(entries):
        path = folder / images / name if images else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 7), (k * 50, 0, 0)).save(path, format="JPEG")
    return entries


def test_disentangling_with_and_without_classes_json(tmp_path):
    root = tmp_path / "a"
    entries = _disentangling(root / "disentangling" / "typographic_attack_dataset", classes={"mug": 0, "cup": 1})
    ds = open_dataset("disentangling", "test", data_root=root)
    assert ds.classes == ["mug", "cup"]  # classes.json order
    for i, entry in enumerate(entries.values()):
        assert ds.classes[ds[i].label] == entry["true object"] and ds.text(i) == entry["typographic attack label"]
    assert list(ds.attribute_array("typo_class")) == [-1, 1, 0]  # "good" is not a class
    assert ds[2].image.size == (9, 7)

    root = tmp_path / "b"  # README's file name, images beside it, no classes.json: sorted union
    _disentangling(root / "disentangling", annotations="annotation.json", images=None)
    ds = open_dataset("disentangling", "test", data_root=root)
    assert ds.classes == ["cup", "good", "mug"] and list(ds.attribute_array("typo_class")) == [1, 0, 2]


def test_disentangling_errors(tmp_path):
    with pytest.raises(SparsesteerError, match="Google Drive folder.*drive.google.com/drive/folders/17v74pm"):
        open_dataset("disentangling", "test", data_root=tmp_path)
    with pytest.raises(SparsesteerError, match="published only as a Google Drive folder"):
        download("disentangling", tmp_path)
    _disentangling(tmp_path / "disentangling", classes=["cup"])
    with pytest.raises(SparsesteerError, match="classes.json does not list the object"):
        open_dataset("disentangling", "test", data_root=tmp_path)
    (tmp_path / "disentangling" / "classes.json").unlink()
    (tmp_path / "disentangling" / "images" / "IMG_2935.JPG").unlink()
    with pytest.raises(SparsesteerError, match="image 'IMG_2935.JPG' is neither in"):
        open_dataset("disentangling", "test", data_root=tmp_path)


def test_download_cli_accepts_the_manual_set(capsys):
    import argparse

    from sparsesteer.data.commands import register

    parser = argparse.ArgumentParser(prog="sparsesteer")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download", "disentangling"])
    with pytest.raises(SparsesteerError, match="cannot be fetched by script"):
        args.func(args)
