"""CIFAR-10 / CIFAR-100 from the canonical "python version" tarball layout.

    DATA_ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   labels: 'labels'
    DATA_ROOT/cifar-100-python/{train, test, meta}                               labels: 'fine_labels'

Those files are Python pickles. Unpickling can run arbitrary code, so they are never passed to
plain `pickle.load`: `restricted_load` uses a `pickle.Unpickler` whose `find_class` resolves only
the three globals a pickled numpy array needs (`numpy.core.multiarray._reconstruct`,
`numpy.ndarray`, `numpy.dtype`) and refuses every other one, following "Restricting Globals" in
the Python `pickle` documentation. The loaded content is then checked (uint8 rows of 3072 values,
one integer label per row). `sparsesteer download` additionally verifies the tarball's published
md5 and the md5 of every batch file (see `download.py`).

Images are the 32 x 32 RGB rows (channel-planar in the file) as PIL images.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError
from .datasets import ImageDataset, check_labels, check_split, missing_file
from .names import classnames

_multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def restricted_load(file: BinaryIO) -> Any:
    """`pickle.load` restricted to numpy-array reconstruction (Python 2 strings read as latin-1)."""
    return _NumpyOnlyUnpickler(file, encoding="latin1").load()


def _load_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise SparsesteerError(f"{path} is not a CIFAR python batch file: {e}") from None
    if not isinstance(obj, dict):
        raise SparsesteerError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


class _Cifar(ImageDataset):
    FOLDER: str
    META: str
    META_KEY: str
    LABEL_KEY: str
    FILES: dict[str, tuple[str, ...]]
    SPLITS = ("train", "test")

    def __init__(self, data_root: Path, split: str) -> None:
        self.name = self.NAME  # type: ignore[attr-defined]
        check_split(self.name, split, self.SPLITS)
        self.split = split
        self._base = Path(data_root) / self.FOLDER
        self.root = str(self._base)
        for file in (self.META, *self.FILES[split]):
            if not (self._base / file).is_file():
                raise missing_file(self._base / file, self.name, Path(data_root))
        self.classes = classnames(self.name)
        meta = _load_batch(self._base / self.META)
        stored = meta.get(self.META_KEY)
        if not isinstance(stored, list):
            raise SparsesteerError(f"{self._base / self.META}: no {self.META_KEY!r} list")
        readable = [str(n).replace("_", " ") for n in stored]
        if readable != self.classes:
            raise SparsesteerError(
                f"{self._base / self.META}: class names {readable[:5]}... ({len(readable)}) do not match "
                f"the shipped {self.name} list {self.classes[:5]}... ({len(self.classes)})"
            )
        self.attributes = []
        self._attrs = {}
        images, labels, counts = self._read_rows()
        self._images: np.ndarray | None = images
        self._labels = labels
        self._file_offsets = np.cumsum([0, *counts])
        check_labels(self._labels, self.classes, str(self._base))

    def _read_rows(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        images, labels, counts = [], [], []
        for file in self.FILES[self.split]:
            path = self._base / file
            batch = _load_batch(path)
            data, rows_labels = batch.get("data"), batch.get(self.LABEL_KEY)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
                raise SparsesteerError(f"{path}: 'data' must be uint8 [N, 3072], got {what}")
            if not isinstance(rows_labels, list) or len(rows_labels) != len(data):
                raise SparsesteerError(f"{path}: {self.LABEL_KEY!r} must list one label per row ({len(data)})")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(rows_labels, dtype=np.int64))
            counts.append(len(data))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), counts

    def _load_image(self, i: int) -> Image.Image:
        if self._images is None:  # dropped when pickled into a worker; reload once there
            self._images = self._read_rows()[0]
        return Image.fromarray(self._images[i], mode="RGB")

    def source(self, i: int) -> str:
        i = self._index(i)
        k = int(np.searchsorted(self._file_offsets, i, side="right")) - 1
        return f"{self._base / self.FILES[self.split][k]}[{i - int(self._file_offsets[k])}]"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # 150 MB for train: workers re-read the batches instead
        return state


class Cifar10(_Cifar):
    NAME = "cifar10"
    FOLDER = "cifar-10-batches-py"
    META = "batches.meta"
    META_KEY = "label_names"
    LABEL_KEY = "labels"
    FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


class Cifar100(_Cifar):
    NAME = "cifar100"
    FOLDER = "cifar-100-python"
    META = "meta"
    META_KEY = "fine_label_names"
    LABEL_KEY = "fine_labels"
    FILES = {"train": ("train",), "test": ("test",)}
