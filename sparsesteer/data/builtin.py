"""File-based datasets: `folder:PATH` and the built-ins stored as image files plus index files.

Canonical layouts under the data root (what `sparsesteer download NAME` produces):

    tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}
    CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}
    celeba/{img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt}
    waterbird_complete95_forest2water2/{metadata.csv, <class folders>/*.jpg}

CIFAR lives in `cifar.py` (its files are pickles and need the restricted unpickler).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError, unknown
from .cifar import Cifar10, Cifar100
from .datasets import ImageDataset, check_labels, check_split, decode_image, missing_file
from .names import classnames, tiny_imagenet_wnids

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)


class FileListDataset(ImageDataset):
    """A dataset whose examples are image files `self._base / self._files[i]`."""

    _base: Path
    _files: list[str]

    def _setup(self, name: str, split: str, base: Path, splits: tuple[str, ...] | None) -> Path:
        """Identity of a built-in layout: its name, the split (checked against `splits` unless
        None) and the folder the files live in."""
        self.name = name
        if splits is not None:
            check_split(name, split, splits)
        self.split = split
        self._base = base
        self.root = str(base)
        return base

    def _load_image(self, i: int) -> Image.Image:
        return decode_image(self._base / self._files[i], self.source(i))

    def source(self, i: int) -> str:
        return str(self._base / self._files[self._index(i)])


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _read_rows(path: Path, dataset: str, data_root: Path, ncols: int) -> list[list[str]]:
    """Whitespace-separated index file -> rows of exactly `ncols` fields (error names file:line)."""
    if not path.is_file():
        raise missing_file(path, dataset, data_root)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != ncols:
                raise SparsesteerError(f"{path}:{n}: expected {ncols} fields, got {len(fields)}: {line.strip()!r}")
            rows.append(fields)
    return rows


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SparsesteerError(f"{where}: expected an integer, got {value!r}") from None


# ------------------------------------------------------------------------------------ folder:
class FolderDataset(FileListDataset):
    """`PATH/SPLIT/CLASS/*.{jpg,png,...}`: labels are the class folders sorted by name.

    The class list is the union of class folders over all splits, so a label means the same class
    in every split even when a split lacks some class. Readable names: folder name, '_' -> ' '.
    """

    def __init__(self, path: str | Path, split: str) -> None:
        root = Path(path).expanduser().resolve()
        self.name = f"folder:{root}"
        if not root.is_dir():
            raise SparsesteerError(f"{self.name}: no such directory")
        splits = self.available_splits(root)
        if not splits:
            raise SparsesteerError(
                f"{self.name}: expected the layout PATH/SPLIT/CLASS/image files, but found no SPLIT/CLASS folders"
            )
        check_split(self.name, split, splits)
        self.split = split
        self.root = str(root)
        self._base = root
        folders = sorted({c for s in splits for c in _subdirs(root / s)})
        self.classes = [f.replace("_", " ") for f in folders]
        self.attributes, self._attrs = [], {}
        files, labels = [], []
        for label, folder in enumerate(folders):
            class_dir = root / split / folder
            if not class_dir.is_dir():
                continue
            names = sorted(e.name for e in os.scandir(class_dir) if e.is_file() and _is_image(e.name))
            files += [f"{split}/{folder}/{n}" for n in names]
            labels += [label] * len(names)
        if not files:
            raise SparsesteerError(
                f"{self.name}: no images under {root / split}/CLASS/ "
                f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def available_splits(path: str | Path) -> list[str]:
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise SparsesteerError(f"folder:{root}: no such directory")
        return [s for s in _subdirs(root) if _subdirs(root / s)]


# ------------------------------------------------------------------------------ tiny-imagenet
class TinyImageNet(FileListDataset):
    """Tiny-ImageNet-200. Labels: wnids sorted (torchvision ImageFolder order). `test` is an alias
    for `val`: the official test split has no labels, and papers (e.g. VS2) report val as test."""

    SPLITS = ("train", "val", "test")

    def __init__(self, data_root: Path, split: str) -> None:
        base = self._setup("tiny-imagenet", split, Path(data_root) / "tiny-imagenet-200", self.SPLITS)
        wnids_path = base / "wnids.txt"
        if not wnids_path.is_file():
            raise missing_file(wnids_path, self.name, Path(data_root))
        listed = wnids_path.read_text().split()
        wnids = tiny_imagenet_wnids()
        if sorted(listed) != wnids:
            extra = sorted(set(listed) - set(wnids))[:3]
            lacking = sorted(set(wnids) - set(listed))[:3]
            raise SparsesteerError(
                f"{wnids_path}: lists {len(listed)} wnids, not the 200 of Tiny-ImageNet-200 "
                f"(unexpected: {extra or 'none'}; missing: {lacking or 'none'})"
            )
        label_of = {w: i for i, w in enumerate(wnids)}
        files, labels = [], []
        if split == "train":
            for wnid in wnids:
                image_dir = base / "train" / wnid / "images"
                if not image_dir.is_dir():
                    raise missing_file(image_dir, self.name, Path(data_root))
                names = sorted(e.name for e in os.scandir(image_dir) if _is_image(e.name))
                files += [f"train/{wnid}/images/{n}" for n in names]
                labels += [label_of[wnid]] * len(names)
        else:
            annotations = base / "val" / "val_annotations.txt"
            if not annotations.is_file():
                raise missing_file(annotations, self.name, Path(data_root))
            with open(annotations, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    fields = line.rstrip("\n").split("\t")
                    if fields == [""]:
                        continue
                    if len(fields) < 2 or fields[1] not in label_of:
                        raise SparsesteerError(f"{annotations}:{n}: expected 'FILE<TAB>WNID ...', got {line.strip()!r}")
                    files.append(f"val/images/{fields[0]}")
                    labels.append(label_of[fields[1]])
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        self.classes = classnames("tiny-imagenet")
        self.attributes, self._attrs = [], {}

    def _describe_extra(self) -> dict[str, Any]:
        if self.split == "test":
            return {"split_read": "val", "note": "tiny-imagenet 'test' is an alias for the labelled val split"}
        return {}


# ------------------------------------------------------------------------------------- cub200
class CUB200(FileListDataset):
    """CUB-200-2011 with its official train/test split (5,994 / 5,794). Label = class_id - 1."""

    SPLITS = ("train", "test")

    def __init__(self, data_root: Path, split: str) -> None:
        data_root = Path(data_root)
        base = self._setup("cub200", split, data_root / "CUB_200_2011", self.SPLITS)

        def read(file: str) -> list[list[str]]:
            return _read_rows(base / file, self.name, data_root, 2)

        class_rows = read("classes.txt")
        stored = [row[1].split(".", 1)[-1].replace("_", " ") for row in class_rows]
        self.classes = classnames("cub200")
        if stored != self.classes:
            raise SparsesteerError(
                f"{base / 'classes.txt'}: {len(stored)} classes that do not match the shipped CUB-200-2011 list "
                f"({len(self.classes)} classes, e.g. {self.classes[0]!r})"
            )
        paths = {row[0]: row[1] for row in read("images.txt")}
        class_of = {row[0]: row[1] for row in read("image_class_labels.txt")}
        is_train = {row[0]: row[1] for row in read("train_test_split.txt")}
        want = "1" if split == "train" else "0"
        files, labels = [], []
        for image_id in sorted(paths, key=lambda k: _int(k, str(base / "images.txt"))):
            if image_id not in class_of or image_id not in is_train:
                raise SparsesteerError(
                    f"{base}: image id {image_id} is in images.txt but not in "
                    f"{'image_class_labels.txt' if image_id not in class_of else 'train_test_split.txt'}"
                )
            if is_train[image_id] == want:
                files.append(f"images/{paths[image_id]}")
                labels.append(_int(class_of[image_id], str(base / "image_class_labels.txt")) - 1)
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        check_labels(self._labels, self.classes, str(base / "image_class_labels.txt"))
        self.attributes, self._attrs = [], {}


# ------------------------------------------------------------------------------------- celeba
class CelebA(FileListDataset):
    """Aligned CelebA with all 40 attributes (0/1). `target` picks the attribute used as label."""

    SPLITS = ("train", "valid", "test", "all")
    _PARTITION = {"train": "0", "valid": "1", "val": "1", "test": "2"}

    def __init__(self, data_root: Path, split: str, *, target: str = "Male") -> None:
        data_root = Path(data_root)
        # "val" is an accepted alias of "valid"
        base = self._setup("celeba", split, data_root / "celeba", None if split == "val" else self.SPLITS)
        attr_path, part_path = base / "list_attr_celeba.txt", base / "list_eval_partition.txt"
        for path in (attr_path, part_path):
            if not path.is_file():
                raise missing_file(path, self.name, data_root)
        names, values = self._read_attributes(attr_path)
        partition = {row[0]: row[1] for row in _read_rows(part_path, self.name, data_root, 2)}
        absent = [n for n in names if n not in partition]
        if absent:
            raise SparsesteerError(f"{part_path}: no partition for {len(absent)} image(s), e.g. {absent[0]}")
        keep = np.ones(len(names), dtype=bool)
        if split != "all":
            want = self._PARTITION[split]
            keep = np.asarray([partition[n] == want for n in names], dtype=bool)
        header = self._header
        if target not in header:
            raise SparsesteerError(f"celeba: {unknown('target attribute', target, header)}")
        self.target = target
        self._files = [f"img_align_celeba/{n}" for n, k in zip(names, keep) if k]
        values = values[keep]
        self.attributes = list(header)
        self._attrs = {a: values[:, j] for j, a in enumerate(header)}
        self._labels = values[:, header.index(target)].astype(np.int64)
        readable = target.replace("_", " ").lower()
        self.classes = ["female", "male"] if target == "Male" else [f"not {readable}", readable]

    def _read_attributes(self, path: Path) -> tuple[list[str], np.ndarray]:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) < 2:
            raise SparsesteerError(f"{path}: expected a count line and a header line of attribute names")
        header = lines[1].split()
        names, rests, numbers = [], [], []
        for n, line in enumerate(lines[2:], 3):
            fields = line.split(None, 1)
            if fields:
                names.append(fields[0])
                rests.append(fields[1] if len(fields) > 1 else "")
                numbers.append(n)
        with warnings.catch_warnings():  # numpy warns, then stops, at a non-number: handled below
            warnings.simplefilter("ignore", DeprecationWarning)
            raw = np.fromstring(" ".join(rests), dtype=np.int64, sep=" ") if rests else np.zeros(0, np.int64)
        if raw.size != len(names) * len(header):  # find the first bad row for the message
            for n, rest in zip(numbers, rests):
                if len(rest.split()) != len(header):
                    raise SparsesteerError(f"{path}:{n}: expected a file name and {len(header)} values")
            raise SparsesteerError(f"{path}: attribute values must be integers (-1 or 1)")
        raw = raw.reshape(len(names), len(header))
        if not ((raw == 1) | (raw == -1)).all():
            raise SparsesteerError(f"{path}: attribute values must be -1 or 1")
        declared = lines[0].strip()
        if declared.isdigit() and int(declared) != len(names):
            raise SparsesteerError(f"{path}: first line says {declared} images but {len(names)} rows follow")
        self._header = header
        return names, ((raw + 1) // 2).astype(np.int8)

    def _describe_extra(self) -> dict[str, Any]:
        return {"target": self.target}


# --------------------------------------------------------------------------------- waterbirds
class Waterbirds(FileListDataset):
    """Waterbirds (group DRO release). Attributes: place (0 land, 1 water), group = 2 * y + place."""

    SPLITS = ("train", "val", "test")
    _SPLIT_CODE = {"train": "0", "val": "1", "test": "2"}
    _COLUMNS = ("img_filename", "y", "split", "place")

    def __init__(self, data_root: Path, split: str) -> None:
        data_root = Path(data_root)
        base = self._setup("waterbirds", split, data_root / "waterbird_complete95_forest2water2", self.SPLITS)
        metadata = base / "metadata.csv"
        if not metadata.is_file():
            raise missing_file(metadata, self.name, data_root)
        files, ys, places = [], [], []
        with open(metadata, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            lacking = [c for c in self._COLUMNS if c not in (reader.fieldnames or [])]
            if lacking:
                raise SparsesteerError(f"{metadata}: missing column(s) {', '.join(lacking)}")
            for n, row in enumerate(reader, 2):
                if row["split"] != self._SPLIT_CODE[split]:
                    continue
                y, place = _int(row["y"], f"{metadata}:{n}"), _int(row["place"], f"{metadata}:{n}")
                if y not in (0, 1) or place not in (0, 1):
                    raise SparsesteerError(f"{metadata}:{n}: y and place must be 0 or 1, got {y}, {place}")
                files.append(row["img_filename"])
                ys.append(y)
                places.append(place)
        self._files = files
        self._labels = np.asarray(ys, dtype=np.int64)
        place_arr = np.asarray(places, dtype=np.int64)
        self._attrs = {"place": place_arr, "group": 2 * self._labels + place_arr}
        self.attributes = ["place", "group"]
        self.classes = classnames("waterbirds")


BUILTINS: dict[str, type[ImageDataset]] = {
    "cifar10": Cifar10,
    "cifar100": Cifar100,
    "tiny-imagenet": TinyImageNet,
    "cub200": CUB200,
    "celeba": CelebA,
    "waterbirds": Waterbirds,
}
