"""Image datasets behind one interface, opened by a spec string.

`registry.open_dataset(spec, split)` understands the built-in names (cifar10, cifar100,
tiny-imagenet, cub200, celeba, waterbirds: see `builtin.py`), `folder:PATH` (PATH/SPLIT/CLASS/*.jpg)
and `hf:REPO_ID` (Hugging Face `datasets`, see `hf.py`). Every dataset is map-style and picklable (it
is used inside DataLoader workers), decodes an image only in `__getitem__`, and answers `labels()`
and `attribute_array()` from its index files without decoding anything.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils.errors import SparsesteerError, did_you_mean, unknown


def default_data_root() -> Path:
    """`$SPARSESTEER_DATA`, else `~/.cache/sparsesteer/data` (read at call time)."""
    return Path(os.environ.get("SPARSESTEER_DATA") or "~/.cache/sparsesteer/data").expanduser()


DEFAULT_DATA_ROOT = default_data_root()
"""The data root at import time; functions call `default_data_root()` so the variable can change."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One decoded example."""

    image: Image.Image
    """Decoded image, mode as stored (not converted)."""
    label: int
    """Class index into `dataset.classes`; -1 when unlabeled."""
    index: int
    """Position in the dataset."""
    attrs: dict[str, int]
    """Per-example attributes (celeba's 40 as 0/1; waterbirds' place and group); {} otherwise."""


class UnreadableImage(SparsesteerError):
    """An image that cannot be read or decoded; `.source` names the file or archive member."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source if source is not None else message

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling out of DataLoader workers
        return (type(self), (str(self), self.source))


def decode_image(data: str | os.PathLike | bytes, source: str) -> Image.Image:
    """Open and fully decode an image file (or its bytes); failures become `UnreadableImage`."""
    try:
        stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        with Image.open(stream) as im:
            im.load()
            return im
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot read image {source}: {e}", source) from None


class ImageDataset(abc.ABC):
    """Map-style image dataset. Subclasses fill `_labels` (int64) and `_attrs` in `__init__`."""

    name: str
    """Spec that reopens it: 'cifar100', 'folder:/abs/path', 'hf:owner/repo', ..."""
    split: str
    """Split as requested."""
    classes: list[str]
    """Readable class names; `classes[label]`."""
    attributes: list[str]
    """Names of the attributes each example carries."""
    root: str
    """Where the files are (directory, or the hub id for hf:)."""

    _labels: np.ndarray
    _attrs: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> Example:
        i = self._index(i)
        return Example(
            image=self._load_image(i),
            label=int(self._labels[i]),
            index=i,
            attrs={name: int(self._attrs[name][i]) for name in self.attributes},
        )

    @abc.abstractmethod
    def _load_image(self, i: int) -> Image.Image:
        """Decode example i (raise `UnreadableImage` naming `self.source(i)` on failure)."""

    @abc.abstractmethod
    def source(self, i: int) -> str:
        """File path or archive member of example i, for error messages and skip lists."""

    def base_index(self, i: int) -> int:
        """Index of example i in the full split (differs only for a `--limit` subset)."""
        return int(i)

    def labels(self) -> np.ndarray:
        """int64 [len] labels (-1 = unlabeled), read from index files: decodes nothing."""
        return self._labels.copy()

    def attribute_array(self, name: str) -> np.ndarray:
        """int64 [len] values of attribute `name`, without decoding images."""
        if name not in self._attrs:
            valid = ", ".join(self.attributes) or "none"
            raise SparsesteerError(
                f"{self.name} has no attribute {name!r}{did_you_mean(name, self.attributes)}; valid: {valid}"
            )
        return self._attrs[name].astype(np.int64)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of this dataset for manifests."""
        return {
            "name": self.name,
            "split": self.split,
            "root": str(self.root),
            "len": len(self),
            "n_classes": len(self.classes),
            "classes_sha256": classes_sha256(self.classes),
            **self._describe_extra(),
        }

    def _describe_extra(self) -> dict[str, Any]:
        return {}

    def _index(self, i: int) -> int:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset index must be an int, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} [{self.split}] with {n} examples")
        return int(i) % n if n else int(i)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} [{self.split}] {len(self)} examples, {len(self.classes)} classes>"


def classes_sha256(classes: Sequence[str]) -> str:
    """sha256 of the class names joined by newlines (each followed by one)."""
    return hashlib.sha256("".join(f"{c}\n" for c in classes).encode("utf-8")).hexdigest()


def check_labels(labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    """Every label must index a class name (or be -1)."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < -1 or high >= len(classes):
        raise SparsesteerError(
            f"{where}: labels run from {low} to {high} but there are {len(classes)} class names; "
            "the class-name list does not match the labels"
        )


def check_split(dataset: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise SparsesteerError(f"{dataset}: {unknown('split', split, valid)}")


def missing_file(path: Path, dataset: str, data_root: Path) -> SparsesteerError:
    """Error for a built-in dataset file that is not there, naming the command that fetches it."""
    return SparsesteerError(
        f"{dataset}: missing {path}; fetch the dataset with "
        f"`sparsesteer download {dataset} --data-root {data_root}` "
        "(or pass --data-root / set SPARSESTEER_DATA to the directory that holds it)"
    )


def split_wrapper_spec(
    prefix: str, arg: str, parse: Callable[[str, str], dict[str, Any]], *, verb: str, example: str
) -> tuple[dict[str, Any], str]:
    """The part after a wrapper's `prefix` ('typo:', 'planted:') -> (options, inner spec). The first
    ':'-segment holds options exactly when it contains '=' (no built-in name or prefix does);
    `parse(text, where)` reads them. `verb` says what the wrapper does ('attack'), `example` an option."""
    head, colon, rest = arg.partition(":")
    if "=" in head:
        if not colon or not rest.strip():
            raise SparsesteerError(
                f"{prefix}{arg}: options must be followed by ':' and the dataset, e.g. {prefix}{example}:cifar10"
            )
        options, inner = parse(head, f"{prefix}{arg}"), rest.strip()
    else:
        options, inner = {}, arg.strip()
    if not inner:
        raise SparsesteerError(
            f"{prefix}{arg}: name the dataset to {verb}, e.g. {prefix}cifar10 or {prefix}folder:/path"
        )
    if inner.startswith(prefix):
        raise SparsesteerError(f"{prefix}{arg}: a {prefix} dataset cannot be {verb}ed again")
    return options, inner
