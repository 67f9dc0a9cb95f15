"""`cifar10-sample`: real CIFAR-10 images shipped with the package, so that the testbed CLIP
(`--model testbed`, trained on CIFAR-10) runs end to end with no download and no data root.

    cifar10_sample/{train,test}/<class>/NNNNN.jpg   100 per class and split, JPEG bytes as in CIFAR-10 JPEGs
    cifar10_sample/SHA256SUMS                       `sha256sum -c` manifest of every image
    cifar10_sample/card.json                        source, seed and rule of the choice, counts, manifest sha256

`scripts/make_cifar10_sample.py` writes the folder. A sample for offline use, not for reported results.
Integrity is checked where it costs nothing: on open, the manifest against the card's sha256 and the
split's file names against the manifest (one directory listing per class); on read, each image's
bytes against its sha256. A damaged installation is an error naming the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError
from ..utils.io import read_json
from .builtin import FileListDataset
from .datasets import UnreadableImage, decode_image
from .names import classnames

NAME = "cifar10-sample"
REINSTALL = "the shipped sample is damaged; reinstall sparsesteer"


def shipped_dir() -> Path:
    """Where the package keeps the sample (package data)."""
    return Path(__file__).resolve().parent / "cifar10_sample"


class Cifar10Sample(FileListDataset):
    """The shipped CIFAR-10 sample; `data_root` is ignored (nothing lives there). Labels: the class
    folders' positions in CIFAR-10's class list."""

    SPLITS = ("train", "test")
    FOLDER: Path | None = None
    """The sample's folder; None = `shipped_dir()` (a subclass may point at a copy, e.g. to check one)."""

    def __init__(self, data_root: Path | None, split: str) -> None:
        folder = self.FOLDER or shipped_dir()
        self._setup(NAME, split, folder, self.SPLITS)
        card, sums = folder / "card.json", folder / "SHA256SUMS"
        for path in (card, sums):
            if not path.is_file():
                raise SparsesteerError(f"{NAME}: {path} is missing: {REINSTALL}")
        self._card = read_json(card)
        if not isinstance(self._card, dict):
            raise SparsesteerError(f"{NAME}: {card} is not a JSON object: {REINSTALL}")
        got = hashlib.sha256(sums.read_bytes()).hexdigest()
        if got != self._card.get("manifest_sha256"):
            raise SparsesteerError(
                f"{NAME}: {sums} has sha256 {got}, but {card.name} records {self._card.get('manifest_sha256')}: "
                f"{REINSTALL}"
            )
        self.classes = classnames("cifar10")
        expected: dict[str, str] = {}
        for line in sums.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            if rel.startswith(f"{split}/"):
                expected[rel] = digest
        files, labels = [], []
        for label, cls in enumerate(self.classes):
            class_dir = folder / split / cls
            want = sorted(r.rsplit("/", 1)[1] for r in expected if r.startswith(f"{split}/{cls}/"))
            have = sorted(e.name for e in os.scandir(class_dir) if e.is_file()) if class_dir.is_dir() else []
            if have != want:
                lacking, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
                what = (
                    f"{class_dir / lacking[0]} is missing"
                    if lacking
                    else f"{class_dir / extra[0]} is not in {sums.name}"
                )
                raise SparsesteerError(
                    f"{NAME}: {what} ({len(have)} files in {class_dir}, {len(want)} listed): {REINSTALL}"
                )
            files += [f"{split}/{cls}/{n}" for n in want]
            labels += [label] * len(want)
        self._files = files
        self._sha256 = [expected[f] for f in files]
        self._labels = np.asarray(labels, dtype=np.int64)
        self.attributes, self._attrs = [], {}

    def _load_image(self, i: int) -> Image.Image:
        path = self._base / self._files[i]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UnreadableImage(f"cannot read image {path}: {e.strerror or e}", str(path)) from None
        got = hashlib.sha256(data).hexdigest()
        if got != self._sha256[i]:
            raise UnreadableImage(
                f"{NAME}: {path} has sha256 {got}, but SHA256SUMS records {self._sha256[i]}: {REINSTALL}", str(path)
            )
        return decode_image(data, str(path))

    def _describe_extra(self) -> dict[str, Any]:
        return {"manifest_sha256": self._card["manifest_sha256"], "selection": self._card.get("selection")}


def check_shipped() -> Path:
    """Open both splits (the integrity checks of a dataset open) and return the folder."""
    for split in Cifar10Sample.SPLITS:
        Cifar10Sample(None, split)
    return Cifar10Sample.FOLDER or shipped_dir()


SHIPPED_DATASETS: dict[str, type[FileListDataset]] = {NAME: Cifar10Sample}
"""The shipped built-ins (names also in `download.SHIPPED`, which `sparsesteer download` lists)."""
